"""Image and text transforms applied while streaming samples to the model."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

_SECTION_HEADER = re.compile(r"\b[A-Z][A-Z ]{2,}:\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def build_image_transform(
    size: int, mean: Sequence[float], std: Sequence[float], train: bool
) -> Callable[[Image.Image], torch.Tensor]:
    """Grayscale PIL image -> normalised ``(3, size, size)`` float tensor.

    Training adds a mild random resized crop, rotation and brightness/contrast jitter. There is
    no horizontal flip: reports name sides ("left pleural effusion"), and a flip would make
    them wrong.
    """
    if train:
        spatial: list[Callable[..., object]] = [
            T.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1)),
            T.RandomAffine(degrees=5, translate=(0.02, 0.02)),
            T.ColorJitter(brightness=0.2, contrast=0.2),
        ]
    else:
        spatial = [T.Resize(size), T.CenterCrop(size)]
    pipeline = T.Compose(
        [T.Grayscale(1), *spatial, T.ToTensor(), T.Lambda(lambda x: x.expand(3, -1, -1)), T.Normalize(mean, std)]
    )
    return pipeline  # type: ignore[no-any-return]


def image_transform_for(
    preprocess: dict[str, Any], train: bool, size: int | None = None
) -> Callable[[Image.Image], torch.Tensor]:
    """The image transform of a model's preprocessing config (``size``, ``mean``, ``std``)."""
    configured = preprocess["size"]
    side = size or int(configured if isinstance(configured, int) else configured[0])
    return build_image_transform(side, preprocess["mean"], preprocess["std"], train=train)


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences, with section headers (``FINDINGS:``) removed."""
    text = _SECTION_HEADER.sub(" ", text)
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


class SentenceSampler:
    """Training text augmentation: shuffle a report's sentences and drop some of them.

    ConVIRT samples sentences from the report; keeping several at random, in random order,
    makes the text tower robust to report structure and to short prompts at test time.
    """

    def __init__(self, drop_probability: float = 0.3, seed: int | None = None) -> None:
        if not 0 <= drop_probability < 1:
            raise ValueError(f"drop_probability must be in [0, 1), got {drop_probability}")
        self.drop_probability = drop_probability
        self.random = random.Random(seed)

    def reseed(self, seed: int) -> None:
        """Make the next call's choices a function of ``seed`` (per-sample seeding: exact resume)."""
        self.random.seed(seed)

    def __call__(self, text: str) -> str:
        sentences = split_sentences(text)
        if len(sentences) <= 1:
            return " ".join(sentences) or text
        kept = [s for s in sentences if self.random.random() >= self.drop_probability]
        if not kept:
            kept = [self.random.choice(sentences)]
        self.random.shuffle(kept)
        return " ".join(kept)


def clean_report(text: str) -> str:
    """Evaluation text: the report's sentences, without section headers."""
    return " ".join(split_sentences(text)) or text.strip()
