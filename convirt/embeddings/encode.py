"""The one way vectors are made: images and texts through ``encode_image`` / ``encode_text``.

Every command and the service embed through an :class:`Encoder` (``convirt embed``, ``zeroshot``,
``probe``, ``bench``, ``index query``, ``convirt serve``, and ``convirt embed`` on several devices,
whose Lightning ranks each call one), so the same model gives the same vectors whichever computed
them: the same precision policy (:mod:`convirt.embeddings.precision`), images laid out
channels-last (oneDNN's and cuDNN's fastest convolution layout; the same function of the image),
texts without the trailing padding every row shares (text towers mask it), features normalised in
float32 after the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from convirt._embedding_space import AGREEMENT
from convirt.data.stream import pad_id_of, trim_padding
from convirt.embeddings.precision import DTYPES, EmbeddingPrecision, agreement, parse_precision, planned_precision

MODALITIES = ("image", "text")


@dataclass
class EmbeddingOutput:
    """Image embeddings with the keys and metadata of their samples.

    Attributes:
        embeddings: ``(N, D)`` float32, L2-normalised.
        keys: Sample keys, length ``N``.
        meta: Sample metadata dicts, length ``N``.
        texts: Report texts, length ``N``.
        skipped: Corrupt samples the stream skipped (counted in its batches' ``skipped``).
    """

    embeddings: np.ndarray
    keys: list[str] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    skipped: int = 0


class Encoder:
    """Normalised float32 vectors of a model's images or texts, made the one way.

    The model is used only through ``encode_image`` / ``encode_text``; inputs go to the device of
    its parameters (the CPU for a model without any). The precision of each modality is settled on
    its first batch (:func:`convirt.embeddings.precision.planned_precision`): float32 on CPUs; on a
    CUDA device a reduced precision is kept only where that batch agrees with float32.

    Args:
        model: Has ``encode_image`` (and ``encode_text`` for texts).
        precision: ``auto`` / ``None`` (the policy), or a precision name that is then used as asked
            (its agreement with float32 is still measured on the first batch and recorded).
        pad_id: The tokenizer's padding id (trailing padding columns are dropped); ``None``: keep all.

    Attributes:
        requested: The precision asked for (``None``: the policy).
        settled: Each modality's precision, once its first batch has settled it.
        combine_agreement: How the least cosine of a first batch is combined across processes
            (identity here; a data-parallel run sets the least over its ranks, so all keep or drop
            the reduced precision together).
        on_settle: Called with ``(modality, precision)`` when a first batch settles it, before its
            vectors are returned (the embedding folder checks and records it there).

    Raises:
        ValueError: An unknown precision name.
    """

    def __init__(self, model: Any, precision: str | None = None, pad_id: int | None = None) -> None:
        self.model = model
        self.requested = parse_precision(precision)
        self.pad_id = pad_id
        self.settled: dict[str, EmbeddingPrecision] = {}
        self.combine_agreement: Callable[[float], float] = lambda value: value
        self.on_settle: Callable[[str, EmbeddingPrecision], None] | None = None

    @property
    def device(self) -> torch.device:
        parameters = getattr(self.model, "parameters", None)
        first = next(iter(parameters()), None) if callable(parameters) else None
        return first.device if first is not None else torch.device("cpu")

    def precision(self, modality: str = "image") -> EmbeddingPrecision:
        """The precision this modality's vectors are made at (the plan until its first batch settles it)."""
        return self.settled.get(modality) or planned_precision(self.device, self.requested)

    def _forward(self, inputs: torch.Tensor, modality: str, dtype: str) -> torch.Tensor:
        function = self.model.encode_image if modality == "image" else self.model.encode_text
        # float32 also inside a caller's autocast (a training step's validation hook).
        with torch.autocast(self.device.type, dtype=DTYPES[dtype], enabled=dtype != "float32"):
            return function(inputs)

    @torch.no_grad()
    def encode(self, inputs: torch.Tensor, modality: str = "image") -> np.ndarray:
        """``(B, D)`` normalised float32 vectors of ``(B, 3, H, W)`` preprocessed images or ``(B, L)`` token ids."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
        if modality == "image":
            inputs = inputs.to(self.device)
            if inputs.ndim == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
        else:
            inputs = trim_padding(inputs, self.pad_id).to(self.device)
        precision = self.settled.get(modality)
        if precision is None:
            features = self._first_batch(inputs, modality)
        else:
            features = self._forward(inputs, modality, precision.dtype)
        # Normalised in float32 after the model: unit length to float32 precision whatever ran inside.
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def _first_batch(self, inputs: torch.Tensor, modality: str) -> torch.Tensor:
        plan = planned_precision(self.device, self.requested)
        if not plan.reduced:
            features, made = self._forward(inputs, modality, "float32"), plan
        else:
            reduced = self._forward(inputs, modality, plan.dtype)
            full = self._forward(inputs, modality, "float32")
            least = self.combine_agreement(agreement(reduced, full))
            if plan.reason == "requested" or least >= AGREEMENT:
                features, made = reduced, EmbeddingPrecision(plan.dtype, plan.device, least, plan.reason)
            else:
                why = (
                    f"{plan.dtype} gave a first-batch vector at cosine {least:.4f} to float32 (< {AGREEMENT}): float32"
                )
                features, made = full, EmbeddingPrecision("float32", plan.device, None, why)
        if self.on_settle is not None:
            self.on_settle(modality, made)
        self.settled[modality] = made
        return features

    def images(self, images: torch.Tensor) -> np.ndarray:
        """``(B, D)`` vectors of ``(B, 3, H, W)`` preprocessed images."""
        return self.encode(images, "image")

    def texts(self, tokens: torch.Tensor) -> np.ndarray:
        """``(B, D)`` vectors of ``(B, L)`` token ids."""
        return self.encode(tokens, "text")

    def batch(self, batch: dict[str, Any], modality: str = "image") -> np.ndarray:
        """``(B, D)`` vectors of a batch dict's ``image`` (or ``text``) field."""
        return self.encode(batch["image" if modality == "image" else "text"], modality)


def as_encoder(model: Any, tokenizer: Any = None) -> Encoder:
    """``model`` itself when it is an :class:`Encoder`, else one over it (with the tokenizer's padding id)."""
    return model if isinstance(model, Encoder) else Encoder(model, pad_id=pad_id_of(tokenizer))


def batch_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """One metadata row per sample of a batch dict: ``key``, the sample's metadata, ``text``."""
    texts = batch.get("raw_text", [""] * len(batch["key"]))
    return [{"key": key, **meta, "text": text} for key, meta, text in zip(batch["key"], batch["meta"], texts)]


def embed_batches(model: Any, batches: Iterable[dict[str, Any]], progress: bool = True) -> EmbeddingOutput:
    """Embed the images of batch dicts (as :func:`convirt.data.stream.build_batches` makes them).

    Args:
        model: An :class:`Encoder`, or anything with ``encode_image``.

    Raises:
        ValueError: No batch was given.
    """
    from tqdm.auto import tqdm

    encoder = as_encoder(model)
    parts: list[np.ndarray] = []
    keys: list[str] = []
    meta: list[dict[str, Any]] = []
    texts: list[str] = []
    skipped = 0
    for batch in tqdm(batches, desc="embed", unit="batch", disable=not progress):
        skipped += int(batch.get("skipped", 0))
        parts.append(encoder.images(batch["image"]))
        keys.extend(batch["key"])
        meta.extend(batch["meta"])
        texts.extend(row["text"] for row in batch_rows(batch))
    if not parts:
        raise ValueError(
            "no images to embed: the data is empty" + (f" ({skipped} corrupt samples skipped)" if skipped else "")
        )
    return EmbeddingOutput(np.concatenate(parts).astype(np.float32), keys, meta, texts, skipped)


def embed_texts(
    model: Any, tokenizer: Callable[[list[str]], torch.Tensor], texts: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """Normalised text embeddings ``(len(texts), D)`` (float32, on the CPU).

    Args:
        model: An :class:`Encoder`, or anything with ``encode_text``.
    """
    if not texts:
        raise ValueError("no texts to embed")
    encoder = as_encoder(model, tokenizer)
    parts = [encoder.texts(tokenizer(list(texts[i : i + batch_size]))) for i in range(0, len(texts), batch_size)]
    return torch.from_numpy(np.concatenate(parts))


def embed_image_files(
    model: Any, paths: Sequence[str | os.PathLike[str]], preprocess_cfg: dict[str, Any]
) -> np.ndarray:
    """Normalised ``(len(paths), D)`` float32 embeddings of image files (PNG, JPEG, DICOM), each
    read as a grey radiograph and preprocessed as the model's evaluation expects.

    Args:
        model: An :class:`Encoder`, or anything with ``encode_image``.

    Raises:
        OSError, ValueError: A file cannot be read as an image.
    """
    from convirt.data.images import load_grayscale
    from convirt.data.transforms import image_transform_for

    transform = image_transform_for(preprocess_cfg, train=False)
    images = torch.stack([transform(load_grayscale(str(path))) for path in paths])
    return as_encoder(model).images(images)
