"""Report pretraining of the text tower: radiology section matching on text-only shards.

A general-domain sentence model (MiniLM, trained on web text) places "No focal consolidation."
next to "Focal consolidation.", and a small image-report set such as a case-report collection
holds almost no negations to teach it otherwise. CXR-BERT (Boecking et al., ECCV 2022) adapted
its text model to radiology with "radiology section matching": the findings and the impression
of one report are a positive pair, the other reports of the batch negatives. Reports without
images (Open-i ships 3,955) are enough for it. ``convirt pretrain-text`` runs it on the text
trunk of a registry model, under that model's own pooler and context length, and writes a
Hugging Face folder to use as ``model.text_model_path`` in ``convirt fit``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from convirt._io import atomic_folder
from convirt.data.reports import FINDINGS, IMPRESSION
from convirt.data.section_pairs import read_section_pairs
from convirt.losses import create_loss
from convirt.models import create_model, create_tokenizer
from convirt.models.features import text_trunk_features
from convirt.models.freeze import freeze_text_layers as freeze_text_layers_
from convirt.training.metrics import retrieval_recalls
from convirt.training.optimization import parameter_groups, warmup_cosine

log = logging.getLogger(__name__)


class _Pairs(Dataset[tuple[str, str]]):
    def __init__(self, pairs: Sequence[tuple[str, str]], swap: bool) -> None:
        self.pairs, self.swap = list(pairs), swap

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[str, str]:
        first, second = self.pairs[index]
        # Either side may be the query: the loss is symmetric, the token budget is not.
        return (second, first) if self.swap and random.random() < 0.5 else (first, second)


class SectionPairsDataModule(L.LightningDataModule):
    """Batches of two sections of the same reports, tokenised for a registry model's text tower.

    Args:
        shards: Folder made by ``convirt shards`` (image or text-only samples).
        model_name: Registry name (linked from the model): picks the tokenizer and context length.
        text_model_path: Local tokenizer folder (linked from the model).
        first: Section of the first text (default findings).
        second: Section of the second text (default impression).
        batch_size: Pairs per batch and per device.
        num_workers: Data-loader processes per device.
    """

    def __init__(
        self,
        shards: str,
        model_name: str = "demo-effnet-minilm",
        text_model_path: str | None = None,
        first: str = FINDINGS,
        second: str = IMPRESSION,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.pairs: dict[str, list[tuple[str, str]]] = {}
        self.tokenizer: Any = None

    def setup(self, stage: str | None = None) -> None:
        hp: Any = self.hparams
        self.tokenizer = create_tokenizer(hp.model_name, hp.text_model_path)
        if "train" not in self.pairs:
            self.pairs["train"] = read_section_pairs(hp.shards, "train", hp.first, hp.second)
        if "val" not in self.pairs:
            try:
                self.pairs["val"] = read_section_pairs(hp.shards, "val", hp.first, hp.second)
            except ValueError as error:  # no validation reports: train without validation
                log.warning("no validation pairs (%s); training without validation", error)
                self.pairs["val"] = []

    def _collate(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        return {"first": self.tokenizer([p[0] for p in pairs]), "second": self.tokenizer([p[1] for p in pairs])}

    def train_dataloader(self) -> DataLoader[Any]:
        hp: Any = self.hparams
        # drop_last: a last batch of a few pairs has almost no negatives.
        return DataLoader(
            _Pairs(self.pairs["train"], swap=True),
            batch_size=hp.batch_size,
            shuffle=True,
            drop_last=len(self.pairs["train"]) > hp.batch_size,
            num_workers=hp.num_workers,
            collate_fn=self._collate,
        )

    def val_dataloader(self) -> Any:
        hp: Any = self.hparams
        if not self.pairs["val"]:
            return []
        return DataLoader(
            _Pairs(self.pairs["val"], swap=False),
            batch_size=hp.batch_size,
            num_workers=hp.num_workers,
            collate_fn=self._collate,
        )


class SectionMatchingModule(L.LightningModule):
    """Section matching on the text trunk of a registry model; writes the trunk as a HF folder.

    Args:
        model_name: Registry name whose text tower is trained (its pooler is used; its
            projection head is not: image-text training learns that).
        text_model_path: Local Hugging Face folder replacing the config's text model.
        output: Folder for the trained text model and tokenizer, written at the end of
            training (``model.text_model_path`` of a later ``convirt fit``).
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not on biases and norms).
        warmup_steps: Linear warm-up steps before the cosine decay.
        temperature: Softmax temperature of the InfoNCE loss (fixed).
        freeze_text_layers: Freeze the token embeddings and this many lower layers.
    """

    def __init__(
        self,
        model_name: str = "demo-effnet-minilm",
        text_model_path: str | None = None,
        output: str = "artifacts/text-model",
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_steps: int = 50,
        temperature: float = 0.05,
        freeze_text_layers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        model = create_model(model_name, pretrained=True, text_model_path=text_model_path, pretrained_image=False)
        if not hasattr(model, "text") or not hasattr(model.text, "transformer"):
            raise ValueError(f"model {model_name!r} has no Hugging Face text tower to pretrain on reports")
        text: Any = model.text  # the image tower and the text projection take no part
        text.proj.requires_grad_(False)
        self.text = text
        freeze_text_layers_(model, freeze_text_layers)
        self.loss_fn: Any = None
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def setup(self, stage: str) -> None:
        self.loss_fn = create_loss("clip", rank=self.global_rank, world_size=self.trainer.world_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, C)`` pooled trunk features of ``(B, L)`` token ids."""
        return F.normalize(text_trunk_features(self, tokens), dim=-1)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        first, second = self(batch["first"]), self(batch["second"])
        loss = self.loss_fn(first, second, 1.0 / self.hparams["temperature"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()} at step {self.global_step}")
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=True,
            on_step=stage == "train",
            on_epoch=True,
            batch_size=len(first),
            sync_dist=stage != "train",
        )
        if stage == "val":
            self._val.append((first.detach().float(), second.detach().float()))
        return loss  # type: ignore[no-any-return]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def on_validation_epoch_end(self) -> None:
        """First->second section R@1/5/10 over all validation reports (chance: k / reports)."""
        if not self._val:
            return
        first, second = (torch.cat([v[i] for v in self._val]) for i in (0, 1))
        self._val = []
        for name, value in retrieval_recalls(first, second).items():
            if name.startswith("i2t"):
                self.log(f"val/section_{name.removeprefix('i2t_')}", value, sync_dist=True)

    def on_fit_start(self) -> None:
        self.text.train()  # Hugging Face models load in eval mode

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        groups = parameter_groups(self.text, hp.learning_rate, hp.learning_rate, hp.weight_decay)
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)
        scheduler = warmup_cosine(optimizer, hp.warmup_steps, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            tokenizer = create_tokenizer(self.hparams["model_name"], self.hparams["text_model_path"])
            save_text_model(self.text, tokenizer, self.hparams["output"])


def save_text_model(text: Any, tokenizer: Any, output: str | os.PathLike[str]) -> Path:
    """Write a text tower's trunk and tokenizer as a Hugging Face folder, atomically (temp, rename)."""
    with atomic_folder(output) as tmp:
        text.transformer.save_pretrained(tmp)
        inner = getattr(tokenizer, "tokenizer", tokenizer)  # open_clip's HFTokenizer wraps the HF one
        inner.save_pretrained(tmp)
    return Path(output)
