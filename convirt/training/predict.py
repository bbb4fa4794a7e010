"""Embedding through Lightning predict: the same code on one CPU, one GPU or many DDP ranks.

Each rank encodes its share of the batches and hands the features to its own sink (for
``convirt embed``, a part writer: rank ``r`` writes ``part-r-*``). Predictions are not kept in
memory (``return_predictions=False``), so memory stays flat in the number of images.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from convirt._hardware import choose_precision
from convirt.embeddings.encode import MODALITIES, encode_batch


class FeatureSink(Protocol):
    """Where one rank's features go."""

    def add_batch(self, features: np.ndarray, batch: dict[str, Any]) -> None:
        """Take ``(B, D)`` features with the batch dict they came from."""

    def close(self) -> None:
        """Write what is left."""


class EncodeModule(pl.LightningModule):
    """Wraps a model with ``encode_image`` / ``encode_text``; ``predict_step`` returns the batch's
    normalised ``(B, D)`` float32 features as an array (:func:`convirt.embeddings.encode.encode_batch`)."""

    def __init__(self, model: torch.nn.Module, modality: str = "image") -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
        self.model = model
        self.modality = modality

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> np.ndarray:
        return encode_batch(self.model, batch, self.device, self.modality)


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


def _resolved_precision(precision: str | None, accelerator: str) -> str:
    """``precision``, or the one chosen for the device (logged) when ``None``."""
    if precision is not None:
        return precision
    choice = choose_precision(accelerator)
    rank_zero_info(f"convirt: precision {choice.precision} ({choice.reason}; --precision chooses another)")
    return choice.precision


def predict_features(
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    open_sink: Callable[[int], FeatureSink],
    modality: str = "image",
    accelerator: str = "auto",
    devices: int | str = 1,
    precision: str | None = None,
    progress: bool = True,
) -> None:
    """Encode every batch on ``devices`` processes; each rank's features go to ``open_sink(rank)``.

    Args:
        model: Has ``encode_image`` / ``encode_text``.
        batches: A data loader of batch dicts. With several devices a map-style dataset is split
            across ranks without repeats; an iterable one must split itself (shards by rank).
        open_sink: Called once per rank with the rank.
        modality: ``image`` or ``text``.
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``).
        devices: Number of processes (DDP when more than one).
        precision: Lightning precision; ``None`` chooses for the device
            (:func:`convirt._hardware.choose_precision`: bf16 where it is native, else fp16 on
            CUDA, else fp32) and logs the choice.
        progress: Show a progress bar.
    """
    many = devices not in (1, "1")
    precision = _resolved_precision(precision, accelerator)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy="ddp" if many else "auto",
        precision=precision,  # type: ignore[arg-type]
        callbacks=[SinkWriter(open_sink)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        # Batch indices are only known for samplers; the sink does not need them.
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
        trainer.predict(
            EncodeModule(model, modality).eval(),
            dataloaders=batches,  # type: ignore[arg-type]
            return_predictions=False,
        )


def embed_to_folder(
    model: torch.nn.Module,
    make_batches: Callable[[set[str]], Iterable[dict[str, Any]]],
    output: str | os.PathLike[str],
    fingerprint: dict[str, Any] | None = None,
    modality: str = "image",
    chunk_size: int = 4096,
    dtype: str = "float32",
    accelerator: str = "auto",
    devices: int | str = 1,
    precision: str | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Embed into an embedding folder (:mod:`convirt.embeddings.store`), resuming what is there.

    Each rank writes its own parts of ``chunk_size`` vectors, so a run killed at any point
    carries on from its last complete part when run again with the same arguments.

    Args:
        model: Has ``encode_image`` / ``encode_text``.
        make_batches: Called with the keys already in the folder; returns the batches of the
            others (e.g. :func:`convirt.data.inputs.build_eval_batches` with ``skip_keys``).
        output: The folder.
        fingerprint: The model's (:func:`convirt.models.model_fingerprint`), checked against the
            folder's when resuming and stored with ``modality``.
        modality, chunk_size, dtype: What to embed, vectors per part, ``float32`` or ``float16``.
        accelerator, devices, precision, progress: As :func:`predict_features`.

    Returns:
        The vectors the folder holds, and the corrupt samples this run skipped.

    Raises:
        ValueError: The folder holds another model's or modality's vectors.
    """
    from functools import partial

    from convirt.embeddings.store import DTYPES, PartWriter, close_embedding_folder, open_embedding_folder

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    precision = _resolved_precision(precision, accelerator)
    # The precision is part of what made the vectors: recorded, and a resume must use the same.
    info = {**(fingerprint or {}), "modality": modality, "precision": precision}
    done = open_embedding_folder(output, info)
    predict_features(
        model,
        make_batches(done),
        partial(PartWriter, output, chunk_size=chunk_size, dtype=dtype),
        modality=modality,
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        progress=progress,
    )
    return close_embedding_folder(output, info)
