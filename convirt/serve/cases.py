"""The archive's case images, served only from the index's own files.

A case is an index id. Its image is the file its metadata row names (``path``: an index built from
a label table or a folder) or, for an index built from shards, its member in the shard folder given
(found by the row's key in the tar headers, read once at start: each member's place in its tar is
kept, and an image is read from there with one seek). Which cases have an image is settled at
start too, so asking costs no file-system call. Ids are looked up, never joined into a path; images
go out as downsized JPEGs, kept in a small cache.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from convirt.data.images import (
    RefusedImageError,
    check_pixels,
    damage_as_oserror,
    encode_jpeg,
    load_grayscale,
    resize_short_side,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
THUMBNAIL_SIDE = 256
# The largest shard member read: a stored case image is a JPEG of at most a few hundred kilobytes.
MAX_MEMBER_BYTES = 32 << 20

log = logging.getLogger(__name__)


class Member(NamedTuple):
    """Where a case image lies in a shard: its tar, the offset of its bytes there, and their count."""

    tar: Path
    offset: int
    size: int


class CaseNotFound(KeyError):
    """No case with that id in the index."""


class CaseImages:
    """Image bytes of the indexed cases.

    Args:
        metadata: The index's rows, by id.
        shards: A shard folder holding the indexed images, for an index built from shards.
        max_member_bytes: Shard members larger than this are not served.

    Raises:
        ValueError: A tar in ``shards`` is not an uncompressed tar.
    """

    def __init__(
        self,
        metadata: list[dict[str, Any]],
        shards: str | os.PathLike[str] | None = None,
        max_member_bytes: int = MAX_MEMBER_BYTES,
    ) -> None:
        self.metadata = metadata
        self.members: dict[str, Member] = {}
        if shards is not None:
            self.members = _find_members(Path(shards), {str(row.get("key")) for row in metadata}, max_member_bytes)
        # Each case's image, settled once: a file present at start, else its shard member, else none.
        self._sources: list[Path | Member | None] = [self._source_of(row) for row in metadata]
        self.served = [source is not None for source in self._sources]
        self.jpeg = lru_cache(maxsize=512)(self._jpeg)

    def _source_of(self, row: dict[str, Any]) -> Path | Member | None:
        if row.get("path"):
            path = Path(str(row["path"]))
            try:
                if path.is_file():
                    return path
            except OSError:  # a name the file system refuses (too long, say): no image
                pass
        return self.members.get(str(row.get("key")))

    def has_image(self, case: int) -> bool:
        """Whether case ``case`` (a valid id) has an image this service may serve (as found at start)."""
        return self.served[case]

    def image(self, case: int) -> Image.Image:
        """Case ``case``'s grey image at its archive size (a valid id with an image).

        Raises:
            FileNotFoundError: The image's file or shard is gone since the service started.
            RefusedImageError: A shard member declaring more pixels than a radiograph needs.
            OSError: A shard member that is not a readable JPEG or PNG, or a shard changed since start.
        """
        source = self._sources[case]
        if source is None:
            raise FileNotFoundError(f"case {case} has no image")
        try:
            if isinstance(source, Path):
                return load_grayscale(source)
            return _decode(_read(source))
        except FileNotFoundError:  # the path may hold a patient's name: the error names the case only
            raise FileNotFoundError(f"case {case}'s image is gone since the service started") from None

    def _jpeg(self, case: int, side: int = THUMBNAIL_SIDE) -> bytes:
        image = self.image(case)
        if min(image.size) > side:
            image = resize_short_side(image, side)
        return encode_jpeg(image, quality=85)


def _find_members(shards: Path, wanted: set[str], max_bytes: int) -> dict[str, Member]:
    """The place of each wanted key's image in the tars of ``shards``, from one scan of their headers.

    Only regular members are kept (a link or sparse member's bytes are not where its header is), and
    only those of at most ``max_bytes``.
    """
    members: dict[str, Member] = {}
    too_large = 0
    for tar in sorted(shards.glob("*.tar")):
        try:
            archive = tarfile.open(tar, "r:")  # uncompressed only: the offsets are into the file itself
        except tarfile.ReadError:
            raise ValueError(
                f"shard {tar.name} is not an uncompressed tar; write the shard folder again with convirt shards"
            ) from None
        with archive:
            for member in archive:
                stem, suffix = os.path.splitext(member.name)
                if (
                    suffix.lower() not in IMAGE_SUFFIXES
                    or stem not in wanted
                    or not member.isreg()
                    or member.issparse()
                ):
                    continue
                if member.size > max_bytes:
                    too_large += 1
                    continue
                members[stem] = Member(tar, member.offset_data, member.size)
    if too_large:
        log.warning("%d shard images over %d MiB are not served", too_large, max_bytes >> 20)
    return members


def _read(member: Member) -> bytes:
    """A shard member's bytes, read at its recorded place.

    Raises:
        FileNotFoundError: The tar is gone.
        OSError: The tar is shorter than when the service started.
    """
    with open(member.tar, "rb") as handle:
        handle.seek(member.offset)
        data = handle.read(member.size)
    if len(data) != member.size:
        raise OSError("the shard is shorter than when the service started: restart the service")
    return data


def _decode(data: bytes) -> Image.Image:
    """A shard image (JPEG or PNG) as 8-bit grey, its declared size checked before it is decoded.

    Raises:
        RefusedImageError: More pixels than :data:`convirt.data.images.MAX_IMAGE_PIXELS` (``image_too_large``).
        OSError: Not a readable JPEG or PNG.
    """
    try:
        source = Image.open(io.BytesIO(data), formats=("JPEG", "PNG"))
    except Image.DecompressionBombError:  # PIL's own limit, far past ours: the same refusal
        raise RefusedImageError("image_too_large", "the shard image declares more pixels than PIL opens") from None
    with source, damage_as_oserror():
        check_pixels(*source.size)
        source.load()
        return source.convert("L")
