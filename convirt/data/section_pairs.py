"""Pairs of sections of one report (findings, impression) from shards: text-only training data.

Report archives hold many more reports than image pairs (Open-i ships 3,955 reports; a PACS
export often has reports whose images were never exported). Two sections of the same report
say the same thing in different words, which is what section matching trains on. The shard's
``json`` keeps every section (see :mod:`convirt.data.writer`), so both image and text-only
shards serve.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convirt.data.reports import FINDINGS, IMPRESSION, SECTIONS
from convirt.data.schema import META
from convirt.data.shards import shard_urls


def iter_split_metadata(shards: str | os.PathLike[str], split: str) -> Iterator[dict[str, Any]]:
    """The metadata dict (``json``) of every sample of a split of a local shard folder, in shard order.

    Raises:
        ValueError: An unknown or empty split.
    """
    for url in shard_urls(shards, split):
        # Local shard folders only (the manifest's paths): tarfile reads them without a pipeline.
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith(f".{META}") and (handle := tar.extractfile(member)) is not None:
                    yield json.loads(handle.read())


def read_section_pairs(
    shards: str | os.PathLike[str], split: str, first: str = FINDINGS, second: str = IMPRESSION
) -> list[tuple[str, str]]:
    """``(first, second)`` section texts of every report in a split that has both, in shard order.

    Reports that repeat an earlier pair exactly (several images of one study) count once.

    Raises:
        ValueError: An unknown section name, an unknown or empty split, or no report with both
            sections (the message gives the section counts seen).
    """
    for name in (first, second):
        if name not in SECTIONS:
            raise ValueError(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
    if first == second:
        raise ValueError(f"the two sections must differ, got {first!r} twice")
    pairs: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    counts = {first: 0, second: 0}
    reports = 0
    for meta in iter_split_metadata(shards, split):
        sections = meta.get("sections") or {}
        reports += 1
        texts = tuple(str(sections.get(name) or "").strip() for name in (first, second))
        for name, text in zip((first, second), texts):
            counts[name] += bool(text)
        pair = (texts[0], texts[1])
        if all(pair) and pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    if not pairs:
        raise ValueError(
            f"no report of split {split!r} in {Path(shards)} has both a {first} and an {second} "
            f"section ({reports} reports: {counts[first]} with {first}, {counts[second]} with {second})"
        )
    return pairs
