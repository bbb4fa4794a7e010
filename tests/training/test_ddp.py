"""Two-process DDP on CPU (gloo) through the `convirt fit` command."""

import os
import subprocess
import sys

import yaml

from tests.conftest import TINY_MODEL


def test_fit_with_two_gloo_processes(phantom_shards, tiny_text_model, tmp_path):
    config = {
        "trainer": {"accelerator": "cpu", "strategy": "ddp", "devices": 2, "max_steps": 3, "logger": False,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True,
                                                 "save_top_k": 0}}]},
        "model": {"model_name": TINY_MODEL, "pretrained": False, "text_model_path": tiny_text_model},
        "data": {"shards": str(phantom_shards), "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, "-m", "convirt.cli.main", "fit", "--config", str(path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
