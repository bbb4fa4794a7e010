"""Embeddings on disk: parts written as they are made, so a killed run resumes where it stopped.

A folder holds ``part-RRR-NNNNNN.npy`` (vectors) and ``part-RRR-NNNNNN.jsonl`` (one metadata row
per vector) for rank ``RRR``; a part is complete once its ``.jsonl`` exists, which is renamed
into place last. Reading concatenates the complete parts in name order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convirt.embeddings.encode import batch_rows, encode_batch

PART_PREFIX = "part-"
SKIPPED_PREFIX = "skipped-"
DTYPES = ("float32", "float16")


def _part_name(rank: int, index: int) -> str:
    return f"{PART_PREFIX}{rank:03d}-{index:06d}"


def completed_parts(folder: str | os.PathLike[str], rank: int | None = None) -> list[Path]:
    """The ``.jsonl`` files of complete parts, in order (all ranks, or one)."""
    pattern = f"{PART_PREFIX}{rank:03d}-*.jsonl" if rank is not None else f"{PART_PREFIX}*.jsonl"
    return sorted(path for path in Path(folder).glob(pattern) if path.with_suffix(".npy").is_file())


def _write_part(folder: Path, name: str, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
    npy, jsonl = folder / f"{name}.npy", folder / f"{name}.jsonl"
    with open(folder / f"{name}.npy.tmp", "wb") as handle:
        np.save(handle, vectors)
    os.replace(folder / f"{name}.npy.tmp", npy)
    with open(folder / f"{name}.jsonl.tmp", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(folder / f"{name}.jsonl.tmp", jsonl)


def embedded_keys(folder: str | os.PathLike[str]) -> set[str]:
    """Keys already embedded in a folder, by any rank (what a resumed run skips)."""
    keys: set[str] = set()
    for path in completed_parts(folder):
        with open(path, encoding="utf-8") as handle:
            keys.update(json.loads(line)["key"] for line in handle)
    return keys


class PartWriter:
    """Collects vectors and rows of one rank and writes a part every ``chunk_size`` vectors.

    New parts are numbered after the rank's complete ones, so a resumed run appends.

    Args:
        output: The folder.
        rank: This process's rank; each rank writes its own parts.
        chunk_size: Vectors per part (memory stays flat at about one part).
        dtype: ``float32`` or ``float16`` on disk.
    """

    def __init__(self, output: str | os.PathLike[str], rank: int = 0, chunk_size: int = 4096,
                 dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.folder = Path(output)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rank, self.chunk_size, self.dtype = rank, chunk_size, dtype
        self.index = len(completed_parts(self.folder, rank))
        self.written = 0
        self.skipped = 0  # corrupt samples this run's stream skipped
        self._vectors: list[np.ndarray] = []
        self._rows: list[dict[str, Any]] = []

    def add(self, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
        """Queue ``(B, D)`` vectors with one row each; write full parts."""
        if len(vectors) != len(rows):
            raise ValueError(f"{len(vectors)} vectors but {len(rows)} rows")
        for i, row in enumerate(rows):
            self._vectors.append(vectors[i:i + 1])
            self._rows.append(row)
            if len(self._rows) >= self.chunk_size:
                self.flush()

    def add_batch(self, features: np.ndarray, batch: dict[str, Any]) -> None:
        """Queue the features of a batch dict with its metadata rows (and count what it skipped)."""
        self.skipped += int(batch.get("skipped", 0))
        self.add(features, batch_rows(batch))

    def flush(self) -> None:
        """Write what is queued as one part."""
        if self._rows:
            _write_part(self.folder, _part_name(self.rank, self.index),
                        np.concatenate(self._vectors).astype(self.dtype), self._rows)
            self.index += 1
            self.written += len(self._rows)
            self._vectors, self._rows = [], []

    def close(self) -> None:
        """Write what is queued, and this run's count of skipped samples (``skipped-RRR.json``)."""
        self.flush()
        path = self.folder / f"{SKIPPED_PREFIX}{self.rank:03d}.json"
        path.with_suffix(".tmp").write_text(json.dumps({"skipped_samples": self.skipped}), encoding="utf-8")
        os.replace(path.with_suffix(".tmp"), path)


def skipped_samples(folder: str | os.PathLike[str]) -> int:
    """Corrupt samples the last run into ``folder`` skipped, over all its ranks (0 if none said)."""
    return sum(int(json.loads(path.read_text(encoding="utf-8"))["skipped_samples"])
               for path in Path(folder).glob(f"{SKIPPED_PREFIX}*.json"))


@torch.no_grad()
def embed_to_folder(
    model: Any,
    make_batches: Callable[[set[str]], Iterable[dict[str, Any]]],
    output: str | os.PathLike[str],
    chunk_size: int = 4096,
    dtype: str = "float32",
    rank: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    modality: str = "image",
) -> int:
    """Embed batch by batch into parts of ``chunk_size`` vectors; skip what is already done.

    Args:
        model: Anything with ``encode_image`` / ``encode_text`` (``normalize=True``).
        make_batches: Called with the keys already embedded; returns batch dicts (``image``,
            ``text``, ``key``, ``meta``, optional ``raw_text``) for the others, in a fixed order.
        output: The folder.
        chunk_size: Vectors per part (memory stays flat at about one part).
        dtype: ``float32`` or ``float16`` on disk.
        rank: This process's rank; each rank writes its own parts.
        device: Where the model runs.
        progress: Show a progress bar.
        modality: ``image`` or ``text``.

    Returns:
        Number of vectors the folder holds (all ranks).
    """
    from tqdm.auto import tqdm

    writer = PartWriter(output, rank, chunk_size, dtype)
    done = embedded_keys(output)
    for batch in tqdm(make_batches(done), desc="embed", unit="batch", disable=not progress):
        writer.add_batch(encode_batch(model, batch, device, modality), batch)
    writer.close()
    return len(done) + writer.written


def read_embeddings(folder: str | os.PathLike[str]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """All complete parts of a folder: ``(N, D)`` float32 vectors and their metadata rows.

    Raises:
        FileNotFoundError: The folder holds no complete part.
        ValueError: A part's vectors and rows disagree in number.
    """
    parts = completed_parts(folder)
    if not parts:
        raise FileNotFoundError(f"no embeddings in {folder}: run `convirt embed` first")
    vectors, rows = [], []
    for path in parts:
        array = np.load(path.with_suffix(".npy"), mmap_mode="r")
        with open(path, encoding="utf-8") as handle:
            part_rows = [json.loads(line) for line in handle]
        if len(part_rows) != len(array):
            raise ValueError(f"{path.with_suffix('.npy')}: {len(array)} vectors but {len(part_rows)} rows")
        vectors.append(np.asarray(array, dtype=np.float32))
        rows.extend(part_rows)
    return np.concatenate(vectors), rows
