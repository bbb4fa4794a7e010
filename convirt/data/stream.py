"""Shards -> batches: a webdataset pipeline of image tensors, token ids and metadata."""

from __future__ import annotations

import io
import itertools
import logging
import math
import random
import zlib
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import webdataset as wds
from PIL import Image

from convirt.data import urls as _urls  # noqa: F401  (registers the fsspec openers with webdataset)
from convirt.data.fields import CONVIRT_FIELDS, Fields, checked_meta, pick_fields
from convirt.data.images import check_pixels
from convirt.data.schema import IMAGE, KEY, META, TEXT

logger = logging.getLogger(__name__)


def trim_padding(tokens: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """Drop the trailing token columns that are padding in every row of ``(B, L)`` ids.

    Text towers that mask padding give the same embeddings either way; short reports then
    cost a fraction of the full context length.
    """
    if pad_id is None or tokens.ndim != 2:
        return tokens
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1] if len(used) else tokens


def pad_id_of(tokenizer: Callable[..., torch.Tensor] | None) -> int | None:
    inner = getattr(tokenizer, "tokenizer", None)
    value = getattr(inner, "pad_token_id", None)
    return int(value) if value is not None else None


def text_group(text: str) -> int:
    """A stable id shared by reports that are the same after lower-casing and collapsing white space."""
    return zlib.crc32(" ".join(text.lower().split()).encode("utf-8"))


Sample = tuple[str, torch.Tensor, str, dict[str, Any], int]


class SkipCounter:
    """A webdataset error handler that skips a corrupt sample or shard and counts it.

    Each data-loader worker holds its own copy; the count since the last batch travels in the
    batch (``skipped``) so that the training loop can log it. With ``strict`` the first error is
    raised instead.
    """

    def __init__(self, strict: bool = False) -> None:
        self.strict, self.count, self.total = strict, 0, 0

    def __call__(self, error: Exception) -> bool:
        if self.strict:
            raise error
        self.count += 1
        self.total += 1
        if self.total <= 10:
            logger.warning("skipping a corrupt sample: %s", describe_error(error))
        return True

    def take(self) -> int:
        """The samples skipped since the last call."""
        count, self.count = self.count, 0
        return count


def describe_error(error: Exception) -> str:
    """One line for a skipped sample's error. webdataset's ``DecodingError`` says nothing itself: the
    sample's key, the field and the error it wraps (its cause) are what a user needs."""
    key, field = getattr(error, "key", None), getattr(error, "k", None)
    cause = error.__cause__ if not str(error) and error.__cause__ is not None else error
    where = f"sample {key!r}, field {field!r}: " if key is not None and field is not None else ""
    return f"{where}{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"


def collate_samples(
    samples: Sequence[Sample],
    tokenizer: Callable[..., torch.Tensor] | None,
    pad_id: int | None,
    skipped: SkipCounter | None = None,
) -> dict[str, Any]:
    """Stack ``(key, image, text, meta, text_group)`` samples into one batch dict (no ``image``
    when the samples have none, no token ids ``text`` without a tokenizer: an image-only model)."""
    keys, images, texts, metas, groups = zip(*samples)
    return {
        "key": list(keys),
        **({"image": torch.stack(list(images))} if images[0] is not None else {}),
        **({"text": trim_padding(tokenizer(list(texts)), pad_id)} if tokenizer is not None else {}),
        "raw_text": list(texts),
        "meta": list(metas),
        "text_group": torch.tensor(groups, dtype=torch.int64),
        "skipped": skipped.take() if skipped is not None else 0,
    }


class _Pipeline(wds.DataPipeline, wds.FluidInterface):  # type: ignore[misc]
    """A webdataset pipeline with the fluid methods (``shuffle``, ``decode``, ...), as WebDataset has."""


