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
    size: int, mean: Sequence[float], std: Sequence[float], train: bool, horizontal_flip: bool = False,
    blur_probability: float = 0.2,
) -> Callable[[Image.Image], torch.Tensor]:
    """Grayscale PIL image -> normalised ``(3, size, size)`` float tensor.

    Training follows ConVIRT's image augmentation: a random resized crop, a small affine
    transform, brightness/contrast jitter and, now and then, a Gaussian blur. Horizontal flips
    are off by default: reports name sides ("left pleural effusion"), and a flip would make them
    wrong. The image stays one channel until the last step, where it is repeated to the three
    the model expects and normalised with the model's own mean and std.
    """
    if train:
        spatial: list[Callable[..., object]] = [
            T.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1)),
            T.RandomAffine(degrees=5, translate=(0.02, 0.02), scale=(0.95, 1.05)),
            T.ColorJitter(brightness=0.2, contrast=0.2),
            T.RandomApply([T.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=blur_probability),
        ]
        if horizontal_flip:
            spatial.append(T.RandomHorizontalFlip())
    else:
        spatial = [T.Resize(size), T.CenterCrop(size)]
    pipeline = T.Compose(
        [T.Grayscale(1), *spatial, T.ToTensor(), T.Lambda(lambda x: x.expand(3, -1, -1)), T.Normalize(mean, std)]
    )
    return pipeline  # type: ignore[no-any-return]


def image_transform_for(
    preprocess: dict[str, Any], train: bool, size: int | None = None, horizontal_flip: bool = False,
    blur_probability: float = 0.2,
) -> Callable[[Image.Image], torch.Tensor]:
    """The image transform of a model's preprocessing config (``size``, ``mean``, ``std``)."""
    configured = preprocess["size"]
    side = size or int(configured if isinstance(configured, int) else configured[0])
    return build_image_transform(side, preprocess["mean"], preprocess["std"], train=train,
                                 horizontal_flip=horizontal_flip, blur_probability=blur_probability)


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences, with section headers (``FINDINGS:``) removed."""
    text = _SECTION_HEADER.sub(" ", text)
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


TEXT_SAMPLING = ("sentences", "sentence", "section", "whole")


class SentenceSampler:
    """Training text augmentation, by ``mode``:

    - ``sentences`` (default): keep each sentence with probability ``1 - drop_probability``, in
      random order; robust to report structure and to short prompts at test time.
    - ``sentence``: one sentence at random, as ConVIRT samples.
    - ``section``: the findings or the impression at random (from the sample's ``sections``
      metadata; the whole text when it has fewer than two).
    - ``whole``: the text as stored.
    """

    takes_sections = True  # the stream passes the sample's sections as a second argument

    def __init__(self, drop_probability: float = 0.3, seed: int | None = None, mode: str = "sentences") -> None:
        if not 0 <= drop_probability < 1:
            raise ValueError(f"drop_probability must be in [0, 1), got {drop_probability}")
        if mode not in TEXT_SAMPLING:
            raise ValueError(f"unknown text sampling {mode!r}; known: {', '.join(TEXT_SAMPLING)}")
        self.drop_probability, self.mode = drop_probability, mode
        self.random = random.Random(seed)

    def reseed(self, seed: int) -> None:
        """Make the next call's choices a function of ``seed`` (per-sample seeding: exact resume)."""
        self.random.seed(seed)

    def __call__(self, text: str, sections: dict[str, str] | None = None) -> str:
        if self.mode == "whole":
            return text
        if self.mode == "section":
            parts = [sections[name] for name in ("findings", "impression") if sections and sections.get(name)]
            return self.random.choice(parts) if len(parts) > 1 else text
        sentences = split_sentences(text)
        if len(sentences) <= 1:
            return " ".join(sentences) or text
        if self.mode == "sentence":
            return self.random.choice(sentences)
        kept = [s for s in sentences if self.random.random() >= self.drop_probability]
        if not kept:
            kept = [self.random.choice(sentences)]
        self.random.shuffle(kept)
        return " ".join(kept)


def clean_report(text: str) -> str:
    """Evaluation text: the report's sentences, without section headers."""
    return " ".join(split_sentences(text)) or text.strip()
