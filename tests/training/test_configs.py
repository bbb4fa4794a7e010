"""Every shipped recipe in configs/ parses against the LightningCLI schema (`--print_config`) of its
command: `convirt pretrain-text` for the recipes whose header says so, `convirt fit` for the rest."""

import json
import os
import subprocess
import sys
from pathlib import Path

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").rglob("*.yaml"))
# One interpreter for all recipes (imports dominate the time); --print_config exits after parsing.
_LOOP = """
import contextlib, io, json, sys
from convirt.cli.main import main
results = {}
for item in sys.argv[1:]:
    command, path = item.split("=", 1)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([command, "--config", path, "--print_config"])
        except SystemExit as stop:
            code = stop.code or 0
    results[path] = [code, out.getvalue(), err.getvalue()[-1500:]]
print(json.dumps(results))
"""


def _command(path: Path) -> str:
    return "pretrain-text" if f"convirt pretrain-text --config configs/{path.name}" in path.read_text() else "fit"


def test_every_recipe_parses():
    import yaml

    assert len(CONFIGS) >= 4
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    items = [f"{_command(path)}={path}" for path in CONFIGS]
    assert "pretrain-text" in {item.split("=")[0] for item in items}
    result = subprocess.run([sys.executable, "-c", _LOOP, *items], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for path, (code, out, err) in json.loads(result.stdout.splitlines()[-1]).items():
        assert code == 0, (path, err)
        resolved = yaml.safe_load(out)
        assert resolved["model"]["model_name"] and resolved["data"]["batch_size"] > 0, path
        # No recipe fixes the precision: it is chosen for the hardware at start (bf16 on a CPU without
        # native bf16 would run several times slower than fp32).
        assert resolved["trainer"]["precision"] is None, path
