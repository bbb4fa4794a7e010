"""Reading a shard folder: its manifest, a split's shard paths, and the checks a loader needs first.

`convirt shards` (``convirt.data.writer``) writes the folder; everything that reads one starts here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from convirt.data.schema import MANIFEST, SPLITS


def read_manifest(shards: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``manifest.json`` of a shard folder.

    Raises:
        FileNotFoundError: The folder has no manifest; the message says how to make one.
    """
    path = Path(shards) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {shards}: make shards with `convirt shards` first")
    with open(path, encoding="utf-8") as handle:
        manifest: dict[str, Any] = json.load(handle)
    return manifest


def shard_urls(shards: str | os.PathLike[str], split: str) -> list[str]:
    """Paths of a split's shards, from the manifest.

    Raises:
        ValueError: Unknown split, or the split has no samples.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    manifest = read_manifest(shards)
    entries = manifest["splits"][split]["shards"]
    if not entries:
        raise ValueError(
            f"split {split!r} of {shards} has no samples (counts: "
            f"{ {s: manifest['splits'][s]['samples'] for s in SPLITS} })"
        )
    return [str(Path(shards) / entry["name"]) for entry in entries]


def require_images(shards: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a shard folder whose samples have images (the pair loader needs them).

    Raises:
        ValueError: The folder holds text-only samples; the message says how to add the images.
    """
    manifest = read_manifest(shards)
    if manifest.get("text_only"):
        raise ValueError(
            f"{shards} holds text-only samples (source {manifest.get('source') or '?'} converted without its "
            f"images): image-text batches need images; rerun `convirt shards` with --images pointing at the "
            f"archive's image folder"
        )
    return manifest
