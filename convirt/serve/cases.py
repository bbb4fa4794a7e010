"""The archive's case images, served only from the index's own files.

A case is an index id. Its image is the file its metadata row names (``path``: an index built from
a label table or a folder) or, for an index built from shards, its member in the shard folder given
(found by the row's key in the tar headers, read once at start). Ids are looked up, never joined
into a path; images go out as downsized JPEGs, kept in a small cache.
"""

from __future__ import annotations

import io
import os
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from convirt.data.images import encode_jpeg, load_grayscale, resize_short_side

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
THUMBNAIL_SIDE = 256


class CaseImages:
    """Image bytes of the indexed cases.

    Args:
        metadata: The index's rows, by id.
        shards: A shard folder holding the indexed images, for an index built from shards.
    """

    def __init__(self, metadata: list[dict[str, Any]], shards: str | os.PathLike[str] | None = None) -> None:
        self.metadata = metadata
        self.members: dict[str, tuple[Path, str]] = {}
        if shards is not None:
            wanted = {str(row.get("key")) for row in metadata}
            for tar in sorted(Path(shards).glob("*.tar")):
                with tarfile.open(tar) as archive:
                    for member in archive:
                        stem, suffix = os.path.splitext(member.name)
                        if suffix.lower() in IMAGE_SUFFIXES and stem in wanted:
                            self.members[stem] = (tar, member.name)
        self.jpeg = lru_cache(maxsize=512)(self._jpeg)

    def has_image(self, case: int) -> bool:
        """Whether case ``case`` (a valid id) has an image this service may serve."""
        row = self.metadata[case]
        return bool(row.get("path")) and Path(str(row["path"])).is_file() or str(row.get("key")) in self.members

    def image(self, case: int) -> Image.Image:
        """Case ``case``'s grey image at its archive size (a valid id with an image)."""
        row = self.metadata[case]
        if row.get("path") and Path(str(row["path"])).is_file():
            return load_grayscale(str(row["path"]))
        tar, name = self.members[str(row.get("key"))]
        with tarfile.open(tar) as archive:
            member = archive.extractfile(name)
            assert member is not None
            image = Image.open(io.BytesIO(member.read()))
            image.load()
        return image.convert("L")

    def _jpeg(self, case: int, side: int = THUMBNAIL_SIDE) -> bytes:
        image = self.image(case)
        if min(image.size) > side:
            image = resize_short_side(image, side)
        return encode_jpeg(image, quality=85)
