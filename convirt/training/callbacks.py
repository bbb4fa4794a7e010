"""Training callbacks: zero-shot diagnosis measured while the model trains."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import numpy as np
import torch

from convirt.data.labels import label_matrix
from convirt.zeroshot import Method, ZeroShotClassifier, load_descriptors
from convirt.zeroshot.metrics import mean_defined, per_finding_auroc


class ZeroShotEvaluation(L.Callback):
    """Every ``every_n_steps`` training steps, zero-shot AUROC of a descriptor set on a shard split.

    Logs ``zeroshot/<finding>`` and ``zeroshot/mean_auroc`` (findings without both classes in the
    evaluated images are NaN and left out of the mean). Uses the DataModule's shards, tokenizer
    and preprocessing, so a config only names the descriptor set:

    ```yaml
    trainer:
      callbacks:
        - class_path: convirt.training.callbacks.ZeroShotEvaluation
          init_args: {descriptors: phantom, every_n_steps: 200}
    ```

    Args:
        descriptors: Shipped set name or YAML path.
        every_n_steps: How often (in optimizer steps).
        split: Shard split to score (``val`` keeps the test split untouched).
        max_batches: Batches of that split to score (bounds the cost).
        method: ``descriptors``, ``names`` or ``ensemble``.
    """

    def __init__(
        self,
        descriptors: str = "phantom",
        every_n_steps: int = 500,
        split: str = "val",
        max_batches: int = 8,
        method: str = "descriptors",
    ) -> None:
        super().__init__()
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.descriptors = load_descriptors(descriptors)  # fails at config time on a bad name
        self.method = Method(method)
        self.every_n_steps, self.split, self.max_batches = every_n_steps, split, max_batches

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            for name, value in self.evaluate(trainer, pl_module).items():
                pl_module.log(f"zeroshot/{name}", value, rank_zero_only=True)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Per-finding AUROC and their mean on up to ``max_batches`` batches of the split."""
        datamodule: Any = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "eval_dataloader"):
            raise ValueError("ZeroShotEvaluation needs convirt's ShardDataModule")
        model: Any = pl_module.model  # type: ignore[attr-defined]
        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            classifier = ZeroShotClassifier(
                model, datamodule.tokenizer, self.descriptors, self.method, device=pl_module.device
            )
            features, metas = [], []
            for index, batch in enumerate(datamodule.eval_dataloader(self.split)):
                if index >= self.max_batches:
                    break
                images = pl_module.prepare_images(batch["image"].to(pl_module.device))  # type: ignore[operator]
                # The classifier's encoder: vectors made as `convirt zeroshot` makes them (float32
                # on a CPU whatever the training precision).
                features.append(classifier.encoder.images(images))
                metas.extend(batch["meta"])
            if not features:
                return {}
            probabilities = classifier.predict_features(
                torch.from_numpy(np.concatenate(features))
            ).probabilities.numpy()
        finally:
            for module, training in modes.items():
                module.train(training)
        names = self.descriptors.finding_names
        labels = label_matrix(metas, names)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one class only: NaN, left out of the mean
            auroc = per_finding_auroc(labels, probabilities, names)
        return {**auroc, "mean_auroc": mean_defined(auroc)}
