"""Rows -> WebDataset tar shards, split by patient, with a manifest.

Shards are written to a temporary name and renamed when complete, so a shard that exists is
whole; the manifest is written last, the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import webdataset as wds

from convirt.data.images import encode_jpeg, load_grayscale
from convirt.data.schema import IMAGE, KEY, MANIFEST, META, SPLITS, TEXT, Row

logger = logging.getLogger(__name__)


def assign_split(patient_id: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """Deterministic split of a patient from a hash of its id: every image of a patient shares it."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()
    position = int(digest[:12], 16) / float(1 << 48)
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def _prepare(row: Row, image_size: int) -> tuple[Row, bytes | None, str | None]:
    """Load and encode one row's image; return the drop reason instead when it cannot be used."""
    if not row.text.strip():
        return row, None, "empty_text"
    if not row.image_path or not os.path.isfile(row.image_path):
        return row, None, "missing_image"
    try:
        image = load_grayscale(row.image_path, image_size)
    except (OSError, ValueError, SyntaxError):
        return row, None, "unreadable_image"
    return row, encode_jpeg(image), None


def _prepared(rows: Iterable[Row], image_size: int, workers: int) -> Iterator[tuple[Row, bytes | None, str | None]]:
    if workers <= 1:
        for row in rows:
            yield _prepare(row, image_size)
        return
    with ProcessPoolExecutor(workers) as pool:
        rows = list(rows)
        yield from pool.map(_prepare, rows, [image_size] * len(rows), chunksize=16)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _SplitWriter:
    """Writes one split's shards, ``{split}-{index:06d}.tar``, each renamed into place when full."""

    def __init__(self, output: Path, split: str, shard_size: int) -> None:
        self.output, self.split, self.shard_size = output, split, shard_size
        self.shards: list[dict[str, Any]] = []
        self._writer: wds.TarWriter | None = None
        self._count = 0
        self._tmp: Path | None = None

    def write(self, sample: dict[str, Any]) -> None:
        if self._writer is None:
            self._tmp = self.output / f"{self.split}-{len(self.shards):06d}.tar.tmp"
            self._writer = wds.TarWriter(str(self._tmp))
            self._count = 0
        self._writer.write(sample)
        self._count += 1
        if self._count >= self.shard_size:
            self.close()

    def close(self) -> None:
        if self._writer is None or self._tmp is None:
            return
        self._writer.close()
        final = self._tmp.with_suffix("")
        os.replace(self._tmp, final)
        self.shards.append({"name": final.name, "samples": self._count, "sha256": file_sha256(final)})
        self._writer = None


def write_shards(
    rows: Iterable[Row],
    output: str | os.PathLike[str],
    image_size: int = 256,
    shard_size: int = 1000,
    val_fraction: float = 0.05,
    test_fraction: float = 0.15,
    seed: int = 0,
    workers: int = 1,
    strict: bool = False,
    command: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Write rows into ``{train,val,test}-NNNNNN.tar`` shards and ``manifest.json``.

    Args:
        rows: Rows from an archive reader.
        output: Output folder (created).
        image_size: Short side of the stored images, in pixels.
        shard_size: Samples per shard.
        val_fraction: Fraction of patients in ``val`` (rows with an official split keep it).
        test_fraction: Fraction of patients in ``test``.
        seed: Seed of the patient hash.
        workers: Processes that decode images.
        strict: Raise on the first row that cannot be used instead of skipping it.
        command: The command line, recorded in the manifest.
        progress: Show a progress bar.

    Returns:
        The manifest (also written to ``output/manifest.json``).

    Raises:
        ValueError: A row is unusable and ``strict`` is set, or no row was usable.
    """
    from tqdm.auto import tqdm

    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if not 0 <= val_fraction + test_fraction < 1:
        raise ValueError(f"val_fraction + test_fraction must be in [0, 1), got {val_fraction + test_fraction}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    writers = {split: _SplitWriter(out, split, shard_size) for split in SPLITS}
    dropped: Counter[str] = Counter()
    labels: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    total = 0
    for row, jpeg, reason in tqdm(_prepared(rows, image_size, workers), desc="shards", unit="img",
                                  disable=not progress):
        total += 1
        if reason is not None or jpeg is None:
            reason = reason or "unreadable_image"
            if strict:
                raise ValueError(f"{reason.replace('_', ' ')}: {row.image_path or row.key} (row {row.key})")
            logger.warning("skipping %s: %s", row.key, reason)
            dropped[reason] += 1
            continue
        split = row.split if row.split in SPLITS else assign_split(row.patient_id, val_fraction, test_fraction, seed)
        writers[split].write({KEY: row.key, IMAGE: jpeg, TEXT: row.text, META: row.metadata()})
        labels[split].update(row.labels)
    for writer in writers.values():
        writer.close()
    written = sum(shard["samples"] for writer in writers.values() for shard in writer.shards)
    if written == 0:
        raise ValueError(
            f"no usable samples: {total} rows read, all dropped ({dict(dropped) or 'no rows in the input'})"
        )
    manifest: dict[str, Any] = {
        "format": "convirt-shards/1",
        "image_size": image_size,
        "rows_read": total,
        "samples": written,
        "dropped": dict(sorted(dropped.items())),
        "splits": {
            split: {
                "samples": sum(shard["samples"] for shard in writers[split].shards),
                "shards": writers[split].shards,
                "labels": dict(sorted(labels[split].items())),
            }
            for split in SPLITS
        },
        "command": command,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)
    return manifest


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
        raise ValueError(f"split {split!r} of {shards} has no samples (counts: "
                         f"{ {s: manifest['splits'][s]['samples'] for s in SPLITS} })")
    return [str(Path(shards) / entry["name"]) for entry in entries]
