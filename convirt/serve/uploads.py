"""Uploaded images -> grey radiographs, with every refusal a one-line reason and a 4xx status.

The type comes from the content (magic bytes), never the file name; DICOM goes through the same
reader and checks as `convirt shards` (single frame, grayscale, decodable pixels).
"""

from __future__ import annotations

import os
import tempfile

from PIL import Image

from convirt.data.images import RefusedImageError, load_grayscale

MAX_UPLOAD_BYTES = 32 * 1024 * 1024
KINDS = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


class UploadError(ValueError):
    """An upload refused: ``status`` (400, 413 or 415) and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sniff(data: bytes) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` from the first bytes, else ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    return None


def read_upload(data: bytes, limit: int = MAX_UPLOAD_BYTES) -> Image.Image:
    """The grey image an upload holds.

    Raises:
        UploadError: Empty or over ``limit`` (413), declaring more pixels than a radiograph needs
            (413, from its header: :data:`convirt.data.images.MAX_IMAGE_PIXELS`), not PNG, JPEG or
            DICOM (415), or a file of that type that cannot be read as one radiograph (400:
            truncated, multi-frame, colour DICOM).
    """
    if not data:
        raise UploadError(400, "empty upload: send one PNG, JPEG or DICOM image")
    if len(data) > limit:
        raise UploadError(413, f"upload of {len(data)} bytes is over the limit of {limit} bytes")
    kind = sniff(data)
    if kind is None:
        raise UploadError(415, "not a PNG, JPEG or DICOM image (judged by its content, not its name)")
    # load_grayscale reads files (pydicom and PIL's lazy decoding both want one); the file is ours, not the user's name.
    handle, path = tempfile.mkstemp(suffix=KINDS[kind], prefix="convirt-upload-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return load_grayscale(path)
    except RefusedImageError as error:  # its size is read from the header, before any pixel is decoded
        raise UploadError(413 if error.reason == "image_too_large" else 400, str(error).splitlines()[0]) from None
    except (OSError, ValueError, SyntaxError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UploadError(400, f"cannot read the {kind} image: {reason.replace(path, 'the upload')}") from None
    finally:
        os.unlink(path)
