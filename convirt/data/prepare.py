"""One row on its way into a shard: its text checked and chosen, its image decoded, checked and
encoded, or the reason it is dropped (the names counted in the manifest)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import zlib
from collections import Counter
from typing import NamedTuple

from PIL import Image

from convirt.data.images import RefusedImageError, encode_jpeg, load_grayscale
from convirt.data.reports import TextMode, drop_reason, parse_sections, select_text
from convirt.data.schema import Row
from convirt.data.views import view_kept

# Errors of a damaged or unknown image file (PIL, zlib, struct and pydicom raise these); anything
# else while preparing a row is counted as ``unexpected_error:<type>``, so that a bug in the code
# is not mistaken for bad data.
_UNREADABLE = (OSError, SyntaxError, EOFError, struct.error, zlib.error)
# A chest radiograph report runs to a few thousand characters; a field past this is a broken export
# (a file pasted into a cell), and would dominate memory and the tokenizer's time.
MAX_REPORT_CHARS = 65_536
# Smaller images hold no radiograph at any size anyone trains on (MedMNIST's are 28 px).
MIN_IMAGE_SIDE = 16


class Prepared(NamedTuple):
    """One image made ready for a shard, or the reason it is skipped.

    Attributes:
        jpeg: The stored JPEG bytes (``None`` when skipped).
        digest: SHA-256 of the stored pixels: equal digests are exact duplicate images (``None`` when skipped).
        reason: Why the image is skipped (a drop reason of the manifest); ``None`` when it is kept.
        detail: The error's message behind ``reason`` (``""`` when there is none).
    """

    jpeg: bytes | None
    digest: str | None
    reason: str | None
    detail: str


def _skipped(reason: str, detail: str = "") -> Prepared:
    return Prepared(None, None, reason, detail)


def prepare_image(path: str, image_size: int, reraise: bool = False) -> Prepared:
    """Load, resize and encode one image (:class:`Prepared`: its JPEG and pixel digest, or the reason
    it is skipped).

    Reasons: ``missing_image``, ``unreadable_image``, ``refused_image`` (multi-frame or colour
    DICOM), ``image_too_small``, ``image_too_elongated``, ``image_too_large`` (past PIL's
    decompression-bomb limit), ``constant_image`` (one value everywhere), and
    ``unexpected_error:<ExceptionType>`` for anything else (``detail`` holds its message), which
    ``reraise`` raises instead (``--strict``: its traceback is kept behind the error).
    """
    if not path or not os.path.isfile(path):
        return _skipped("missing_image", "")
    try:
        image = load_grayscale(path, image_size, min_side=MIN_IMAGE_SIDE)
        low, high = image.getextrema()  # type: ignore[misc]
        if low == high:
            return _skipped("constant_image", f"every pixel is {low}")
        digest = hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()
        return Prepared(encode_jpeg(image), digest, None, "")
    except RefusedImageError as error:  # a readable file the converter refuses by name
        return _skipped(error.reason, str(error))
    except Image.DecompressionBombError as error:
        return _skipped("image_too_large", str(error))
    except _UNREADABLE as error:
        return _skipped("unreadable_image", f"{type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 (one row must not end the run; counted by type)
        if reraise:
            raise
        return _skipped(f"unexpected_error:{type(error).__name__}", str(error))


def check_row(
    row: Row, keep_views: frozenset[str] | None, mode: TextMode, sections_seen: Counter[str]
) -> tuple[str, Row | None]:
    """Why a row's text or metadata makes it unusable (``""`` when it is usable), and the row with
    its chosen text and sections."""
    if len(row.text) > MAX_REPORT_CHARS:
        return "report_too_long", None
    sections = row.sections or parse_sections(row.text)
    sections_seen.update(sections.keys())
    if row.problem:
        return row.problem, None
    if keep_views is not None and not view_kept(row.view, keep_views):
        return ("view_excluded" if row.view.strip() else "view_unknown"), None
    if not sections and not row.text.strip():
        return "empty_report", None
    if not (chosen := select_text(sections, mode)):
        return drop_reason(mode), None
    return "", dataclasses.replace(row, text=chosen, sections=sections)
