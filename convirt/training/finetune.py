"""Fine-tuning an image tower with a linear head (BenchX's protocol), through Lightning.

The tower (any loaded model's ``encode_image``: a contrastive model's image side, or an image-only
encoder) and a new linear head are trained together with a binary cross-entropy per finding; the
epoch with the best validation mean AUROC is kept (early stopping on it), and its probabilities
for the held-out images are returned. The caller chooses the images (patient-grouped parts and
label fractions: :mod:`convirt.bench.finetune`); the model is copied, never changed.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from convirt.data.inputs import RowDataset
from convirt.data.labels import label_matrix
from convirt.data.schema import Row
from convirt.data.stream import collate_samples
from convirt.data.transforms import image_side, image_transform_for
from convirt.models.checkpoint import LoadedModel
from convirt.zeroshot.metrics import auroc


@dataclass(frozen=True)
class FinetuneSettings:
    """How the tower is fine-tuned (BenchX's choices where it made them)."""

    max_epochs: int = 10
    patience: int = 3
    batch_size: int = 32
    tower_lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    accelerator: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0


class ImageClassifier(L.LightningModule):
    """An image tower and a linear head, trained with binary cross-entropy per finding."""

    def __init__(self, tower: nn.Module, features: int, findings: int, settings: FinetuneSettings) -> None:
        super().__init__()
        self.tower = tower
        self.head = nn.Linear(features, findings)
        self.settings = settings
        self.criterion = nn.BCEWithLogitsLoss()
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.tower.encode_image(images, normalize=False)  # type: ignore[operator]
        return self.head(features.float())

    def training_step(self, batch: dict[str, Any], index: int) -> torch.Tensor:
        loss = self.criterion(self(batch["image"]), batch["target"])
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["key"]))
        return loss

    def validation_step(self, batch: dict[str, Any], index: int) -> None:
        self._val.append((torch.sigmoid(self(batch["image"])).detach().cpu(), batch["target"].cpu()))

    def on_validation_epoch_end(self) -> None:
        scores, targets = (torch.cat(part).numpy() for part in zip(*self._val))
        self._val.clear()
        values = [
            auroc(targets[:, f], scores[:, f])
            for f in range(targets.shape[1])
            if 0 < targets[:, f].sum() < len(targets)
        ]
        self.log("val_auroc", float(np.mean(values)) if values else 0.5, prog_bar=True)

    def predict_step(self, batch: dict[str, Any], index: int) -> torch.Tensor:
        return torch.sigmoid(self(batch["image"])).float().cpu()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [
            {"params": self.tower.parameters(), "lr": self.settings.tower_lr},
            {"params": self.head.parameters(), "lr": self.settings.head_lr},
        ]
        return torch.optim.AdamW(groups, weight_decay=self.settings.weight_decay)


def _loader(
    rows: Sequence[Row], names: Sequence[str], preprocess: dict[str, Any], train: bool, settings: FinetuneSettings
) -> DataLoader:
    labels = label_matrix([row.metadata() for row in rows], names).astype(np.float32)
    position = {row.key: i for i, row in enumerate(rows)}

    def collate(samples: list[Any]) -> dict[str, Any]:
        batch = collate_samples(samples, None, None)
        batch["target"] = torch.from_numpy(labels[[position[key] for key in batch["key"]]])
        return batch

    dataset = RowDataset(rows, image_transform_for(preprocess, train=train))
    generator = torch.Generator().manual_seed(0)
    return DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=train,
        drop_last=train and len(rows) > settings.batch_size,
        num_workers=settings.num_workers,
        collate_fn=collate,
        generator=generator,
    )


def finetune_predict(
    loaded: LoadedModel,
    train: Sequence[Row],
    val: Sequence[Row],
    test: Sequence[Row],
    names: Sequence[str],
    seed: int = 0,
    settings: FinetuneSettings = FinetuneSettings(),
) -> np.ndarray:
    """Fine-tune a copy of ``loaded``'s image tower with a linear head on ``train``, keep the epoch
    with the best mean AUROC on ``val``, and return its ``(len(test), F)`` probabilities.

    Raises:
        ValueError: An empty part.
    """
    if not train or not val or not test:
        raise ValueError(
            f"fine-tuning needs images in every part: {len(train)} train, {len(val)} val, {len(test)} test"
        )
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    L.seed_everything(seed, workers=True, verbose=False)
    tower = copy.deepcopy(loaded.model).train()
    preprocess = loaded.preprocess_cfg
    with torch.no_grad():
        side = image_side(preprocess)
        features = tower.encode_image(torch.zeros(1, 3, side, side), normalize=False).shape[-1]
    module = ImageClassifier(tower, int(features), len(names), settings)
    with tempfile.TemporaryDirectory(prefix="convirt-finetune-") as folder:
        best = ModelCheckpoint(dirpath=folder, monitor="val_auroc", mode="max", save_top_k=1, save_weights_only=True)
        trainer = L.Trainer(
            accelerator=settings.accelerator,
            devices=1,
            precision=settings.precision,  # type: ignore[arg-type]
            max_epochs=settings.max_epochs,
            callbacks=[best, EarlyStopping(monitor="val_auroc", mode="max", patience=settings.patience)],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=folder,
            num_sanity_val_steps=0,
        )
        trainer.fit(
            module, _loader(train, names, preprocess, True, settings), _loader(val, names, preprocess, False, settings)
        )
        parts = trainer.predict(
            module, _loader(test, names, preprocess, False, settings), ckpt_path=best.best_model_path or None
        )
    return torch.cat(list(parts)).numpy()  # type: ignore[arg-type]
