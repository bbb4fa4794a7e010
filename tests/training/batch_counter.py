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

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.batches += 1
        self.keys += list(batch["key"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with open(self.path, "a") as handle:
            handle.write(
                json.dumps(
                    {
                        "rank": trainer.global_rank,
                        "epoch": trainer.current_epoch,
                        "batches": self.batches,
                        "keys": self.keys,
                    }
                )
                + "\n"
            )


class FirstStep(L.Callback):
    """Saves to ``{folder}/rank{r}.pt`` what rank ``r`` trained on at step 1 and what came of it: the
    weights before the step, the batch as the model saw it, the step's loss and the gradients
    the optimiser received (after DDP's all-reduce); at the end of the fit, also the batch of every
    step (``steps``, in order)."""

    def __init__(self, folder: str) -> None:
        self.folder, self.record = Path(folder), {"steps": []}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["weights"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.record["hparams"] = dict(pl_module.hparams)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        tensors = {k: v.detach().clone() for k, v in batch.items() if hasattr(v, "detach")}
        self.record["steps"].append(tensors)
        if trainer.global_step == 0:
            self.record["batch"] = tensors

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if trainer.global_step == 0:
            self.record["grads"] = {
                n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }
            self.record["loss"] = float(trainer.callback_metrics["train/loss_step"])
            self.folder.mkdir(parents=True, exist_ok=True)
            import torch

            torch.save(self.record, self.folder / f"rank{trainer.global_rank}.pt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        if "grads" in self.record:
            torch.save(self.record, self.folder / f"rank{trainer.global_rank}.pt")


class StepLog(L.Callback):
    """Writes ``{folder}/rank{r}.json``: for every training step of rank ``r``, the sample keys, a
    digest of the text-only negatives, the loss and whether validation has run; and, from rank 0
    at the end, the final weights to ``{folder}/final.pt``."""

    def __init__(self, folder: str) -> None:
        self.folder, self.steps, self.val_seen = Path(folder), {}, False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_seen = not trainer.sanity_checking or self.val_seen

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        negatives = batch.get("negative_text")
        self.steps[trainer.global_step] = {
            "keys": list(batch["key"]),
            "loss": float(trainer.callback_metrics["train/loss_step"]),
            "negatives": None if negatives is None else negatives.sum(dim=1).tolist(),
            "val_seen": self.val_seen,
            "epoch": trainer.current_epoch,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0:
            import torch

            torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, self.folder / "final.pt")
