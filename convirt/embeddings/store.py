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

from convirt.embeddings.encode import encode_batch

PART_PREFIX = "part-"
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
) -> int:
    """Embed images batch by batch into parts of ``chunk_size`` vectors; skip what is already done.

    Args:
        model: Anything with ``encode_image(images, normalize=True)``.
        make_batches: Called with the keys already embedded; returns batch dicts (``image``,
            ``key``, ``meta``, optional ``raw_text``) for the others, in a fixed order.
        output: The folder.
        chunk_size: Vectors per part (memory stays flat at about one part).
        dtype: ``float32`` or ``float16`` on disk.
        rank: This process's rank; each rank writes its own parts.
        device: Where the model runs.
        progress: Show a progress bar.

    Returns:
        Number of vectors the folder holds for this rank.
    """
    from tqdm.auto import tqdm

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    done = completed_parts(folder, rank)
    done_keys: set[str] = set()
    for path in done:
        with open(path, encoding="utf-8") as handle:
            done_keys.update(json.loads(line)["key"] for line in handle)
    index = len(done)
    vectors: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    count = len(done_keys)

    def flush() -> None:
        nonlocal index, vectors, rows
        if rows:
            _write_part(folder, _part_name(rank, index), np.concatenate(vectors).astype(dtype), rows)
            index, vectors, rows = index + 1, [], []

    for batch in tqdm(make_batches(done_keys), desc="embed", unit="batch", disable=not progress):
        features, batch_rows = encode_batch(model, batch, device)
        for i, row in enumerate(batch_rows):
            vectors.append(features[i:i + 1])
            rows.append(row)
            count += 1
            if len(rows) >= chunk_size:
                flush()
    flush()
    return count


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
