"""A callback for the DDP tests: records the training batches of every epoch on every rank."""

import json
from pathlib import Path
from typing import Any

import lightning as L


class BatchCounter(L.Callback):
    """Appends ``{"rank", "epoch", "batches", "skipped"}`` to ``path`` at the end of each training epoch."""

    def __init__(self, path: str) -> None:
        self.path, self.batches, self.keys = Path(path), 0, []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches, self.keys = 0, []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches += 1
        self.keys += list(batch["key"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"rank": trainer.global_rank, "epoch": trainer.current_epoch,
                                     "batches": self.batches, "keys": self.keys}) + "\n")
