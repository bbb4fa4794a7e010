"""Two-process DDP on CPU (gloo) through the `convirt fit` command."""

import os
import subprocess
import sys

import yaml

from tests.conftest import TINY_MODEL


def _fit(config: dict, tmp_path, command: str = "fit") -> None:
    """`convirt fit` (or ``command``) on ``config`` in a subprocess (DDP launches its second rank from it)."""
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run([sys.executable, "-m", "convirt.cli.main", command, "--config", str(path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


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
    _fit(config, tmp_path)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def test_resampled_ranks_get_equal_batches_with_fewer_shards_than_ranks_times_workers(phantom_csv, tiny_text_model,
                                                                                       tmp_path):
    import json

    from convirt.data.sources import read_rows
    from convirt.data.writer import write_shards

    shards = tmp_path / "shards"
    manifest = write_shards(read_rows("csv", str(phantom_csv)), shards, image_size=64, shard_size=1000,
                            val_fraction=0, test_fraction=0.2, progress=False)
    assert len(manifest["splits"]["train"]["shards"]) == 1  # one shard for 2 ranks x 2 workers
    counts = tmp_path / "counts.jsonl"
    config = {
        "trainer": {"accelerator": "cpu", "strategy": "ddp", "devices": 2, "max_epochs": 2, "logger": False,
                    "enable_progress_bar": False, "enable_checkpointing": False, "default_root_dir": str(tmp_path),
                    "callbacks": [{"class_path": "tests.training.batch_counter.BatchCounter",
                                   "init_args": {"path": str(counts)}}]},
        "model": {"model_name": TINY_MODEL, "pretrained": False, "text_model_path": tiny_text_model},
        "data": {"shards": str(shards), "batch_size": 4, "num_workers": 2, "shuffle_buffer": 8, "resampled": True,
                 "samples_per_epoch": 32},
    }
    _fit(config, tmp_path)
    records = [json.loads(line) for line in counts.read_text().splitlines()]
    assert sorted((r["epoch"], r["rank"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # 32 samples per epoch, batch 4, 2 ranks: 4 batches on each rank, every epoch.
    assert {r["batches"] for r in records} == {4}
    by_epoch = {(r["epoch"], r["rank"]): r["keys"] for r in records}
    assert by_epoch[(0, 0)] != by_epoch[(0, 1)]  # ranks draw differently
    assert by_epoch[(0, 0)] != by_epoch[(1, 0)]  # and epochs too


def test_pretrain_text_with_two_gloo_processes(phantom_shards, tiny_text_model, tmp_path):
    output = tmp_path / "text-model"
    config = {
        "trainer": {"accelerator": "cpu", "strategy": "ddp", "devices": 2, "max_steps": 3, "logger": False,
                    "enable_progress_bar": False, "enable_checkpointing": False, "default_root_dir": str(tmp_path)},
        "model": {"model_name": TINY_MODEL, "text_model_path": tiny_text_model, "output": str(output)},
        "data": {"shards": str(phantom_shards), "batch_size": 4},
    }
    _fit(config, tmp_path, command="pretrain-text")
    assert (output / "config.json").is_file()  # written once, by rank 0
