"""Image and text transforms applied while streaming samples to the model."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from convirt.data.reports import split_sentences


class TrainImageTransform:
    """ConVIRT's training augmentation, grayscale PIL image -> normalised ``(3, size, size)`` tensor.

    A random resized crop (area 0.7-1, aspect 0.9-1.1), a small affine transform (5 degrees, 2%
    shift, 5% zoom), a Gaussian blur now and then, an optional horizontal flip, and brightness /
    contrast jitter (0.2 each). Written by hand rather than composed from torchvision, whose
    pipeline cost more than decoding the JPEG: the parameters come from one draw of the torch
    generator (seeded per sample by the stream); crop, resize and affine are one PIL resampling;
    the blur is PIL's C filter; the jitter is a 256-entry lookup table; the repeat to three
    channels happens inside the normalisation, by broadcasting.
    """

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        horizontal_flip: bool = False,
        blur_probability: float = 0.2,
        compact: bool = False,
    ) -> None:
        self.size, self.horizontal_flip, self.blur_probability = size, horizontal_flip, blur_probability
        self.compact, self.mean, self.std = compact, list(mean), list(std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "L":
            image = image.convert("L")
        # One draw from the torch generator (seeded per sample by the stream) seeds the rest.
        rng = random.Random(int(torch.randint(0, 2**62, (1,))))
        left, top, width, height = _crop_box(image.size, rng)
        reduce = int(min(width, height) // (self.size * 1.5))
        if reduce > 1:  # the affine resampling below does not antialias: shrink by whole factors first
            image = image.reduce(reduce)
            left, top, width, height = left / reduce, top / reduce, width / reduce, height / reduce
        # Crop, resize and the small affine transform as one inverse map, output -> source pixel.
        angle = math.radians(rng.uniform(-5.0, 5.0))
        zoom = rng.uniform(0.95, 1.05)
        shift_x, shift_y = (rng.uniform(-0.02, 0.02) * self.size for _ in range(2))
        a, b = math.cos(angle) / zoom, math.sin(angle) / zoom
        centre = self.size / 2
        kx, ky = width / self.size, height / self.size
        ox, oy = centre + shift_x, centre + shift_y
        inverse = (
            kx * a,
            kx * b,
            left + kx * (centre - a * ox - b * oy),
            -ky * b,
            ky * a,
            top + ky * (centre + b * ox - a * oy),
        )
        image = image.transform(
            (self.size, self.size), Image.Transform.AFFINE, inverse, resample=Image.Resampling.BILINEAR
        )
        if rng.random() < self.blur_probability:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 1.5)))
        if self.horizontal_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        brightness, contrast = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
        # Brightness then contrast (around the brightened image's mean) as one 256-entry table.
        pixels = np.asarray(image)
        mean = float(pixels.mean()) * brightness
        levels = np.clip(np.arange(256, dtype=np.float32) * brightness, 0, 255)
        table = np.clip((levels - mean) * contrast + mean, 0, 255).round().astype(np.uint8)
        tensor = torch.from_numpy(np.take(table, pixels)).unsqueeze(0)
        return tensor if self.compact else normalize_images(tensor, self.mean, self.std)


def _crop_box(
    size: tuple[int, int],
    rng: random.Random,
    scale: tuple[float, float] = (0.7, 1.0),
    ratio: tuple[float, float] = (0.9, 1.1),
) -> tuple[float, float, float, float]:
    """``(left, top, width, height)`` of a random crop: torchvision's RandomResizedCrop rule (area
    fraction in ``scale``, aspect in ``ratio``, 10 tries, then the centre)."""
    width, height = size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    side = min(width, height)
    return (width - side) / 2, (height - side) / 2, side, side


def normalize_images(
    images: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """8-bit grayscale ``(..., 1, H, W)`` -> normalised float ``(..., C, H, W)``, one channel per
    entry of ``mean`` / ``std`` (the model boundary of compact batches). Float input is returned as is.
    """
    if images.dtype != torch.uint8:
        return images
    offset = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1) * 255.0
    scale = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1) * 255.0
    return (images.float() - offset) / scale


INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
RESIZE_MODES = ("shortest", "squash", "longest")


def _eval_resize(size: int, interpolation: str, resize_mode: str, fill_color: int) -> list[Any]:
    """The evaluation resize of open_clip's ``image_transform`` for a square ``size``: the same
    steps, so that a model exported with its ``preprocess_cfg`` embeds an image as convirt does."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; known: {', '.join(INTERPOLATIONS)}")
    mode = INTERPOLATIONS[interpolation]
    if resize_mode == "shortest":
        return [T.Resize(size, interpolation=mode), T.CenterCrop(size)]
    if resize_mode == "squash":
        return [T.Resize((size, size), interpolation=mode)]
    if resize_mode == "longest":
        from open_clip.transform import CenterCropOrPad, ResizeKeepRatio

        return [ResizeKeepRatio(size, interpolation=mode, longest=1), CenterCropOrPad(size, fill=fill_color)]
    raise ValueError(f"unknown resize_mode {resize_mode!r}; known: {', '.join(RESIZE_MODES)}")


