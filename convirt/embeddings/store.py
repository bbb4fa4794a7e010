"""The embedding folder: parts written as they are made, so a killed run resumes where it stopped.

A folder holds ``part-RRR-NNNNNN.npy`` (vectors) and ``part-RRR-NNNNNN.jsonl`` (one metadata row
per vector) for rank ``RRR``; a part is complete once its ``.jsonl`` exists, which is renamed
into place last. ``info.json`` holds the fingerprint of the model that made the vectors, their
modality, the precision they were made at (dtype, device kind, measured agreement with float32)
and the count of corrupt samples skipped; ``skipped-RRR.json`` each rank's count of
the last run. Reading concatenates the complete parts in name order, or lists them to be read one
at a time (:func:`list_embedding_parts`: vectors memory-mapped, rows streamed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convirt._embedding_space import canonical_precision, check_same_space
from convirt._io import atomic_path, write_json, write_jsonl
from convirt.embeddings.encode import batch_rows

INFO = "info.json"
PART_PREFIX = "part-"
SKIPPED_PREFIX = "skipped-"
DTYPES = ("float32", "float16")
PRECISION_KEYS = ("precision", "device", "precision_agreement")


def _part_name(rank: int, index: int) -> str:
    return f"{PART_PREFIX}{rank:03d}-{index:06d}"


def completed_parts(folder: str | os.PathLike[str], rank: int | None = None) -> list[Path]:
    """The ``.jsonl`` files of complete parts, in order (all ranks, or one)."""
    pattern = f"{PART_PREFIX}{rank:03d}-*.jsonl" if rank is not None else f"{PART_PREFIX}*.jsonl"
    return sorted(path for path in Path(folder).glob(pattern) if path.with_suffix(".npy").is_file())


def _write_part(folder: Path, name: str, vectors: np.ndarray, rows: list[dict[str, Any]]) -> None:
    with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors)
    write_jsonl(folder / f"{name}.jsonl", rows)  # last: a part counts once its .jsonl exists


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

    def __init__(
        self, output: str | os.PathLike[str], rank: int = 0, chunk_size: int = 4096, dtype: str = "float32"
    ) -> None:
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
            self._vectors.append(vectors[i : i + 1])
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
            _write_part(
                self.folder,
                _part_name(self.rank, self.index),
                np.concatenate(self._vectors).astype(self.dtype),
                self._rows,
            )
            self.index += 1
            self.written += len(self._rows)
            self._vectors, self._rows = [], []

    def close(self) -> None:
        """Write what is queued, and this run's count of skipped samples (``skipped-RRR.json``)."""
        self.flush()
        write_json(skipped_record(self.folder, self.rank), {"skipped_samples": self.skipped})


def skipped_record(folder: str | os.PathLike[str], rank: int) -> Path:
    """Rank ``rank``'s record of its last run into ``folder`` (its skipped samples), written as it ends."""
    return Path(folder) / f"{SKIPPED_PREFIX}{rank:03d}.json"


def skipped_samples(folder: str | os.PathLike[str]) -> int:
    """Corrupt samples the last run into ``folder`` skipped, over all its ranks (0 if none said)."""
    return sum(
        int(json.loads(path.read_text(encoding="utf-8"))["skipped_samples"])
        for path in Path(folder).glob(f"{SKIPPED_PREFIX}*.json")
    )


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


@dataclass
class EmbeddingFolderOutput:
    """What an embedding folder holds.

    Attributes:
        vectors: ``(N, D)`` float32, unit norm, in part order.
        rows: One metadata dict per vector (``key``, ``labels``, ``patient_id``, ...).
        info: The fingerprint of the model that made them, ``modality``, ``skipped_samples``
            and ``dim``.
    """

    vectors: np.ndarray
    rows: list[dict[str, Any]]
    info: dict[str, Any]


def load_embedding_folder(folder: str | os.PathLike[str]) -> EmbeddingFolderOutput:
    """The vectors, rows and info of a folder written by `convirt embed`.

    Raises:
        FileNotFoundError: The folder holds no complete part.
        ValueError: A part's vectors and rows disagree in number.
    """
    vectors, rows = read_embeddings(folder)
    info = _info_of(folder)
    return EmbeddingFolderOutput(vectors, rows, {**info, "dim": int(vectors.shape[1])})


@dataclass
class EmbeddingPart:
    """One complete part of an embedding folder, read when asked.

    Attributes:
        name: ``part-RRR-NNNNNN``.
        count: Its vectors (from the ``.npy`` header; nothing else read).
        folder: The embedding folder.
    """

    name: str
    count: int
    folder: Path

    def vectors(self) -> np.ndarray:
        """``(count, D)`` as stored (float32 or float16), memory-mapped: only the rows used are read."""
        return np.load(self.folder / f"{self.name}.npy", mmap_mode="r")

    def rows(self) -> Iterator[dict[str, Any]]:
        """Its metadata rows, one at a time."""
        with open(self.folder / f"{self.name}.jsonl", encoding="utf-8") as handle:
            yield from (json.loads(line) for line in handle)