class _ShardRounds(torch.utils.data.IterableDataset):
    """Shard URLs without end, as webdataset's ``{"url": ...}`` records: round ``r`` is every shard
    once, in an order drawn from ``(seed, r)``. Rank and worker splitters take their share of
    each round (as they do of webdataset's shard list)."""

    def __init__(self, urls: list[str], seed: int) -> None:
        super().__init__()
        if not urls:
            raise ValueError("no shards to stream")
        self.urls, self.seed = urls, seed

    def __iter__(self) -> Any:
        for round_ in itertools.count():
            order = list(self.urls)
            random.Random(f"{self.seed}:{round_}").shuffle(order)
            yield from ({"url": url} for url in order)


def build_batches(
    urls: Sequence[str],
    image_transform: Callable[[Image.Image], torch.Tensor] | None,
    tokenizer: Callable[..., torch.Tensor] | None,
    batch_size: int,
    text_transform: Callable[[str], str] | None = None,
    train: bool = False,
    shuffle_buffer: int = 1000,
    split_by_rank: bool | tuple[int, int] = False,
    skip_keys: Container[str] | None = None,
    seed: int = 0,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    skip_samples: int = 0,
    resampled: bool = False,
    strict: bool = False,
    decode_size: int | None = None,
    worker: tuple[int, int] | None = None,
    fields: Fields = CONVIRT_FIELDS,
) -> wds.DataPipeline:
    """Build an iterable of batch dicts from shard paths.

    Each batch holds ``key`` (list), ``image`` ``(B, 3, H, W)``, ``text`` ``(B, L)`` token ids,
    ``raw_text`` (list), ``meta`` (list of dicts) and ``text_group`` ``(B,)`` (equal for
    reports that are the same after normalisation, before augmentation).

    Training streams endlessly over shuffled shards and samples; cut it into epochs with
    ``.with_epoch(batches_per_worker(...))`` so that every rank sees the same number of batches.
    Evaluation reads each sample once, in order. With ``split_by_rank`` each rank reads its own
    share of the shards (needs at least as many shards as ranks); otherwise every rank reads
    them all. With ``resampled`` (training), every worker of every rank draws shards with
    replacement from all of them, seeded by ``(seed, rank, worker)``: any number of shards feeds
    any number of ranks and workers. Samples whose key is in ``skip_keys`` are dropped before
    decoding (resuming); with ``keep``, only samples whose metadata dict it accepts are kept. A
    corrupt shard or sample is skipped and counted in the batches' ``skipped`` field, unless
    ``strict``. With ``image_transform=None`` the batches hold texts only (no ``image``): images
    are not decoded, and text-only shards can be read. With ``decode_size``, JPEGs are decoded at
    the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least that many pixels: a 512
    px image bound for a 224 px model input decodes at 256 px, in a third of the time. A
    training stream reads the share (and seeds) of data-loader worker ``worker = (id, count)``
    when given (:class:`EpochStream` names it), else of the process it runs in. ``fields`` names the
    extensions read as image, text and metadata (:mod:`convirt.data.fields`; by default those
    ``convirt shards`` writes); every other field is dropped undecoded.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    transform_text: Any = text_transform or (lambda text: text)
    with_sections = getattr(transform_text, "takes_sections", False)

    def text_of(report: str, meta: dict[str, Any]) -> str:
        return transform_text(report, meta.get("sections")) if with_sections else transform_text(report)

    def to_sample(sample: dict[str, Any]) -> Sample:
        meta = sample.get(META) or {}
        report = sample[TEXT]
        if image_transform is None:
            return sample[KEY], None, text_of(report, meta), meta, text_group(report)  # type: ignore[return-value]
        if not train:
            return sample[KEY], image_transform(sample[IMAGE]), text_of(report, meta), meta, text_group(report)
        sample_seed = zlib.crc32(f"{seed}:{sample[KEY]}".encode())
        reseed = getattr(transform_text, "reseed", None)
        if reseed is not None:
            reseed(sample_seed)
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
            # The CPU generator only: torch.manual_seed also queues lazy CUDA seeding, which records
            # a stack trace on every call (0.7 ms a sample, more than the decode).
            torch.default_generator.manual_seed(sample_seed)
            image = image_transform(sample[IMAGE])
        return sample[KEY], image, text_of(report, meta), meta, text_group(report)

    skipped = SkipCounter(strict)
    dataset: Any
    if resampled:
        if not train:
            raise ValueError("resampled streams are for training; evaluation reads each sample once")
        # Seeded by (rank * 1000 + worker, seed): reproducible, and different on every rank and worker.
        worker_seed = None if worker is None else partial(_worker_seed, worker[0])
        dataset = _Pipeline(
            wds.ResampledShards(list(urls), seed=seed, deterministic=True, worker_seed=worker_seed),
            wds.tarfile_to_samples(handler=skipped),
        )
    elif train:
        # Endless: every pass over the shards in its own seeded order. (webdataset 1.0's
        # WebDataset takes a `repeat` argument and ignores it: its training stream ended with the
        # shards, short of the batches an epoch promised, so that validation never came.)
        nodesplitter = _node_splitter(split_by_rank)
        workersplitter = wds.split_by_worker if worker is None else partial(_worker_share, *worker)
        dataset = _Pipeline(
            _ShardRounds(list(urls), seed), nodesplitter, workersplitter, wds.tarfile_to_samples(handler=skipped)
        )
    else:
        dataset = wds.WebDataset(
            list(urls),
            handler=skipped,
            shardshuffle=False,
            nodesplitter=_node_splitter(split_by_rank),
            workersplitter=wds.split_by_worker,
            empty_check=False,
        )
    if train:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    if skip_samples > 0:
        dataset = dataset.compose(lambda source: itertools.islice(source, skip_samples, None))
    if skip_keys:
        dataset = dataset.select(lambda sample: sample[KEY] not in skip_keys)
    # Only the image (not for texts), text and metadata, under the schema's names; a truncated shard ends in
    # a partial sample, which the handler skips and counts.
    dataset = dataset.map(partial(pick_fields, fields=fields, image=image_transform is not None), handler=skipped)
    dataset = dataset.decode(partial(decode_grayscale, size=decode_size), handler=skipped)
    dataset = dataset.map(checked_meta, handler=skipped)
    if keep is not None:
        dataset = dataset.select(lambda sample: keep(sample.get(META) or {}))
    dataset = dataset.map(to_sample)
    pad_id = pad_id_of(tokenizer)
    collate = partial(collate_samples, tokenizer=tokenizer, pad_id=pad_id, skipped=skipped)
    dataset = dataset.batched(batch_size, collation_fn=collate, partial=not train)
    if not train:
        dataset = dataset.compose(partial(_count_trailing_skips, skipped=skipped))
    return dataset


def _count_trailing_skips(batches: Iterable[dict[str, Any]], skipped: SkipCounter) -> Iterator[dict[str, Any]]:
    """The batches, one held back, so that what was skipped after the last batch was made (a
    corrupt last sample or shard) is counted in the last batch's ``skipped``."""
    previous = None
    for batch in batches:
        if previous is not None:
            yield previous
        previous = batch
    if previous is not None:
        previous["skipped"] += skipped.take()
        yield previous


