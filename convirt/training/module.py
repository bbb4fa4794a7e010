"""The LightningModule: one shared step for train, validation and test over a dual encoder."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from convirt.losses import create_loss
from convirt.models import create_model
from convirt.models.freeze import freeze_image_groups as freeze_image_groups_
from convirt.models.freeze import freeze_text_layers as freeze_text_layers_

MAX_LOGIT_SCALE = math.log(100.0)


class ContrastiveModule(L.LightningModule):
    """Contrastive image-text pretraining of a registry model.

    The model is named, not passed as an object, so that a YAML config stays data and a
    checkpoint can rebuild the model from its hyper-parameters (see
    :func:`convirt.models.load_checkpoint`).

    Args:
        model_name: Registry name of the dual encoder (``convirt.models.list_models()``).
        pretrained: Start from pretrained tower weights.
        text_model_path: Local Hugging Face folder replacing the config's text model.
        loss: ``clip`` or ``siglip``.
        learning_rate: Peak learning rate of the projection heads and logit scale.
        tower_learning_rate: Peak learning rate of the pretrained towers (default: ``learning_rate``).
        weight_decay: AdamW weight decay (not applied to biases, norms, logit scale).
        warmup_steps: Linear warm-up steps before the cosine decay.
        freeze_image_groups: Freeze the stem and early stages of a timm image tower (this many
            coarse groups: the stem is the first).
        freeze_text_layers: Freeze the token embeddings and this many lower layers of a
            BERT-family text tower.
        repeated_reports_as_positives: Reports that are the same after normalisation count as
            positives of each other (soft targets; ``convirt`` loss only).
    """

    def __init__(
        self,
        model_name: str = "demo-effnet-minilm",
        pretrained: bool = True,
        text_model_path: str | None = None,
        loss: str = "clip",
        learning_rate: float = 1e-4,
        tower_learning_rate: float | None = None,
        weight_decay: float = 0.05,
        warmup_steps: int = 50,
        freeze_image_groups: int = 0,
        freeze_text_layers: int = 0,
        repeated_reports_as_positives: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: Any = create_model(model_name, pretrained=pretrained, text_model_path=text_model_path)
        freeze_image_groups_(self.model, freeze_image_groups)
        freeze_text_layers_(self.model, freeze_text_layers)
        if repeated_reports_as_positives and loss != "convirt":
            raise ValueError(f"repeated_reports_as_positives needs loss 'convirt', got {loss!r}")
        self.loss_name = loss
        self.loss_fn: nn.Module | None = None

    def setup(self, stage: str) -> None:
        self.loss_fn = create_loss(self.loss_name, rank=self.global_rank, world_size=self.trainer.world_size)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised features ``(B, D)`` of images ``(B, 3, H, W)`` and token ids ``(B, L)``."""
        return self.model.encode_image(images, normalize=True), self.model.encode_text(texts, normalize=True)

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        image_features, text_features = self(batch["image"], batch["text"])
        assert self.loss_fn is not None
        if self.loss_name == "siglip":
            loss = self.loss_fn(image_features, text_features, self.model.logit_scale.exp(), self.model.logit_bias)
        elif self.loss_name == "convirt":
            groups = batch.get("text_group") if self.hparams["repeated_reports_as_positives"] else None
            loss = self.loss_fn(image_features, text_features, None, groups)
        else:
            loss = self.loss_fn(image_features, text_features, self.model.logit_scale.exp())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()} at step {self.global_step}")
        batch_size = image_features.shape[0]
        with torch.no_grad():
            hits = (image_features @ text_features.T).argmax(dim=1) == torch.arange(batch_size, device=self.device)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=batch_size,
                 sync_dist=not on_step)
        self.log(f"{stage}/i2t_top1", hits.float().mean(), on_step=False, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)
        if on_step:
            self.log("train/logit_scale", self.model.logit_scale.exp(), on_step=True, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        tower_lr = hp.tower_learning_rate or hp.learning_rate
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            in_tower = name.startswith(("visual.trunk.", "text.transformer."))
            no_decay = param.ndim < 2 or "logit_" in name or "norm" in name or name.endswith(".bias")
            groups.setdefault((in_tower, no_decay), []).append(param)
        param_groups = [
            {"params": params, "lr": tower_lr if in_tower else hp.learning_rate,
             "weight_decay": 0.0 if no_decay else hp.weight_decay}
            for (in_tower, no_decay), params in groups.items()
        ]
        optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.98), eps=1e-6)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(hp.warmup_steps, total // 2)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def save_initial_checkpoint(path: str, model_name: str, pretrained: bool = True, text_model_path: str | None = None,
                            seed: int = 0) -> str:
    """Save a registry model before any training step as a checkpoint every command reads.

    The baselines of an evaluation: the pretrained towers as shipped (``pretrained=True``) or a
    random initialisation (``pretrained=False``, seeded).
    """
    import os

    torch.manual_seed(seed)
    module = ContrastiveModule(model_name=model_name, pretrained=pretrained, text_model_path=text_model_path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp)
    os.replace(tmp, path)
    return path
