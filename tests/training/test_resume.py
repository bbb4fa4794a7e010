"""Exact resume: a run killed (SIGKILL) mid-epoch and resumed from its last step checkpoint gives
the losses of the uninterrupted run with the same seed, across the next epoch boundary too."""

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from convirt.training import ContrastiveModule, ShardDataModule
from tests.conftest import TINY_MODEL

STEPS = 12
CHECKPOINT_EVERY = 5  # an epoch here is 7 or 8 batches (by worker count): step 5 is mid-epoch


class _Losses(L.Callback):
    def __init__(self, kill_at=None):
        self.losses = {}
        self.kill_at = kill_at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.kill_at is not None and trainer.global_step == self.kill_at:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, no final checkpoint

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])


def run(shards, text_model, out, workers, ckpt_path=None, kill_at=None):
    L.seed_everything(0, verbose=False)
    module = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=text_model, learning_rate=1e-3,
                               warmup_steps=2)
    data = ShardDataModule(str(shards), model_name=TINY_MODEL, text_model_path=text_model, batch_size=8,
                           num_workers=workers, shuffle_buffer=16)
    losses = _Losses(kill_at)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(out), every_n_train_steps=CHECKPOINT_EVERY,
                                                      save_top_k=-1, filename="step{step}")
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(out), limit_val_batches=0,
                        callbacks=[losses, checkpoints])
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return losses.losses, trainer


_KILLED = """
import sys
from tests.training.test_resume import run
run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), kill_at=int(sys.argv[5]))
"""


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_killed_mid_epoch_and_resumed_gives_the_same_losses(phantom_shards, tiny_text_model, tmp_path, workers):
    whole, trainer = run(phantom_shards, tiny_text_model, tmp_path / "whole", workers)
    assert sorted(whole) == list(range(1, STEPS + 1))
    # the kill falls mid-epoch, and the resumed run crosses an epoch boundary
    assert CHECKPOINT_EVERY + 1 < trainer.num_training_batches < STEPS and trainer.current_epoch >= 1

    killed = subprocess.run([sys.executable, "-c", _KILLED, str(phantom_shards), tiny_text_model,
                             str(tmp_path / "killed"), str(workers), str(CHECKPOINT_EVERY + 2)],
                            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoint = next((tmp_path / "killed").glob(f"step*{CHECKPOINT_EVERY}*.ckpt"))

    resumed, _ = run(phantom_shards, tiny_text_model, tmp_path / "resumed", workers, ckpt_path=str(checkpoint))
    assert sorted(resumed) == list(range(CHECKPOINT_EVERY + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(whole[step], abs=1e-6), (step, loss, whole[step])
    # the checkpoint carries the random state (weights_only-safe tensors)
    assert torch.is_tensor(torch.load(checkpoint, weights_only=True)["convirt_rng"]["cpu"])