def decode_grayscale(key: str, data: bytes, size: int | None = None) -> Image.Image | None:
    """webdataset decoder: image fields -> 8-bit grayscale PIL images (JPEG at a reduced DCT scale
    when ``size`` allows); other fields are left to the default decoders."""
    extension = key.rsplit(".", 1)[-1].lower()
    if extension not in ("jpg", "jpeg", "png", "webp"):
        return None
    image = Image.open(io.BytesIO(data))
    check_pixels(*image.size)  # from the header, before a pixel is decoded
    if size and image.format == "JPEG":
        image.draft("L", (size, size))
    image.load()
    return image.convert("L")


def _node_splitter(split_by_rank: bool | tuple[int, int]) -> Callable[[Any], Any]:
    """Every shard (``False``); the share of rank ``r`` of ``n`` (``(r, n)``: the launcher's ranks as the
    trainer knows them, before or without a process group); or webdataset's split by node (``True``:
    ranks from ``RANK`` / ``WORLD_SIZE`` or the process group)."""
    if isinstance(split_by_rank, tuple):
        rank, world_size = split_by_rank
        return lambda urls: itertools.islice(urls, rank, None, max(1, world_size))
    return wds.split_by_node if split_by_rank else _all_shards


def _all_shards(urls: Any) -> Any:
    """Node splitter that gives every rank every shard."""
    return urls


