"""`convirt.data` names its public calls, each the function of its own module, loaded on first use."""

import importlib
import subprocess
import sys

import convirt.data


def test_every_export_is_the_modules_own_function():
    for name in convirt.data.__all__:
        module = importlib.import_module(f"convirt.data.{convirt.data._EXPORTS[name]}")
        assert getattr(convirt.data, name) is getattr(module, name), name


def test_a_light_module_does_not_import_the_streaming_stack():
    code = "import sys, convirt.data.schema; print('webdataset' in sys.modules, 'convirt.data.stream' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
