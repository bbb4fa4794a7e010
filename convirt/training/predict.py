"""Embedding on several devices: the ranks of a Lightning predict run each encode their share.

The vectors are made the one way (:class:`convirt.embeddings.encode.Encoder`, the same as in one
process); Lightning only places the model, splits the batches across DDP ranks and launches them.
Its own precision plugin stays at ``32-true``: the encoder applies the embedding precision policy,
and the ranks agree on it (the least first-batch cosine over all ranks decides for all). Each rank
hands its features to its own sink (for ``convirt embed``, a part writer: rank ``r`` writes
``part-r-*``). Where a reduced precision is tried (CUDA, or asked for), the ranks meet on their first
batch; a rank without one (fewer shards than ranks) meets them at the end with a value that does not count.
Predictions are not kept in memory (``return_predictions=False``), so memory stays flat in the
number of images.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, IterableDataset

from convirt.embeddings.encode import MODALITIES, Encoder
from convirt.embeddings.precision import planned_precision
from convirt.training.launch import starting_lightning


class FeatureSink(Protocol):
    """Where one rank's features go."""

    def add_batch(self, features: np.ndarray, batch: dict[str, Any]) -> None:
        """Take ``(B, D)`` features with the batch dict they came from."""

    def close(self) -> None:
        """Write what is left."""


class EncodeModule(pl.LightningModule):
    """An :class:`~convirt.embeddings.encode.Encoder` as a LightningModule: ``predict_step`` returns the
    batch's ``(B, D)`` float32 vectors; the first-batch precision check is agreed across ranks."""

    def __init__(self, encoder: Encoder, modality: str = "image") -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
        self.model = encoder.model  # a submodule, so that Lightning moves it to the rank's device
        self.encoder = encoder
        self.modality = modality
        self._met = False  # the agreement met without a batch of this rank's own
        # A rank may have no row (fewer left than ranks): it skips the loop and records its run (encode_on_devices).
        self.allow_zero_length_dataloader_with_multiple_devices = True
        encoder.combine_agreement = self._least_over_ranks

    def _least_over_ranks(self, value: float) -> float:
        if self.trainer.world_size == 1:
            return value
        gathered = self.all_gather(torch.tensor(value, dtype=torch.float64, device=self.device))
        return float(gathered.min())  # type: ignore[union-attr]

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> np.ndarray:
        return self.encoder.batch(batch, self.modality)

    def on_predict_epoch_end(self) -> None:
        self.meet_the_agreement()

    def meet_the_agreement(self) -> None:
        """A rank with nothing to encode (fewer shards or rows than ranks, or all done before a resume)
        still meets the others at their first batch's agreement, a collective they would wait on for ever."""
        plan = planned_precision(self.encoder.device, self.encoder.requested)
        unmet = self.modality not in self.encoder.settled and not self._met
        if self.trainer.world_size > 1 and unmet and plan.reduced:
            self._least_over_ranks(math.inf)  # the least over ranks ignores it
            self._met = True


class SinkWriter(BasePredictionWriter):
    """Hands each predicted batch to this rank's sink, made by ``open_sink(rank)`` at start."""

    def __init__(self, open_sink: Callable[[int], FeatureSink]) -> None:
        super().__init__(write_interval="batch")
        self.open_sink = open_sink
        self.sink: FeatureSink | None = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.sink = self.open_sink(trainer.global_rank)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        assert self.sink is not None
        self.sink.add_batch(prediction, batch)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sink is not None:
            self.sink.close()


def encode_on_devices(
    encoder: Encoder,
    batches: Iterable[dict[str, Any]],
    open_sink: Callable[[int], FeatureSink],
    modality: str = "image",
    progress: bool = True,
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
) -> int:
    """Encode every batch on ``devices`` processes; each rank's features go to ``open_sink(rank)``.

    The runner that :func:`convirt.embeddings.run.embed_to_folder` takes as ``encode_all`` (bind
    ``accelerator`` and ``devices``).

    Args:
        encoder: Makes the vectors (its model is moved to each rank's device).
        batches: A data loader of batch dicts. With several devices a map-style dataset is split
            across ranks without repeats (rows ``rank::world_size``, any rank possibly left with none);
            an iterable one must split itself (shards by rank).
        open_sink: Called once per rank with the rank.
        modality: ``image`` or ``text``.
        progress: Show a progress bar.
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        devices: Number of processes per node (DDP when more than one in all).
        num_nodes: Nodes, each started by its own launcher (torchrun, srun), which Lightning detects.

    Returns:
        The number of ranks, each of which closed its sink before this returns.
    """
    writer, module = SinkWriter(open_sink), EncodeModule(encoder, modality).eval()
    trainer = _trainer(accelerator, devices, num_nodes, [writer], progress)
    with warnings.catch_warnings():
        # Batch indices are only known for samplers; the sink does not need them.
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
        loader = _rank_share(batches, trainer.global_rank, trainer.world_size)
        trainer.predict(module, dataloaders=loader, return_predictions=False)  # type: ignore[arg-type]
    if writer.sink is None:  # Lightning skips a loader of no batches (a sized one): none of the hooks ran
        module.meet_the_agreement()
        open_sink(trainer.global_rank).close()  # its record that it ran, with nothing to add
    if trainer.world_size > 1:  # every rank's parts are on disk before any rank counts the folder
        trainer.strategy.barrier("convirt-embed-done")
    return int(trainer.world_size)


def _rank_share(batches: Iterable[dict[str, Any]], rank: int, world_size: int) -> Iterable[dict[str, Any]]:
    """The loader of rank ``rank``'s rows ``rank::world_size`` of a map-style loader (as Lightning's own
    unrepeated sampler cuts them, which refuses a rank left without a row: a resume with fewer rows left
    than ranks); other batches as they are."""
    if world_size <= 1 or not isinstance(batches, DataLoader) or isinstance(batches.dataset, IterableDataset):
        return batches
    rows = list(range(rank, len(batches.dataset), world_size))  # type: ignore[arg-type]
    return DataLoader(
        batches.dataset,
        batch_size=batches.batch_size,
        sampler=rows,
        num_workers=batches.num_workers,
        collate_fn=batches.collate_fn,
    )


def launched_rank(accelerator: str = "auto", devices: int | str = 1, num_nodes: int = 1) -> tuple[int, int]:
    """This process's global rank and the world size of a run on ``num_nodes`` x ``devices``, as
    Lightning finds them (torchrun's or srun's environment, or the ranks its own launcher starts), before
    any process group exists: what each rank's share of the shards is cut by (``split_by_rank``).

    Read from the environment by Lightning rather than by webdataset at iteration time: webdataset
    reads ``RANK`` / ``WORLD_SIZE``, which srun does not set, or the process group, which a data-loader
    worker started by spawn or forkserver does not have; either way a rank would read every shard.
    """
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)  # the device lines are said once, by the run itself
    try:
        trainer = _trainer(accelerator, devices, num_nodes, [], progress=False)
    finally:
        logger.setLevel(level)
    return int(trainer.global_rank), int(trainer.world_size)


def _trainer(
    accelerator: str, devices: int | str, num_nodes: int, callbacks: list[pl.Callback], progress: bool
) -> pl.Trainer:
    many = devices not in (1, "1") or num_nodes > 1
    with starting_lightning():
        return pl.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            strategy="ddp" if many else "auto",
            precision="32-true",  # the encoder applies the embedding precision policy itself
            callbacks=callbacks,
            use_distributed_sampler=False,  # a map-style loader is cut by _rank_share; shards by their rank
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
        )