def _worker_share(worker: int, workers: int, urls: Any) -> Any:
    """Worker splitter for the share of data-loader worker ``worker`` of ``workers`` (the one
    :class:`EpochStream` names, which a resumed epoch may map to another process)."""
    return itertools.islice(urls, worker, None, max(1, workers))


def _worker_seed(worker: int) -> int:
    """webdataset's per-worker seed (rank * 1000 + worker) for the worker :class:`EpochStream` names."""
    rank = (
        torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    )
    return rank * 1000 + worker


def batches_per_worker(samples: int, batch_size: int, world_size: int = 1, workers: int = 0) -> int:
    """Batches each data-loader worker yields per epoch so that one epoch covers ``samples`` once."""
    total = max(1, samples // (batch_size * max(1, world_size)))
    return max(1, math.ceil(total / max(1, workers)))


class EpochStream(torch.utils.data.IterableDataset):
    """The training stream, one epoch per ``iter()``: epoch ``e`` is shuffled with seed
    ``(seed, e)``, and a stream made to resume mid-epoch skips the batches already trained on.

    Every call to ``iter()`` (one per epoch, in each data-loader worker) starts the next epoch,
    counting from ``start_epoch``; the first one skips ``skip_batches`` global batches (spread
    over the workers in the data loader's round-robin order). A fresh data loader takes its
    first batch from process 0, while the next batch of the interrupted epoch belonged to worker
    ``skip_batches % workers``: so in the resumed epoch, process ``p`` plays worker
    ``(p + skip_batches) % workers`` (its shards, seeds and place in the order). Together with per-sample
    augmentation seeds this makes a run resumed from a mid-epoch checkpoint see exactly the
    batches the uninterrupted run saw.

    Args:
        make_epoch: ``(seed, skip_samples, (worker, workers)) -> iterable of batches`` (endless)
            for one worker: the worker whose share of the shards (and seeds) to read.
        batches_per_worker: Batches each worker yields per epoch.
        batch_size: Samples per batch.
        seed: Base seed.
        start_epoch: The epoch of the first ``iter()``.
        skip_batches: Global batches of the first epoch already consumed.
    """

    def __init__(
        self,
        make_epoch: Callable[[int, int, tuple[int, int]], Any],
        batches_per_worker: int,
        batch_size: int,
        seed: int = 0,
        start_epoch: int = 0,
        skip_batches: int = 0,
        workers: int = 0,
    ) -> None:
        super().__init__()
        self.make_epoch, self.per_worker, self.batch_size = make_epoch, batches_per_worker, batch_size
        self.seed, self.start_epoch, self.skip_batches = seed, start_epoch, skip_batches
        self.workers = max(1, workers)
        self.calls = 0

    def __len__(self) -> int:
        return self.per_worker * self.workers

    def __iter__(self) -> Any:
        epoch = self.start_epoch + self.calls
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip = self.skip_batches if self.calls == 0 else 0
        self.calls += 1
        worker = (worker + skip) % workers  # the worker this process plays (itself, but in a resumed epoch)
        # The interrupted epoch took batch i from worker i % workers: this worker's share of the skip.
        mine = max(0, (skip - worker + workers - 1) // workers)
        epoch_seed = zlib.crc32(f"{self.seed}:{epoch}".encode())
        return itertools.islice(
            self.make_epoch(epoch_seed, mine * self.batch_size, (worker, workers)), self.per_worker - mine
        )
