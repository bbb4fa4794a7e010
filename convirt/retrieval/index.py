"""Build, save, load and search FAISS indexes of L2-normalised embeddings (inner product)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

INDEX_FILE = "index.faiss"
INFO_FILE = "info.json"


@dataclass
class IndexInfo:
    """What an index is: stored as JSON beside it."""

    factory: str
    metric: str
    dim: int
    count: int
    fingerprint: dict[str, Any] = field(default_factory=dict)


def check_vectors(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Validate an embedding array and return it as C-contiguous float32.

    Raises:
        ValueError: Not 2-D, empty, wrong dimension, or not finite.
    """
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("no embeddings: the array is empty")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"embedding dimension {array.shape[1]} does not match the index dimension {dim}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return array


def build_index(vectors: np.ndarray, factory: str = "Flat", fingerprint: dict[str, Any] | None = None
                ) -> tuple[faiss.Index, IndexInfo]:
    """Build an inner-product index from a FAISS factory string (``Flat``, ``HNSW32``, ``IVF256,PQ16``).

    Vectors are L2-normalised first, so inner product is cosine similarity. Indexes that need
    training are trained on the vectors themselves.

    Raises:
        ValueError: Bad vectors, or a factory string FAISS does not understand.
    """
    array = check_vectors(vectors).copy()
    faiss.normalize_L2(array)
    try:
        index = faiss.index_factory(array.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"bad FAISS factory string {factory!r}: {error}") from None
    if not index.is_trained:
        index.train(array)
    index.add(array)
    return index, IndexInfo(factory, "inner_product", array.shape[1], array.shape[0], fingerprint or {})


def save_index(index: faiss.Index, info: IndexInfo, output: str | os.PathLike[str],
               extra_files: dict[str, str] | None = None) -> Path:
    """Write ``index.faiss`` and ``info.json`` (plus copies of ``extra_files``) atomically into a folder."""
    out = Path(output)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    faiss.write_index(index, str(tmp / INDEX_FILE))
    (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    for name, source in (extra_files or {}).items():
        shutil.copyfile(source, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_index(path: str | os.PathLike[str]) -> tuple[faiss.Index, IndexInfo]:
    """Load an index folder written by :func:`save_index`.

    Raises:
        FileNotFoundError: The folder or its files are missing.
    """
    folder = Path(path)
    if not (folder / INDEX_FILE).is_file() or not (folder / INFO_FILE).is_file():
        raise FileNotFoundError(f"no index at {folder}: build one with `convirt index build`")
    info = IndexInfo(**json.loads((folder / INFO_FILE).read_text(encoding="utf-8")))
    return faiss.read_index(str(folder / INDEX_FILE)), info


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of L2-normalised queries: ``(scores, ids)``, each ``(Q, k)``; id -1 is none."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    array = check_vectors(queries, index.d).copy()
    faiss.normalize_L2(array)
    scores, ids = index.search(array, k)
    return scores, ids
