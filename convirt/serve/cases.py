"""The archive's case images, served only from the index's own files.

A case is an index id. Its image is the file its metadata row names (``path``: an index built from
a label table or a folder) or, for an index built from shards, its member in the shard folder given
(found by the row's key in the tar headers, read once at start: each member's place in its tar is
kept, and an image is read from there with one seek). Which cases have an image is settled at
start too, so asking costs no file-system call; what is kept is a byte a case (and a member's place),
never the rows: a file's path is read from its case's row when its image is asked for. Ids are looked
up, never joined into a path; images go out as downsized JPEGs, kept in a small cache.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from convirt.data.columns import Column, IdColumn, IdGroups
from convirt.data.images import (
    RefusedImageError,
    check_pixels,
    damage_as_oserror,
    encode_jpeg,
    load_grayscale,
    resize_short_side,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")  # img2dataset writes webp too
THUMBNAIL_SIDE = 256
# The largest shard member read: a stored case image is a JPEG of at most a few hundred kilobytes.
MAX_MEMBER_BYTES = 32 << 20
# Where a case's image comes from, one byte a case.
_NONE, _FILE, _MEMBER = 0, 1, 2

log = logging.getLogger(__name__)


class Member(NamedTuple):
    """Where a case image lies in a shard: its tar, the offset of its bytes there, and their count."""

    tar: Path
    offset: int
    size: int


class _Places(NamedTuple):
    """The place of each case's shard member, by case: its tar (an index into ``tars``, -1: none), offset, size."""

    tars: list[Path]
    tar: np.ndarray
    offset: np.ndarray
    size: np.ndarray

    def member(self, case: int) -> Member:
        """Where case ``case``'s member lies (a case with one)."""
        return Member(self.tars[self.tar[case]], int(self.offset[case]), int(self.size[case]))


class CaseNotFound(KeyError):
    """No case with that id in the index."""


class CaseImages:
    """Image bytes of the indexed cases.

    Args:
        metadata: The index's rows, by id: read once here (a :class:`convirt.retrieval.MetadataRows` streams
            its file), then only a case's row whose file is asked for.
        shards: The tars holding the indexed images, for an index built from shards: a folder of them
            (`convirt shards` output, or shards of other tools) or a brace pattern of local tars.
        max_member_bytes: Shard members larger than this are not served.
        columns: Other columns of the rows to fill in the same pass (each row is read once).

    Raises:
        ValueError: ``shards`` names no local tar (a URL: members are read at their offsets), or a
            tar in it is not an uncompressed tar.
    """

    def __init__(
        self,
        metadata: Sequence[dict[str, Any]],
        shards: str | os.PathLike[str] | None = None,
        max_member_bytes: int = MAX_MEMBER_BYTES,
        columns: Sequence[Column] = (),
    ) -> None:
        self.metadata = metadata
        # Each case's image, settled once: a file present at start, else its shard member, else none.
        self._sources = np.zeros(len(metadata), dtype=np.int8)
        keys = IdColumn(lambda row: str(row.get("key")))  # what a case's shard member is named by
        fed = (keys, *columns) if shards is not None else tuple(columns)
        for case, row in enumerate(metadata):
            if _is_file(row.get("path")):
                self._sources[case] = _FILE
            for column in fed:
                column.add(row)
        self._places: _Places | None = None
        if shards is not None:
            self._places = _find_members(local_tars(shards), keys.groups(), max_member_bytes)
            self._sources[(self._sources == _NONE) & (self._places.tar >= 0)] = _MEMBER
        self.served = self._sources != _NONE
        self.jpeg = lru_cache(maxsize=512)(self._jpeg)

    def has_image(self, case: int) -> bool:
        """Whether case ``case`` (a valid id) has an image this service may serve (as found at start)."""
        return bool(self.served[case])

    def image(self, case: int) -> Image.Image:
        """Case ``case``'s grey image at its archive size (a valid id with an image).

        Raises:
            FileNotFoundError: The image's file or shard is gone since the service started.
            RefusedImageError: A shard member declaring more pixels than a radiograph needs.
            OSError: A shard member that is not a readable JPEG, PNG or WebP, or a shard changed since start.
        """
        source = self._sources[case]
        if source == _NONE:
            raise FileNotFoundError(f"case {case} has no image")
        try:
            if source == _FILE:
                return load_grayscale(Path(str(self.metadata[case]["path"])))
            assert self._places is not None  # a member's case has its place
            return _decode(_read(self._places.member(case)))
        except FileNotFoundError:  # the path may hold a patient's name: the error names the case only
            raise FileNotFoundError(f"case {case}'s image is gone since the service started") from None

    def _jpeg(self, case: int, side: int = THUMBNAIL_SIDE) -> bytes:
        image = self.image(case)
        if min(image.size) > side:
            image = resize_short_side(image, side)
        return encode_jpeg(image, quality=85)


