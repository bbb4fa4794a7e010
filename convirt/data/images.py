"""Image decoding and resizing: any input image (JPEG, PNG 8/16-bit, DICOM) -> 8-bit grayscale,
short side resized."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

DICOM_SUFFIXES = (".dcm", ".dicom")
# libjpeg's largest side, as PIL enforces it: a stored image may not be longer.
JPEG_MAX_SIDE = 65_500
# The most pixels an input image may declare, read from its header before anything is decoded: a
# chest radiograph has at most about 4,300 x 4,300 (18 MP); 8,192 x 8,192 leaves a wide margin and
# bounds a decode to 64 MiB of 8-bit pixels (a 48 KB PNG can declare 20,000 x 20,000).
MAX_IMAGE_PIXELS = 8192 * 8192
# What pydicom and numpy raise on a damaged DICOM (an element is parsed when first read, so almost
# anything): both readers of DICOMs (pixels here, headers in dicom_header) catch these.
DICOM_DAMAGE: tuple[type[Exception], ...] = (
    zlib.error,
    struct.error,
    EOFError,
    ArithmeticError,
    LookupError,
    AttributeError,
    NotImplementedError,
    RuntimeError,
    TypeError,
    ValueError,
)


class RefusedImageError(ValueError):
    """A readable image that convirt does not convert, for the reason named by ``reason`` (the
    count's name in a shard manifest: ``refused_image``, ``image_too_small``, ``image_too_elongated``,
    ``image_too_large``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """A DICOM file: by its suffix, or by the ``DICM`` magic after the 128-byte preamble."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def check_pixels(width: int, height: int, frames: int = 1, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels (all frames).

    Raises:
        RefusedImageError: ``image_too_large``, with the declared size and the limit.
    """
    pixels = int(width) * int(height) * max(1, int(frames))
    if pixels > max_pixels:
        frames_text = f" x {frames} frames" if frames > 1 else ""
        raise RefusedImageError(
            "image_too_large",
            f"{width}x{height} px{frames_text} ({pixels:,} pixels) is past the limit of "
            f"{max_pixels:,} pixels; a chest radiograph needs at most about 18 million",
        )


def check_inflated_size(path: str | os.PathLike[str], limit: int) -> None:
    """Refuse a deflated DICOM whose dataset inflates past ``limit`` bytes, inflating it in bounded
    chunks: pydicom inflates the whole file in memory before it reads even the header, and a few
    hundred kilobytes of zeros inflate to gigabytes.

    Raises:
        RefusedImageError: ``image_too_large``.
    """
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    meta = read_file_meta_info(path)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    # The deflated dataset starts after the preamble, "DICM" and the meta group: its length element
    # (12 bytes) and the length it states.
    start = 128 + 4 + 12 + int(meta.get("FileMetaInformationGroupLength", 0))
    with open(path, "rb") as handle:
        handle.seek(start)
        inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflater.eof and (chunk := handle.read(1 << 20)):
            # At the stream's end zlib answers nothing and keeps a byte unconsumed: stop there.
            while chunk and not inflater.eof:
                inflated += len(inflater.decompress(chunk, 1 << 24))
                chunk = inflater.unconsumed_tail
                if inflated > limit:
                    raise RefusedImageError(
                        "image_too_large",
                        f"deflated DICOM inflating past {limit / 2**20:.0f} MiB: more than a radiograph needs",
                    )


def load_dicom(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read a single-frame grayscale DICOM as an 8-bit image, the way a reader's screen shows it.

    The modality LUT (rescale slope / intercept) comes first, then the VOI LUT or the first
    window (centre / width) stored in the file, else the full range of the pixels; MONOCHROME1
    (bright = air) is inverted so that bone is bright, as in every other image.

    The declared size (rows x columns x frames) is checked against ``max_pixels`` from the header
    alone, before any pixel data is read or inflated; the pixels are converted in float32.

    Raises:
        RefusedImageError: Multi-frame or colour DICOM (refused by name: export one frame first), or
            one declaring more than ``max_pixels`` pixels (``image_too_large``).
        OSError: The pixel data cannot be decoded (a compressed transfer syntax without its
            decoder installed), or the file is damaged or contradicts itself: whatever pydicom or
            numpy raise on reading it (pydicom parses an element when it is first read, so any
            attribute may raise) is this one error, naming the exception's type.
    """
    from pydicom.errors import BytesLengthException

    try:
        return _read_dicom(path, max_pixels)
    except RefusedImageError:
        raise
    except (BytesLengthException,) + DICOM_DAMAGE as error:
        message = (str(error).splitlines() or [""])[0][:200]
        raise OSError(f"damaged DICOM ({type(error).__name__}: {message})") from None


def _read_dicom(path: str | os.PathLike[str], max_pixels: int) -> Image.Image:
    """:func:`load_dicom`'s work, with damage raised as pydicom and numpy raise it."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    check_inflated_size(path, 2 * max_pixels + (16 << 20))  # 16-bit pixels and a header's margin
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as error:
        raise OSError(f"not a DICOM file: {error}") from None
    frames = int(getattr(header, "NumberOfFrames", 1) or 1)
    check_pixels(int(getattr(header, "Columns", 0) or 0), int(getattr(header, "Rows", 0) or 0), frames, max_pixels)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as error:
        raise OSError(f"not a DICOM file: {error}") from None
    if frames > 1:
        raise RefusedImageError(
            "refused_image",
            f"multi-frame DICOM ({frames} frames) is not a radiograph convirt "
            "converts; export the frame you want as a single-frame file",
        )
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise RefusedImageError(
            "refused_image", f"colour DICOM ({ds.get('PhotometricInterpretation', '?')}) is not a radiograph"
        )
    try:
        with quiet_logger("pydicom"):  # its decoders log a traceback before raising; the error says it in one line
            pixels = ds.pixel_array
    except (AttributeError, NotImplementedError, RuntimeError, ValueError) as error:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise OSError(
            f"cannot decode DICOM pixel data ({getattr(syntax, 'name', syntax)}): {error}; for "
            f"compressed files install pylibjpeg[all] or python-gdcm"
        ) from None
    if pixels.shape != (ds.Rows, ds.Columns):  # pydicom returns every frame the data holds, whatever the header says
        raise OSError(
            f"DICOM pixel data of shape {pixels.shape} where its header declares one {ds.Rows}x{ds.Columns} frame"
        )
    # float32, never float64 (pydicom's rescale works in float64: a frame's copy at twice the memory).
    if "ModalityLUTSequence" in ds:  # a lookup table: rare in radiographs, pydicom's
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    else:
        values = pixels.astype(np.float32)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1:
            values *= slope
        if intercept != 0:
            values += intercept
    del pixels
    if "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float32)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = (
            float(v[0] if isinstance(v, pydicom.multival.MultiValue) else v) for v in (ds.WindowCenter, ds.WindowWidth)
        )
        low, high = center - width / 2, center + width / 2
    else:
        low, high = float(values.min()), float(values.max())
    if high > low:  # in place: no further copy of the frame
        values -= low
        values *= 255.0 / (high - low)
        np.clip(values, 0, 255, out=values)
    else:
        values[...] = 0
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        np.subtract(255.0, values, out=values)
    return Image.fromarray(np.round(values, out=values).astype(np.uint8), mode="L")


@contextlib.contextmanager
def damage_as_oserror() -> Iterator[None]:
    """PIL's other ways of saying a file is damaged (``SyntaxError("broken PNG file")``, a truncated
    stream's ``EOFError``, zlib's and struct's errors), raised as the one ``OSError`` callers expect."""
    try:
        yield
    except (SyntaxError, EOFError, zlib.error, struct.error) as error:
        message = (str(error).splitlines() or [""])[0][:200]
        raise OSError(f"damaged image ({type(error).__name__}: {message})") from None


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence logger ``name`` for the duration."""
    log = logging.getLogger(name)
    before, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = before


def load_grayscale(
    path: str | os.PathLike[str], short_side: int | None = None, min_side: int = 0, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """Read an image file as 8-bit grayscale, with its short side resized to ``short_side``.

    Aspect ratio is kept. JPEG ``draft`` mode decodes at a reduced scale when the target is
    much smaller than the file, which makes decoding several times faster. 16-bit images are
    stretched to the full 8-bit range; DICOM goes through :func:`load_dicom`.

    Args:
        path: The image file.
        short_side: Resize the short side to this many pixels (``None``: keep the size).
        min_side: Refuse an image whose short side, as stored in the file, is smaller.
        max_pixels: Refuse an image whose header declares more pixels, before decoding it.

    Raises:
        FileNotFoundError: No file at ``path``.
        OSError: The file is not a readable image (truncated, damaged, unknown format).
        RefusedImageError: A DICOM refused by name (multi-frame, colour), an image smaller than
            ``min_side``, larger than ``max_pixels`` (``image_too_large``), or one whose resized long
            side would pass :data:`JPEG_MAX_SIDE`.
    """
    image: Image.Image
    if is_dicom(path):
        image = load_dicom(path, max_pixels)
        _check_side(image.size, min_side)
        return resize_short_side(image, short_side) if short_side else image
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as error:  # PIL's own limit, far past ours: the same refusal
        declared = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than PIL opens"
        raise RefusedImageError(
            "image_too_large", f"the image declares {size}, past the limit of {max_pixels:,} pixels"
        ) from None
    with opened as source, damage_as_oserror():
        width, height = source.size
        check_pixels(width, height, 1, max_pixels)  # only the first frame is ever decoded
        _check_side(source.size, min_side)
        if short_side:
            _target_size(source.size, short_side)  # refuse before decoding what cannot be stored
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


def _check_side(size: tuple[int, int], min_side: int) -> None:
    if min(size) < min_side:
        raise RefusedImageError("image_too_small", f"{size[0]}x{size[1]} px: its short side is below {min_side} px")


def _target_size(size: tuple[int, int], short_side: int) -> tuple[int, int]:
    """``size`` with its short side scaled to ``short_side``.

    Raises:
        RefusedImageError: The long side would pass :data:`JPEG_MAX_SIDE` (``image_too_elongated``):
            checked before resizing, which would otherwise allocate the whole strip.
    """
    width, height = size
    scale = short_side / min(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if max(target) > JPEG_MAX_SIDE:
        raise RefusedImageError(
            "image_too_elongated",
            f"{width}x{height} px: its short side at {short_side} px "
            f"makes the long side {max(target)} px, past JPEG's {JPEG_MAX_SIDE}",
        )
    return target


def resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """Resize so that the shorter side is ``short_side`` pixels, keeping the aspect ratio.

    Raises:
        RefusedImageError: The long side would pass :data:`JPEG_MAX_SIDE`.
    """
    size = _target_size(image.size, short_side)
    if size == image.size:
        return image
    upscale = size[0] > image.size[0]
    return image.resize(size, Image.Resampling.BICUBIC if upscale else Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    """Encode a grayscale image as JPEG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
