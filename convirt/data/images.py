"""Image decoding and resizing: any input image -> 8-bit grayscale, short side resized."""

from __future__ import annotations

import io
import os

from PIL import Image


def load_grayscale(path: str | os.PathLike[str], short_side: int | None = None) -> Image.Image:
    """Read an image file as 8-bit grayscale, with its short side resized to ``short_side``.

    Aspect ratio is kept. JPEG ``draft`` mode decodes at a reduced scale when the target is
    much smaller than the file, which makes decoding several times faster.

    Raises:
        FileNotFoundError: No file at ``path``.
        OSError: The file is not a readable image.
    """
    with Image.open(path) as source:
        if short_side and source.format == "JPEG":
            source.draft("L", (short_side, short_side))
        source.load()
        image: Image.Image
        if source.mode in ("I;16", "I;16B", "I", "F"):
            # 16-bit or float: stretch to the full 8-bit range.
            low, high = (float(v) for v in source.getextrema())  # type: ignore[arg-type]
            scale = 255.0 / (high - low) if high > low else 1.0
            image = source.point(lambda v: (v - low) * scale).convert("L")
        else:
            image = source.convert("L")
    if short_side:
        image = resize_short_side(image, short_side)
    return image


def resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """Resize so that the shorter side is ``short_side`` pixels, keeping the aspect ratio."""
    width, height = image.size
    scale = short_side / min(width, height)
    if scale == 1.0:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    """Encode a grayscale image as JPEG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
