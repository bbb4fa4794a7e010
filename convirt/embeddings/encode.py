"""Embed images and texts in batches; the model is used only through ``encode_image`` / ``encode_text``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


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


MODALITIES = ("image", "text")


def encode_batch(
    model: Any, batch: dict[str, Any], device: str | torch.device = "cpu", modality: str = "image"
) -> np.ndarray:
    """Normalised ``(B, D)`` float32 features of one batch dict's images (or token ids).

    Normalised in float32 after the model, so that the vectors are unit length to float32
    precision also when the model ran under bf16 / fp16 autocast.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
    with torch.no_grad():
        if modality == "image":
            features = model.encode_image(batch["image"].to(device))
        else:
            features = model.encode_text(batch["text"].to(device))
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def batch_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """One metadata row per sample of a batch dict: ``key``, the sample's metadata, ``text``."""
    texts = batch.get("raw_text", [""] * len(batch["key"]))
    return [{"key": key, **meta, "text": text} for key, meta, text in zip(batch["key"], batch["meta"], texts)]


@torch.no_grad()
def embed_batches(
    model: Any, batches: Iterable[dict[str, Any]], device: str | torch.device = "cpu", progress: bool = True
) -> EmbeddingOutput:
    """Embed the images of batch dicts (as :func:`convirt.data.stream.build_batches` makes them).

    ``model`` is anything with ``encode_image(images, normalize=True)``.

    Raises:
        ValueError: No batch was given.
    """
    from tqdm.auto import tqdm

    parts: list[np.ndarray] = []
    keys: list[str] = []
    meta: list[dict[str, Any]] = []
    texts: list[str] = []
    skipped = 0
    for batch in tqdm(batches, desc="embed", unit="batch", disable=not progress):
        skipped += int(batch.get("skipped", 0))
        parts.append(encode_batch(model, batch, device))
        keys.extend(batch["key"])
        meta.extend(batch["meta"])
        texts.extend(row["text"] for row in batch_rows(batch))
    if not parts:
        raise ValueError(
            "no images to embed: the data is empty" + (f" ({skipped} corrupt samples skipped)" if skipped else "")
        )
    return EmbeddingOutput(np.concatenate(parts).astype(np.float32), keys, meta, texts, skipped)


@torch.no_grad()
def embed_texts(
    model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Normalised text embeddings ``(len(texts), D)``."""
    if not texts:
        raise ValueError("no texts to embed")
    parts = [
        model.encode_text(tokenizer(list(texts[i : i + batch_size])).to(device), normalize=True).float().cpu()
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(parts)


@torch.no_grad()
def embed_image_files(
    model: Any,
    paths: Sequence[str | os.PathLike[str]],
    preprocess_cfg: dict[str, Any],
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Normalised ``(len(paths), D)`` float32 embeddings of image files (PNG, JPEG, DICOM), each
    read as a grey radiograph and preprocessed as the model's evaluation expects.

    Raises:
        OSError, ValueError: A file cannot be read as an image.
    """
    from convirt.data.images import load_grayscale
    from convirt.data.transforms import image_transform_for

    transform = image_transform_for(preprocess_cfg, train=False)
    images = torch.stack([transform(load_grayscale(str(path))) for path in paths])
    return encode_batch(model, {"image": images}, device)
