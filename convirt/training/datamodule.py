"""The DataModule: streams a shard folder made by ``convirt shards``; knows no model."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from convirt.data.stream import EpochStream, batches_per_worker, build_batches
from convirt.data.transforms import SentenceSampler, clean_report, image_transform_for
from convirt.data.writer import require_images, shard_urls
from convirt.models.factory import create_tokenizer, get_preprocess_cfg


class ShardDataModule(L.LightningDataModule):
    """Batches of images, token ids and metadata from ``{train,val,test}-*.tar`` shards.

    The model's name is config data here: it picks the tokenizer and the image size and
    normalisation, so the two always match the model being trained.

    Args:
        shards: Folder with ``manifest.json`` and the shards.
        model_name: Registry name of the model (linked from the model's ``model_name``).
        text_model_path: Local tokenizer folder (linked from the model).
        batch_size: Samples per batch and per device.
        num_workers: Data-loader processes per device.
        shuffle_buffer: Samples held in the training shuffle buffer.
        sentence_drop: Probability of dropping each report sentence in training.
        image_size: Override of the model's input size.
        seed: Seed of the shard and sample shuffles.
    """

    def __init__(
        self,
        shards: str,
        model_name: str = "demo-effnet-minilm",
        text_model_path: str | None = None,
        batch_size: int = 32,
        num_workers: int = 1,
        shuffle_buffer: int = 1000,
        sentence_drop: float = 0.3,
        image_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.manifest: dict[str, Any] = {}
        self.tokenizer: Any = None

    def setup(self, stage: str | None = None) -> None:
        # The training stream resumes mid-epoch by itself (see EpochStream); Lightning, which
        # only knows stateful data loaders, would warn otherwise.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        hp: Any = self.hparams
        self.manifest = require_images(hp.shards)
        self.tokenizer = create_tokenizer(hp.model_name, text_model_path=hp.text_model_path)
        self.preprocess = get_preprocess_cfg(hp.model_name)

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp: Any = self.hparams
        world_size = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        transform = image_transform_for(self.preprocess, train=train, size=hp.image_size)
        urls = shard_urls(hp.shards, split)
        split_by_rank = train and world_size > 1 and len(urls) >= world_size
        workers = hp.num_workers
        if train:
            # An endless training stream must give every worker at least one shard.
            workers = min(workers, len(urls) // world_size if split_by_rank else len(urls))
        text_transform = SentenceSampler(hp.sentence_drop, seed=hp.seed + rank) if train else clean_report
        if not train:
            # Evaluation runs the whole split on every rank, so that no rank is left without batches.
            dataset = build_batches(urls, transform, self.tokenizer, hp.batch_size, text_transform=text_transform,
                                    seed=hp.seed + rank)
            return DataLoader(dataset, batch_size=None, num_workers=workers)

        def make_epoch(seed: int, skip_samples: int) -> Any:
            # Training splits shards between ranks when there are enough.
            return build_batches(urls, transform, self.tokenizer, hp.batch_size, text_transform=text_transform,
                                 train=True, shuffle_buffer=hp.shuffle_buffer, split_by_rank=split_by_rank,
                                 seed=seed, skip_samples=skip_samples)

        samples = int(self.manifest["splits"][split]["samples"])
        per_worker = batches_per_worker(samples, hp.batch_size, world_size, workers)
        start_epoch, skip = self._resume_position()
        if skip >= per_worker * max(1, workers):  # restored at the end of an epoch: start the next
            start_epoch, skip = start_epoch + 1, 0
        stream = EpochStream(make_epoch, per_worker, hp.batch_size, seed=hp.seed + rank, start_epoch=start_epoch,
                             skip_batches=skip, workers=workers)
        return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0)

    def _resume_position(self) -> tuple[int, int]:
        """The epoch to start from and the batches of it already trained on (after a restore)."""
        if self.trainer is None:
            return 0, 0
        # `ready` counts the batches of the current epoch that reached the training step; a step
        # checkpoint is written at the end of that step, so all of them were trained on.
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return int(self.trainer.current_epoch), int(progress.ready)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Any split, read once in order with evaluation preprocessing."""
        return self._loader(split, train=False)

    def _has(self, split: str) -> bool:
        return int(self.manifest.get("splits", {}).get(split, {}).get("samples", 0)) > 0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._loader("val", train=False) if self._has("val") else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
