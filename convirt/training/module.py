"""The LightningModule: one shared step for train, validation and test over a dual encoder."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from convirt._hardware import cpu_info
from convirt._io import atomic_path
from convirt.data.transforms import normalize_images
from convirt.losses import create_loss
from convirt.models import create_model, image_statistics
from convirt.models.adapted import (
    ADAPTER_KEY,
    adapt,
    adapter_config,
    check_base,
    load_trained_state,
    refuse_frozen_adapted,
    registry_base,
    trained_state,
)
from convirt.models.adapters import format_trainable, trainable_parameters
from convirt.models.checkpoint import INIT_KEY
from convirt.models.freeze import freeze_image_groups as freeze_image_groups_
from convirt.models.freeze import freeze_text_layers as freeze_text_layers_
from convirt.models.freeze import lock_tower, locked_trunk
from convirt.models.initial import absolute_source, initial_model
from convirt.models.memory_format import channels_last_images, to_channels_last
from convirt.training.grad_cache import grad_cache_step
from convirt.training.metrics import retrieval_recalls
from convirt.training.optimization import parameter_groups, warmup_cosine
from convirt.training.rng import rng_state as _rng_state
from convirt.training.rng import rng_state_of_rank as _rng_state_of_rank
from convirt.training.rng import set_rng_state as _set_rng_state

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
        sub_batch_size: GradCache: encode each training batch in sub-batches of this size, so
            that a large batch fits in memory while the loss still spans every negative of the
            full (and, with DDP, global) batch. Gradients equal the full-batch step's for models
            without batch-dependent layers; batch-norm layers see sub-batches.
        lock_image_tower: Freeze the whole image trunk and run it in eval mode (LiT); its
            projection head still trains.
        lock_text_tower: The same for the text trunk.
        gradient_checkpointing: Recompute tower activations in the backward pass instead of
            storing them (less memory, about a third more compute).
        text_dropout: Train the text trunk with its dropout on (its pretraining setting); off
            runs the text trunk in eval mode while its weights train.
        local_loss: With several ranks, compute each rank's rows of the loss against the
            gathered features (less memory; same gradients once DDP averages them) instead of
            the full global matrix on every rank (``clip`` loss).
        freeze_image_norm: Run the image trunk's batch-norm layers in eval mode: they keep the
            pretrained running statistics, which a small or unlike training set would otherwise
            replace (frozen groups included); their scale and shift still train where the
            group does.
        channels_last: Lay out a convolutional image tower and its input images channels-last
            (faster convolutions on CPUs and GPUs; the same model). No effect on a ViT.
        adapter: Train adapters instead of the towers (``lora``, ``dora``, ``loha``, ``lokr``,
            ``ia3``, through peft): the towers' weights stay as the base had them, and the
            adapters, projection heads and logit scale train. Checkpoints hold those weights and
            the base's SHA-256, not the base (rebuilt from ``init``, or the registry's towers).
        adapter_towers: The towers that get adapters (default both: ``[image, text]``).
        adapter_rank: The adapters' rank.
        adapter_alpha: Their scale is ``alpha / rank``.
        adapter_dropout: Dropout on the adapters' input (training only).
        adapter_image_targets: Module-name suffixes of the image layers to adapt (default: by
            tower type, :data:`convirt.models.adapters.DEFAULT_TARGETS`).
        adapter_text_targets: The same for the text tower.
        init: Start from this model source instead of ``model_name``'s towers: a ``convirt fit``
            checkpoint, an export or open_clip folder (``local-dir:``), ``hf-hub:ORG/NAME``,
            ``open_clip:ARCH@weights.pt`` (OpenAI-format, e.g. CheXzero), a registry name, or a
            timm image tower (``timm:NAME[@weights]``, paired with ``model_name``'s text tower
            from ``text_model_path``). Its towers, logit scale, preprocessing and tokenizer are
            taken as they are (see :mod:`convirt.models.initial`); ``pretrained`` does not apply.
    """

    image_mean: torch.Tensor  # the image tower's normalisation, registered as buffers in __init__
    image_std: torch.Tensor

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
        sub_batch_size: int | None = None,
        lock_image_tower: bool = False,
        lock_text_tower: bool = False,
        gradient_checkpointing: bool = False,
        text_dropout: bool = True,
        local_loss: bool = False,
        freeze_image_norm: bool = False,
        channels_last: bool = True,
        init: str | None = None,
        adapter: str | None = None,
        adapter_towers: list[str] | None = None,
        adapter_rank: int = 8,
        adapter_alpha: float = 16.0,
        adapter_dropout: float = 0.0,
        adapter_image_targets: list[str] | None = None,
        adapter_text_targets: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if text_model_path and os.path.isdir(text_model_path):
            # Absolute in the checkpoint, so that every command finds the folder from any directory.
            self.hparams["text_model_path"] = os.path.abspath(text_model_path)
        # The adapters, checked before any weights load (a bad option says so at once).
        adapters = None
        if adapter:
            towers = ["image", "text"] if adapter_towers is None else adapter_towers
            adapters = adapter_config(
                adapter,
                towers,
                adapter_rank,
                adapter_alpha,
                adapter_dropout,
                adapter_image_targets,
                adapter_text_targets,
            )
            refuse_frozen_adapted(adapters, freeze_image_groups, freeze_text_layers, lock_image_tower, lock_text_tower)
        # What the run started from (source and weights hash), written into every checkpoint.
        self.init_record: dict[str, Any] | None = None
        if init:
            self.hparams["init"] = absolute_source(init)
            start = initial_model(self.hparams["init"], model_name, text_model_path)
            self.model: Any = start.model
            self.init_record = start.record
        elif adapter:  # a base that rebuilds the same wherever the checkpoint is loaded
            self.model = registry_base(model_name, pretrained, text_model_path)
        else:
            self.model = create_model(model_name, pretrained=pretrained, text_model_path=text_model_path)
        # The tower's normalisation, kept on the module's device for compact batches (not saved).
        mean, std = image_statistics(self.model)
        self.register_buffer("image_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("image_std", torch.tensor(std, dtype=torch.float32), persistent=False)
        # The adapters (config and base hash), written into every checkpoint beside their weights.
        self.adapter_record: dict[str, Any] | None = None
        if adapters is not None:
            self.adapter_record = adapt(self.model, adapters)
            self.strict_loading = False  # its checkpoints hold the adapters and heads, not the base
        freeze_image_groups_(self.model, freeze_image_groups)
        freeze_text_layers_(self.model, freeze_text_layers)
        self.locked = [tower for tower, lock in (("image", lock_image_tower), ("text", lock_text_tower)) if lock]
        for tower in self.locked:
            lock_tower(self.model, tower)
        self.channels_last = channels_last and to_channels_last(self.model)
        if gradient_checkpointing:
            self.model.set_grad_checkpointing(True)  # type: ignore[operator]
        if sub_batch_size is not None and sub_batch_size <= 0:
            raise ValueError(f"sub_batch_size must be positive, got {sub_batch_size}")
        if repeated_reports_as_positives and loss != "convirt":
            raise ValueError(f"repeated_reports_as_positives needs loss 'convirt', got {loss!r}")
        self.loss_name = loss
        self.loss_fn: nn.Module | None = None
        self._val_features: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_rng: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def setup(self, stage: str) -> None:
        rank_zero_info(f"convirt: trainable parameters: {format_trainable(trainable_parameters(self.model))}")
        self.loss_fn = create_loss(
            self.loss_name,
            rank=self.global_rank,
            world_size=self.trainer.world_size,
            local_loss=bool(self.hparams["local_loss"]),
        )

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised features ``(B, D)`` of images ``(B, 3, H, W)`` and token ids ``(B, L)``."""
        return self.model.encode_image(images, normalize=True), self.model.encode_text(texts, normalize=True)

    def _loss(self, image_features: torch.Tensor, text_features: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of a batch's features; text-only negatives (``negative_text``) and repeated-report
        groups go to the loss when the batch carries them."""
        assert self.loss_fn is not None
        negatives = self.model.encode_text(batch["negative_text"], normalize=True) if "negative_text" in batch else None
        groups = batch.get("text_group") if self.hparams["repeated_reports_as_positives"] else None
        return self.loss_fn(
            image_features,
            text_features,
            self.model.logit_scale.exp(),  # type: ignore[no-any-return]
            self.model.logit_bias,
            text_groups=groups,
            negatives=negatives,
        )

    def _step(
        self, batch: dict[str, Any], stage: str, features: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        image_features, text_features = features if features is not None else self(batch["image"], batch["text"])
        loss = self._loss(image_features, text_features, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()} at step {self.global_step}")
        batch_size = image_features.shape[0]
        with torch.no_grad():
            hits = (image_features @ text_features.T).argmax(dim=1) == torch.arange(batch_size, device=self.device)
        on_step = stage == "train"
        # Corrupt samples the stream skipped since the last batch (logged on every rank, 0 or not,
        # so that the epoch-end reduction finds the key everywhere).
        self.log(
            f"{stage}/skipped_samples",
            float(batch.get("skipped", 0)),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
            batch_size=1,
        )
        self.log(
            f"{stage}/loss",
            loss,
            prog_bar=True,
            on_step=on_step,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=not on_step,
        )
        self.log(
            f"{stage}/i2t_top1",
            hits.float().mean(),
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        if on_step:
            self.log("train/logit_scale", self.model.logit_scale.exp(), on_step=True, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        size = self.hparams["sub_batch_size"]
        if size and batch["image"].shape[0] > size:
            return grad_cache_step(self, batch, size)
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        features = self(batch["image"], batch["text"])
        self._val_features.append((features[0].detach().float(), features[1].detach().float()))
        return self._step(batch, "val", features)

    def on_validation_epoch_start(self) -> None:
        self._val_features = []

    def on_validation_epoch_end(self) -> None:
        """Image->text and text->image R@1/5/10 over the validation pairs this rank saw."""
        if not self._val_features:
            return
        images = torch.cat([f[0] for f in self._val_features])
        texts = torch.cat([f[1] for f in self._val_features])
        self._val_features = []
        for name, value in retrieval_recalls(images, texts).items():
            self.log(f"val/{name}", value, sync_dist=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """The model boundary of compact batches: 8-bit ``(B, 1, H, W)`` -> the tower's normalised
        ``(B, C, H, W)``, on the batch's device (channels-last for a convolutional tower). Float
        images pass unchanged but for the layout."""
        images = normalize_images(images, self.image_mean, self.image_std)
        return channels_last_images(images) if self.channels_last else images

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
            batch["image"] = self.prepare_images(batch["image"])
        return batch

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The random state (dropout) of every rank, so that a resumed run continues each rank's
        # stream; every rank runs this hook, rank 0 writes the file.
        cpu, cuda = _rng_state()
        ranks = [{"cpu": cpu, "cuda": cuda}]
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, {"cpu": cpu, "cuda": cuda})
            ranks = gathered
        checkpoint["convirt_rng"] = {"cpu": cpu, "cuda": cuda, "ranks": ranks}
        if self.init_record is not None:
            checkpoint[INIT_KEY] = dict(self.init_record)
        if self.adapter_record is not None:  # the trained weights only; the base is rebuilt and hashed
            checkpoint[ADAPTER_KEY] = dict(self.adapter_record)
            trained = trained_state(self.model)
            checkpoint["state_dict"] = {f"model.{key}": value for key, value in trained.items()}
        # What the run trained on and with (read back by `convirt report`; plain types only).
        checkpoint["convirt_run"] = {
            "precision": str(self.trainer.precision),
            "device": self.device.type,
            "world_size": int(self.trainer.world_size),
            "cpu": cpu_info().as_dict(),
            "parameters": {tower: list(counts) for tower, counts in trainable_parameters(self.model).items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.adapter_record is not None:
            if ADAPTER_KEY not in checkpoint:
                raise ValueError("the checkpoint holds no adapters: resume an adapter run from its own checkpoints")
            check_base(checkpoint[ADAPTER_KEY], self.adapter_record, "the checkpoint")
            weights = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
            load_trained_state(self.model, weights, "the checkpoint")  # checked: Lightning loads it loosely
        self._pending_rng = _rng_state_of_rank(
            checkpoint.get("convirt_rng"), self.global_rank, self.trainer.world_size if self._trainer is not None else 1
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Restored at the first step, after the data loader has drawn its worker seeds, as in
        # the uninterrupted run at this point.
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_fit_start(self) -> None:
        # Hugging Face towers load in eval mode; train them as trained (dropout on), except a
        # locked trunk, which keeps its batch-norm statistics and skips dropout.
        self.model.train()
        for tower in self.locked:
            locked_trunk(self.model, tower).eval()
        if not self.hparams["text_dropout"] and "text" not in self.locked:
            locked_trunk(self.model, "text").eval()
        if self.hparams["freeze_image_norm"]:
            for module in locked_trunk(self.model, "image").modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        param_groups = parameter_groups(
            self.model, hp.learning_rate, hp.tower_learning_rate or hp.learning_rate, hp.weight_decay
        )
        optimizer = torch.optim.AdamW(param_groups, betas=(0.9, 0.98), eps=1e-6)
        scheduler = warmup_cosine(optimizer, hp.warmup_steps, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def save_initial_checkpoint(
    path: str, model_name: str, pretrained: bool = True, text_model_path: str | None = None, seed: int = 0
) -> str:
    """Save a registry model before any training step as a checkpoint every command reads.

    The baselines of an evaluation: the pretrained towers as shipped (``pretrained=True``) or a
    random initialisation (``pretrained=False``, seeded).
    """
    torch.manual_seed(seed)
    module = ContrastiveModule(model_name=model_name, pretrained=pretrained, text_model_path=text_model_path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp)
    return path
