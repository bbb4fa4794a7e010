"""The DataModule: streams a shard folder made by ``convirt shards``, or shards without a manifest; knows no model."""

from __future__ import annotations

import warnings
import zlib
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from convirt.data.fields import CONVIRT_FIELDS, Fields, parse_fields
from convirt.data.foreign import ForeignShards, open_foreign_shards
from convirt.data.inputs import is_shard_folder
from convirt.data.negatives import add_negatives, read_negative_texts
from convirt.data.shards import require_images, shard_urls
from convirt.data.stream import EpochStream, batches_per_worker, build_batches
from convirt.data.transforms import TEXT_SAMPLING, SentenceSampler, clean_report, image_side, image_transform_for
from convirt.models.factory import create_tokenizer, get_preprocess_cfg
from convirt.models.initial import initial_inputs


class ShardDataModule(L.LightningDataModule):
    """Batches of images, token ids and metadata from ``{train,val,test}-*.tar`` shards.

    The model's name is config data here: it picks the tokenizer and the image size and
    normalisation, so the two always match the model being trained.

    ``shards`` is a folder made by ``convirt shards`` (splits and sizes from its manifest); a folder of
    tars without a manifest, as img2dataset writes them (splits from tar names ``train-*`` / ``val-*`` /
    ``test-*``, else all of it trains; samples counted from the tar headers); or the training shards as a
    brace pattern or URL (``/data/train-{000000..000099}.tar``,
    ``pipe:aws s3 cp s3://bucket/train-{000000..000099}.tar -``, ``s3://bucket/train-{...}.tar``
    through fsspec) with ``samples_per_epoch`` and optionally ``val_shards``. Shards without a manifest
    are read by their fields' extensions (``fields``; :mod:`convirt.data.foreign` says what it found, logged
    at setup).

    Args:
        shards: Folder with ``manifest.json`` and the shards, or a shard pattern / URL.
        model_name: Registry name of the model (linked from the model's ``model_name``).
        text_model_path: Local tokenizer folder (linked from the model).
        init: The model source the run starts from (linked from the model's ``init``): its
            tokenizer and preprocessing replace ``model_name``'s.
        batch_size: Samples per batch and per device.
        num_workers: Data-loader processes per device.
        shuffle_buffer: Samples held in the training shuffle buffer.
        sentence_drop: Probability of dropping each report sentence in training.
        image_size: Override of the model's input size.
        seed: Seed of the shard and sample shuffles.
        resampled: Draw training shards with replacement in every worker of every rank (any
            shard count feeds any number of ranks and workers; the epoch is ``samples_per_epoch``).
        samples_per_epoch: Training samples per epoch (default: the manifest's train count).
        val_shards: Validation shards as a pattern / URL (with a pattern ``shards``).
        text_sampling: Training text: ``sentences`` (drop and shuffle), ``sentence`` (one),
            ``section`` (findings or impression), ``whole``.
        horizontal_flip: Flip training images (off: reports name sides).
        blur_probability: Chance of a Gaussian blur per training image.
        strict: Fail on a corrupt sample instead of skipping and counting it.
        negative_texts: A shard folder (text-only shards serve) whose training-split reports are
            drawn as extra negatives of every training image (``clip`` loss; see
            :mod:`convirt.data.negatives`): normal reports where the pairs hold few normal studies.
        negative_labels: Draw only reports with one of these labels (``["No Finding"]``).
        negatives_per_batch: Reports drawn per training batch.
        fields: Shards without a manifest: the extension of each role, ``{image: png, text: caption,
            meta: json}`` (default: the first of jpg/jpeg/png/webp, txt/caption/text, json the first sample has).
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
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        val_shards: str | None = None,
        text_sampling: str = "sentences",
        horizontal_flip: bool = False,
        blur_probability: float = 0.2,
        strict: bool = False,
        negative_texts: str | None = None,
        negative_labels: list[str] | None = None,
        negatives_per_batch: int = 64,
        init: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.manifest: dict[str, Any] = {}
        self.tokenizer: Any = None
        self.foreign: dict[str, ForeignShards] = {}
        self.fields: Fields = CONVIRT_FIELDS

    def setup(self, stage: str | None = None) -> None:
        # The training stream resumes mid-epoch by itself (see EpochStream); Lightning, which
        # only knows stateful data loaders, would warn otherwise.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        # The module normalises compact batches in its on_after_batch_transfer, by design.
        warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
        hp: Any = self.hparams
        if is_shard_folder(hp.shards):
            if hp.fields:
                raise ValueError(f"data.shards {hp.shards!r} is a `convirt shards` folder: leave data.fields out")
            self.manifest = require_images(hp.shards)
        else:
            self.manifest = self._foreign_manifest(hp)
        if hp.text_sampling not in TEXT_SAMPLING:
            raise ValueError(f"unknown data.text_sampling {hp.text_sampling!r}; known: {', '.join(TEXT_SAMPLING)}")
        if hp.init:
            self.tokenizer, self.preprocess = initial_inputs(hp.init, hp.model_name, hp.text_model_path)
        else:
            self.tokenizer = create_tokenizer(hp.model_name, text_model_path=hp.text_model_path)
            self.preprocess = get_preprocess_cfg(hp.model_name)
        self.negative_pool = read_negative_texts(hp.negative_texts, hp.negative_labels) if hp.negative_texts else []
        if self.negative_pool and hp.negatives_per_batch <= 0:
            raise ValueError(f"data.negatives_per_batch must be positive, got {hp.negatives_per_batch}")

    def _foreign_manifest(self, hp: Any) -> dict[str, Any]:
        """Sample counts of shards without a manifest (their tars and fields kept), the inference logged.

        A folder is counted from its tar headers (``samples_per_epoch`` overrides it); a pattern or URL needs
        ``samples_per_epoch``.
        """
        fields = parse_fields(hp.fields)
        train = open_foreign_shards(hp.shards, fields)
        if hp.samples_per_epoch is None and not train.folder:
            raise ValueError(
                f"data.shards {hp.shards!r} is not a shard folder (no manifest.json): give "
                f"data.samples_per_epoch for a shard pattern or URL, or point at a folder of tars"
            )
        train.require("image", "training")
        train.require("text", "training")
        self.foreign, self.fields = {"train": train}, train.fields
        if hp.val_shards:
            self.foreign["val"] = open_foreign_shards(hp.val_shards, fields)
        elif train.splits is not None and train.splits["val"]:
            self.foreign["val"] = train
        samples = hp.samples_per_epoch or train.count("train")
        rank_zero_info(f"convirt: {train.describe('train', None if hp.samples_per_epoch else samples)}")
        return {
            "splits": {
                "train": {"samples": samples},
                "val": {"samples": 1 if "val" in self.foreign else 0},
                "test": {"samples": 1 if train.splits is not None and train.splits["test"] else 0},
            }
        }

    def _loader(self, split: str, train: bool) -> DataLoader:
        hp: Any = self.hparams
        world_size = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # Compact batches (8-bit, one channel): the module normalises them on its device.
        transform = image_transform_for(
            self.preprocess,
            train=train,
            size=hp.image_size,
            horizontal_flip=hp.horizontal_flip,
            blur_probability=hp.blur_probability,
            compact=True,
        )
        urls = self._urls(split)
        split_by_rank = train and not hp.resampled and world_size > 1 and len(urls) >= world_size
        if train and not hp.resampled and world_size > 1 and not split_by_rank:
            rank_zero_warn(
                f"{len(urls)} training shards for {world_size} ranks: every rank reads all of them (each sample "
                f"{world_size} times an epoch); write at least {world_size} shards (convirt shards --shard-size) "
                "or set --data.resampled true"
            )
        workers = hp.num_workers
        if train and not hp.resampled:
            # An endless training stream must give every worker at least one shard.
            workers = min(workers, len(urls) // world_size if split_by_rank else len(urls))
        text_transform: Any = (
            SentenceSampler(hp.sentence_drop, seed=hp.seed + rank, mode=hp.text_sampling) if train else clean_report
        )
        if not train:
            # Evaluation runs the whole split on every rank, so that no rank is left without batches.
            dataset = build_batches(
                urls,
                transform,
                self.tokenizer,
                hp.batch_size,
                text_transform=text_transform,
                seed=hp.seed + rank,
                strict=hp.strict,
                decode_size=self._decode_size(),
                fields=self.foreign[split].fields if split in self.foreign else self.fields,
            )
            return DataLoader(dataset, batch_size=None, num_workers=min(workers, len(urls)))

        pool, tokenizer = self.negative_pool, self.tokenizer

        def make_epoch(seed: int, skip_samples: int, worker: tuple[int, int]) -> Any:
            # Training splits shards between ranks when there are enough (or resamples them).
            batches = build_batches(
                urls,
                transform,
                tokenizer,
                hp.batch_size,
                text_transform=text_transform,
                train=True,
                shuffle_buffer=hp.shuffle_buffer,
                split_by_rank=(rank, world_size) if split_by_rank else False,
                seed=seed,
                skip_samples=skip_samples,
                resampled=hp.resampled,
                strict=hp.strict,
                decode_size=self._decode_size(),
                worker=worker,
                fields=self.fields,
            )
            if not pool:
                return batches
            # Seeded by the epoch (and rank), the worker and the batch's place in the worker's
            # stream: ranks and workers draw their own negatives, and a resumed epoch draws the
            # uninterrupted run's.
            return add_negatives(
                batches,
                pool,
                tokenizer,
                hp.negatives_per_batch,
                zlib.crc32(f"{seed}:{worker[0]}".encode()),
                start=skip_samples // hp.batch_size,
            )

        samples = int(hp.samples_per_epoch or self.manifest["splits"][split]["samples"])
        per_worker = batches_per_worker(samples, hp.batch_size, world_size, workers)
        start_epoch, skip = self._resume_position()
        if skip >= per_worker * max(1, workers):  # restored at the end of an epoch: start the next
            start_epoch, skip = start_epoch + 1, 0
        stream = EpochStream(
            make_epoch,
            per_worker,
            hp.batch_size,
            seed=hp.seed + rank,
            start_epoch=start_epoch,
            skip_batches=skip,
            workers=workers,
        )
        return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0)

    def _decode_size(self) -> int:
        """The model's input side: JPEGs need not be decoded at more than that."""
        return image_side(self.preprocess, self.hparams["image_size"])

    def _urls(self, split: str) -> list[str]:
        hp: Any = self.hparams
        if is_shard_folder(hp.shards):
            return shard_urls(hp.shards, split)
        if split != "train" and split not in self.foreign and self.foreign["train"].splits is None:
            what = (
                "val_shards for validation" if split == "val" else f"the {split} shards to `convirt embed`/`zeroshot`"
            )
            raise ValueError(f"no {split} shards: data.shards names no splits (no train-/val-/test- tars); give {what}")
        return self.foreign.get(split, self.foreign["train"]).urls(split)

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