def _is_file(path: Any) -> bool:
    """Whether a row's ``path`` names a file present now."""
    try:
        return bool(path) and Path(str(path)).is_file()
    except OSError:  # a name the file system refuses (too long, say): no image
        return False


def local_tars(shards: str | os.PathLike[str]) -> list[Path]:
    """The tars of a folder (sorted) or of a brace pattern (``shards/{00000..00009}.tar``, or a ``::`` list), all
    local files.

    Raises:
        ValueError: A URL or ``pipe:`` (the service reads members at their offsets in local files), no
            tars, or a tar of the pattern missing.
    """
    text = str(shards)
    if "://" in text or text.startswith("pipe:"):
        raise ValueError(f"--images reads local tars (a case's image at its offset), not {text}: copy the shards here")
    if Path(text).is_dir():
        tars = sorted(Path(text).glob("*.tar"))
        if not tars:
            raise ValueError(f"no .tar shards in {text}")
        return tars
    from convirt.data.urls import expand_shard_urls

    tars = [Path(name) for name in expand_shard_urls(text)]
    if missing := next((tar for tar in tars if not tar.is_file()), None):
        raise ValueError(f"no shard at {missing}" + (f" (of {text})" if len(tars) > 1 else ""))
    return tars


def _find_members(tars: list[Path], keys: IdGroups, max_bytes: int) -> _Places:
    """The place of each case's image in ``tars`` (the member named by its key), from one scan of their
    headers; ``keys`` holds the cases' keys.

    Only regular members are kept (a link or sparse member's bytes are not where its header is), and
    only those of at most ``max_bytes``.
    """
    cases = len(keys.codes)
    places = _Places(tars, np.full(cases, -1, dtype=np.int32), np.zeros(cases, np.int64), np.zeros(cases, np.int64))
    too_large = 0
    for number, tar in enumerate(tars):
        try:
            archive = tarfile.open(tar, "r:")  # uncompressed only: the offsets are into the file itself
        except tarfile.ReadError:
            raise ValueError(
                f"shard {tar.name} is not an uncompressed tar; write the shard folder again with convirt shards"
            ) from None
        with archive:
            for member in archive:
                stem, suffix = os.path.splitext(member.name)
                if suffix.lower() not in IMAGE_SUFFIXES or not member.isreg() or member.issparse():
                    continue
                owners = keys.rows(stem)
                if not len(owners):
                    continue
                if member.size > max_bytes:
                    too_large += 1
                    continue
                places.tar[owners], places.offset[owners], places.size[owners] = number, member.offset_data, member.size
    if too_large:
        log.warning("%d shard images over %d MiB are not served", too_large, max_bytes >> 20)
    return places


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
    """A shard image (JPEG, PNG or WebP) as 8-bit grey, its declared size checked before it is decoded.

    Raises:
        RefusedImageError: More pixels than :data:`convirt.data.images.MAX_IMAGE_PIXELS` (``image_too_large``).
        OSError: Not a readable JPEG, PNG or WebP.
    """
    try:
        source = Image.open(io.BytesIO(data), formats=("JPEG", "PNG", "WEBP"))
    except Image.DecompressionBombError:  # PIL's own limit, far past ours: the same refusal
        raise RefusedImageError("image_too_large", "the shard image declares more pixels than PIL opens") from None
    with source, damage_as_oserror():
        check_pixels(*source.size)
        source.load()
        return source.convert("L")