@dataclass
class EmbeddingPartsOutput:
    """The parts of an embedding folder, in order, and its info (with ``dim``, as :func:`load_embedding_folder`'s)."""

    parts: list[EmbeddingPart]
    info: dict[str, Any]


def list_embedding_parts(folder: str | os.PathLike[str]) -> EmbeddingPartsOutput:
    """The complete parts of a folder written by `convirt embed`, without reading their vectors or rows.

    Raises:
        FileNotFoundError: The folder holds no complete part.
        ValueError: Parts of different dimensions.
    """
    paths = completed_parts(folder)
    if not paths:
        raise FileNotFoundError(f"no embeddings in {folder}: run `convirt embed` first")
    parts, dims = [], set()
    for path in paths:
        shape = np.load(path.with_suffix(".npy"), mmap_mode="r").shape
        parts.append(EmbeddingPart(path.stem, int(shape[0]), Path(folder)))
        dims.add(int(shape[1]))
    if len(dims) != 1:
        raise ValueError(f"{folder} holds parts of dimensions {sorted(dims)}: embed into one folder per model")
    return EmbeddingPartsOutput(parts, {**_info_of(folder), "dim": dims.pop()})


def open_embedding_folder(folder: str | os.PathLike[str], fingerprint: dict[str, Any]) -> set[str]:
    """Start (or resume) a run into ``folder``: the keys already embedded there, to skip.

    ``fingerprint`` (the model's, with ``modality``) is written to ``info.json``, keeping the
    precision of the vectors already there (a run records its own once its first batch settles it:
    :func:`record_precision`); the last run's counts of skipped samples are cleared.

    Raises:
        ValueError: The folder holds parts of another model or modality (or of a precision that
            ``fingerprint`` names and that is not shown to agree: :func:`convirt._embedding_space.check_same_space`).
    """
    out = Path(folder)
    modality = fingerprint.get("modality", "image")
    info = dict(fingerprint)
    if completed_parts(out) and (before := _info_of(out)):
        check_same_space(before, fingerprint, what="output folder")
        if before.get("modality", "image") != modality:
            raise ValueError(
                f"{out} holds {before.get('modality', 'image')} embeddings; this run makes {modality} "
                "embeddings: use another output folder"
            )
        info.update({key: before[key] for key in (*PRECISION_KEYS, "precisions") if key in before})
    write_json(out / INFO, info)
    for stale in out.glob(f"{SKIPPED_PREFIX}*.json"):  # a count per rank of the run before
        stale.unlink(missing_ok=True)  # the ranks of a distributed run all clear them, at the same time
    return embedded_keys(out)


def record_precision(folder: str | os.PathLike[str], made: dict[str, Any]) -> None:
    """Record the precision a run makes its vectors at (``precision``, ``device``,
    ``precision_agreement``) before it writes any of them.

    Where the folder already holds vectors of another precision, both must be shown to agree with
    float32, and the folder then records the weaker of the two (the reduced one, the least
    agreement) with every precision it holds in ``precisions``: a resume never hides what is there.

    Raises:
        ValueError: The folder's vectors and this run's would be of precisions not shown to agree.
    """
    info = _info_of(folder)
    if not (completed_parts(folder) and info.get("precision") is not None):
        write_json(Path(folder) / INFO, {**info, **made})
        return
    check_same_space(info, {**info, **made}, what="output folder")
    held, making = canonical_precision(info["precision"]), canonical_precision(made["precision"])
    if held == making:
        agreements = [v for v in (info.get("precision_agreement"), made.get("precision_agreement")) if v is not None]
        merged = {"precision_agreement": min(agreements) if agreements else None}
    else:  # both shown to agree with float32: keep the reduced one with the least agreement
        candidates = [c for c in (info, made) if canonical_precision(c["precision"]) != "float32"]
        weakest = min(candidates, key=lambda c: float(c.get("precision_agreement") or 0.0))
        merged = {key: weakest.get(key) for key in PRECISION_KEYS}
        merged["precisions"] = sorted({*info.get("precisions", [held]), making})
    write_json(Path(folder) / INFO, {**info, **merged})


def close_embedding_folder(folder: str | os.PathLike[str]) -> tuple[int, int]:
    """End a run into ``folder``: record the skipped samples in ``info.json``.

    Returns:
        The vectors the folder holds, and the corrupt samples this run skipped (all ranks).
    """
    skipped = skipped_samples(folder)
    write_json(Path(folder) / INFO, {**_info_of(folder), "skipped_samples": skipped})
    return len(embedded_keys(folder)), skipped


def _info_of(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / INFO
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# Encodes every batch into the sinks it opens by rank (one process, or the ranks of a data-parallel run).