def build_image_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    horizontal_flip: bool = False,
    blur_probability: float = 0.2,
    compact: bool = False,
    interpolation: str = "bilinear",
    resize_mode: str = "shortest",
    fill_color: int = 0,
) -> Callable[[Image.Image], torch.Tensor]:
    """Grayscale PIL image -> normalised ``(3, size, size)`` float tensor, or with ``compact`` the
    8-bit ``(1, size, size)`` image that :func:`normalize_images` turns into it at the model.

    Compact batches are 12 times smaller: data-loader workers hand them over faster, and on a GPU
    the normalisation runs on the device.

    Training applies :class:`TrainImageTransform` (ConVIRT's augmentation). Horizontal flips
    are off by default: reports name sides ("left pleural effusion"), and a flip would make them
    wrong. Evaluation resizes as open_clip's evaluation transform does with the same
    ``interpolation`` / ``resize_mode`` (by default: the short side, bilinear, then the centre
    crop). The image stays one channel until the last step, where it is repeated to the three the
    model expects and normalised with the model's own mean and std.
    """
    if train:
        return TrainImageTransform(size, mean, std, horizontal_flip, blur_probability, compact)
    resize = _eval_resize(size, interpolation, resize_mode, fill_color)
    if compact:
        return T.Compose([T.Grayscale(1), *resize, T.PILToTensor()])  # type: ignore
    pipeline = T.Compose(
        [T.Grayscale(1), *resize, T.ToTensor(), T.Lambda(lambda x: x.expand(3, -1, -1)), T.Normalize(mean, std)]
    )
    return pipeline  # type: ignore[no-any-return]


def image_side(preprocess: dict[str, Any], size: int | None = None) -> int:
    """The square input side of a model's preprocessing config, unless ``size`` overrides it."""
    configured = preprocess["size"]
    return int(size or (configured if isinstance(configured, int) else configured[0]))


def image_transform_for(
    preprocess: dict[str, Any],
    train: bool,
    size: int | None = None,
    horizontal_flip: bool = False,
    blur_probability: float = 0.2,
    compact: bool = False,
) -> Callable[[Image.Image], torch.Tensor]:
    """The image transform of a model's preprocessing config (``size``, ``mean``, ``std`` and, as
    open_clip names them, ``interpolation``, ``resize_mode``, ``fill_color``)."""
    return build_image_transform(
        image_side(preprocess, size),
        preprocess["mean"],
        preprocess["std"],
        train=train,
        horizontal_flip=horizontal_flip,
        blur_probability=blur_probability,
        compact=compact,
        interpolation=preprocess.get("interpolation", "bilinear"),
        resize_mode=preprocess.get("resize_mode", "shortest"),
        fill_color=int(preprocess.get("fill_color", 0)),
    )


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
