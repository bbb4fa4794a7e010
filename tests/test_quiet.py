"""Lightning's adverts and warnings about what convirt does on purpose are filtered, nothing else."""

import logging
import os
import subprocess
import sys
import warnings

import yaml

from convirt._quiet import LIGHTNING_LOGGERS, quiet_dependencies
from tests.conftest import TINY_MODEL


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_only_the_named_lines_and_warnings_are_dropped(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    handler = _Lines()
    logger = logging.getLogger(LIGHTNING_LOGGERS[0])
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # as Lightning sets it when imported
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_dependencies()
            quiet_dependencies()  # a second call adds nothing
            for line in (
                "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](https://x) to enable",
                "GPU available: False, used: False",
                "TPU available: False, using: 0 TPU cores",
                "convirt: precision bf16-mixed (CPU has AMX; set --trainer.precision to choose another)",
                "GPU available: True (cuda), used: True",
                "Seed set to 0",
            ):
                logger.info(line)
            for message, category in (
                ("`isinstance(treespec, LeafSpec)` is deprecated, use `TreeSpec`", FutureWarning),
                ("Found 117 module(s) in eval mode at the start of training. This may", UserWarning),
                ("The number of training batches (3) is smaller than the logging interval", UserWarning),
                ("`LeafSpec` is deprecated", FutureWarning),  # another message: kept
            ):
                warnings.warn(message, category, stacklevel=1)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.lines == [
        "convirt: precision bf16-mixed (CPU has AMX; set --trainer.precision to choose another)",
        "GPU available: True (cuda), used: True",
        "Seed set to 0",
    ]
    assert [str(w.message)[:30] for w in caught] == ["The number of training batches", "`LeafSpec` is deprecated"]
    assert len(logging.getLogger(LIGHTNING_LOGGERS[0]).filters) == 1
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ  # online: download bars are kept


def test_a_fit_through_the_cli_prints_no_tip_and_no_deprecation(phantom_shards, tiny_text_model, tmp_path):
    # No checkpoint callback and no logger: Lightning's litmodels and litlogger tips both apply.
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 2,
            "limit_val_batches": 1,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path / "fit"),
        },
        "model": {"model_name": TINY_MODEL, "pretrained": False, "text_model_path": tiny_text_model},
        "data": {"shards": str(phantom_shards), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 16},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "convirt.cli.main", "fit", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-2000:]
    assert "convirt: precision" in output  # convirt's own lines are kept
    for noise in ("Tip:", "litmodels", "litlogger", "DeprecationWarning", "deprecated", "Loading weights"):
        assert noise not in output, f"{noise!r} printed:\n{output[-3000:]}"
