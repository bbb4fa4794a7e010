"""Exact resume: a run killed (SIGKILL) mid-epoch and resumed from its last step checkpoint trains
on the same batches (keys), with the same losses, to the same final weights as the uninterrupted
run with the same seed, across the next epoch boundary and its validation, with text-only
negatives, with loader workers, and under 2-rank DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from convirt.training import ContrastiveModule
from tests.conftest import TINY_MODEL, quiet_trainer, tiny_datamodule
from tests.training.batch_counter import StepLog

STEPS = 12
CHECKPOINT_EVERY = 5  # an epoch here is 7 or 8 batches (by worker count): step 5 is mid-epoch
ROOT = Path(__file__).resolve().parents[2]


class _Kill(L.Callback):
    def __init__(self, kill_at):
        self.kill_at = kill_at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.kill_at:
            os.kill(os.getpid(), __import__("signal").SIGKILL)  # no clean-up, no final checkpoint


def run(shards, text_model, out, workers, ckpt_path=None, kill_at=None, **module_options):
    L.seed_everything(0, verbose=False)
    options = {"pretrained": False, "text_model_path": text_model, "learning_rate": 1e-3, "warmup_steps": 2}
    module = ContrastiveModule(TINY_MODEL, **{**options, **module_options})
    data = tiny_datamodule(shards, text_model, num_workers=workers, negative_texts=str(shards), negatives_per_batch=4)
    log = StepLog(str(out / "steps"))
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=str(out), every_n_train_steps=CHECKPOINT_EVERY, save_top_k=-1, filename="step{step}"
    )
    callbacks = [log, checkpoints] + ([_Kill(kill_at)] if kill_at is not None else [])
    trainer = quiet_trainer(
        str(out), enable_checkpointing=True, max_steps=STEPS, limit_val_batches=2, callbacks=callbacks
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer


_KILLED = """
import sys
from pathlib import Path
from tests.training.test_resume import run
import json
run(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), kill_at=int(sys.argv[5]), **json.loads(sys.argv[6]))
"""


def _steps(folder, rank=0):
    records = json.loads((folder / "steps" / f"rank{rank}.json").read_text())
    return {int(step): record for step, record in records.items()}


def _assert_resumed_like_the_whole(whole_dir, resumed_dir, ranks=1):
    for rank in range(ranks):
        whole, resumed = _steps(whole_dir, rank), _steps(resumed_dir, rank)
        assert sorted(whole) == list(range(1, STEPS + 1))
        assert sorted(resumed) == list(range(CHECKPOINT_EVERY + 1, STEPS + 1))
        for step, record in resumed.items():
            assert record["keys"] == whole[step]["keys"], step  # the very samples
            assert record["negatives"] == whole[step]["negatives"], step  # and text-only negatives
            assert record["loss"] == pytest.approx(whole[step]["loss"], abs=1e-6), (rank, step)
    final_whole = torch.load(whole_dir / "steps" / "final.pt")
    final_resumed = torch.load(resumed_dir / "steps" / "final.pt")
    assert final_whole.keys() == final_resumed.keys()
    for name, value in final_whole.items():
        assert torch.allclose(value.float(), final_resumed[name].float(), atol=1e-6), name
    assert _steps(whole_dir)[STEPS]["val_seen"] and _steps(resumed_dir)[STEPS]["val_seen"]  # validation ran


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_killed_mid_epoch_and_resumed_trains_like_the_uninterrupted_run(
    phantom_shards, tiny_text_model, tmp_path, workers
):
    # Before, the negatives of a resumed epoch were drawn anew (seeded by the skip count), so the
    # resumed steps' negatives, losses and final weights differed.
    killed_and_resumed(phantom_shards, tiny_text_model, tmp_path, workers)
    checkpoint = next((tmp_path / "killed").glob(f"step*{CHECKPOINT_EVERY}*.ckpt"))
    # the checkpoint carries the random state (weights_only-safe tensors)
    assert torch.is_tensor(torch.load(checkpoint, weights_only=True)["convirt_rng"]["ranks"][0]["cpu"])


def killed_and_resumed(phantom_shards, tiny_text_model, tmp_path, workers, **module_options):
    """The whole run, the run killed after step 7 and resumed from its step-5 checkpoint: same
    samples, negatives and losses at every step, same final weights."""
    trainer = run(phantom_shards, tiny_text_model, tmp_path / "whole", workers, **module_options)
    # the kill falls mid-epoch, and the resumed run crosses an epoch boundary
    assert CHECKPOINT_EVERY + 1 < trainer.num_training_batches < STEPS and trainer.current_epoch >= 1

    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED,
            str(phantom_shards),
            tiny_text_model,
            str(tmp_path / "killed"),
            str(workers),
            str(CHECKPOINT_EVERY + 2),
            json.dumps(module_options),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = next((tmp_path / "killed").glob(f"step*{CHECKPOINT_EVERY}*.ckpt"))

    run(phantom_shards, tiny_text_model, tmp_path / "resumed", workers, ckpt_path=str(checkpoint), **module_options)
    _assert_resumed_like_the_whole(tmp_path / "whole", tmp_path / "resumed")


def _ddp_fit(tmp_path, out, shards, text_model, ckpt_path=None):
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "strategy": "ddp",
            "devices": 2,
            "max_steps": STEPS,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(out),
            "limit_val_batches": 2,
            "precision": "32-true",
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(out),
                        "every_n_train_steps": CHECKPOINT_EVERY,
                        "save_top_k": -1,
                        "filename": "step{step}",
                    },
                },
                {"class_path": "tests.training.batch_counter.StepLog", "init_args": {"folder": str(out / "steps")}},
            ],
        },
        "model": {
            "model_name": TINY_MODEL,
            "pretrained": False,
            "text_model_path": text_model,
            "learning_rate": 1e-3,
            "warmup_steps": 2,
        },
        "data": {
            "shards": str(shards),
            "batch_size": 4,
            "num_workers": 0,
            "shuffle_buffer": 8,
            "negative_texts": str(shards),
            "negatives_per_batch": 4,
        },
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "convirt.cli.main", "fit", "--config", str(path)]
    if ckpt_path:
        command += ["--ckpt_path", ckpt_path]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_two_rank_run_resumed_mid_epoch_trains_like_the_uninterrupted_run(phantom_shards, tiny_text_model, tmp_path):
    # Before, the checkpoint held rank 0's random state only and every rank restored it: rank 1's
    # dropout after the resume differed, and so did its losses and the final weights.
    # The step-5 checkpoint of the uninterrupted run is what a run killed after step 5 leaves.
    _ddp_fit(tmp_path, tmp_path / "whole", phantom_shards, tiny_text_model)
    checkpoint = next((tmp_path / "whole").glob(f"step*{CHECKPOINT_EVERY}*.ckpt"))
    assert len(torch.load(checkpoint, weights_only=True)["convirt_rng"]["ranks"]) == 2
    _ddp_fit(tmp_path, tmp_path / "resumed", phantom_shards, tiny_text_model, ckpt_path=str(checkpoint))
    _assert_resumed_like_the_whole(tmp_path / "whole", tmp_path / "resumed", ranks=2)
