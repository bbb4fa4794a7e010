"""Image decoding and resizing: any input image (JPEG, PNG 8/16-bit, DICOM) -> 8-bit grayscale,
short side resized."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """A DICOM file: by its suffix, or by the ``DICM`` magic after the 128-byte preamble."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def load_dicom(path: str | os.PathLike[str]) -> Image.Image:
    """Read a single-frame grayscale DICOM as an 8-bit image, the way a reader's screen shows it.

    The modality LUT (rescale slope / intercept) comes first, then the VOI LUT or the first
    window (centre / width) stored in the file, else the full range of the pixels; MONOCHROME1
    (bright = air) is inverted so that bone is bright, as in every other image.

    Raises:
        ValueError: Multi-frame or colour DICOM (refused by name: export one frame first).
        OSError: The pixel data cannot be decoded (a compressed transfer syntax without its
            decoder installed, or a damaged file).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as error:
        raise OSError(f"not a DICOM file: {error}") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames) is not a radiograph convirt converts; "
                         f"export the frame you want as a single-frame file")
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise ValueError(f"colour DICOM ({ds.get('PhotometricInterpretation', '?')}) is not a radiograph")
    try:
        pixels = ds.pixel_array
    except (AttributeError, NotImplementedError, RuntimeError, ValueError) as error:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise OSError(f"cannot decode DICOM pixel data ({getattr(syntax, 'name', syntax)}): {error}; for "
                      f"compressed files install pylibjpeg[all] or python-gdcm") from None
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = (float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v)
                         for v in (ds.WindowCenter, ds.WindowWidth))
        low, high = center - width / 2, center + width / 2
    else:
        low, high = float(values.min()), float(values.max())
    scaled = np.clip((values - low) / (high - low), 0, 1) if high > low else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return Image.fromarray(np.round(scaled * 255).astype(np.uint8), mode="L")


def load_grayscale(path: str | os.PathLike[str], short_side: int | None = None) -> Image.Image:
    """Read an image file as 8-bit grayscale, with its short side resized to ``short_side``.

    Aspect ratio is kept. JPEG ``draft`` mode decodes at a reduced scale when the target is
    much smaller than the file, which makes decoding several times faster. 16-bit images are
    stretched to the full 8-bit range; DICOM goes through :func:`load_dicom`.

    Raises:
        FileNotFoundError: No file at ``path``.
        OSError: The file is not a readable image (truncated, damaged, unknown format).
        ValueError: A DICOM that is refused by name (multi-frame, colour).
    """
    image: Image.Image
    if is_dicom(path):
        image = load_dicom(path)
        return resize_short_side(image, short_side) if short_side else image
    with Image.open(path) as source:
        if short_side and source.format == "JPEG":
            source.draft("L", (short_side, short_side))
        source.load()
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
