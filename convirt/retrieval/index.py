"""Build, save, load, merge and search FAISS indexes of L2-normalised embeddings (inner product).

An index folder holds ``index.faiss`` and ``info.json``: the factory string, metric, dimension,
count and the fingerprint of the model whose embeddings it holds. Every index built in memory is
wrapped in ``IDMap2`` so that results carry the caller's ids and vectors can be read back; an IVF
index built out of core (:mod:`convirt.retrieval.ondisk`) keeps its ids in its inverted lists,
which lie beside it in ``lists.ivfdata``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from convirt._embedding_space import check_same_space
from convirt._io import atomic_folder

INDEX_FILE = "index.faiss"
INFO_FILE = "info.json"
METADATA_FILE = "metadata.jsonl"  # one JSON row per indexed vector, by id
LISTS_FILE = "lists.ivfdata"  # the inverted lists of an index built out of core (faiss.OnDiskInvertedLists)


@dataclass
class IndexInfo:
    """What an index is: stored as JSON beside it."""

    factory: str
    metric: str
    dim: int
    count: int
    fingerprint: dict[str, Any] = field(default_factory=dict)
    refine: bool = False
    search_params: str = ""


def set_search_params(index: faiss.Index, params: str) -> None:
    """Apply FAISS search-time parameters, e.g. ``"nprobe=16,efSearch=64,k_factor_rf=4"``.

    Raises:
        ValueError: A parameter the index does not have.
    """
    if not params:
        return
    try:
        faiss.ParameterSpace().set_index_parameters(index, params)  # type: ignore[arg-type]
    except RuntimeError as error:
        raise ValueError(
            f"bad search parameters {params!r} for this index: {str(error).splitlines()[0].split(':')[-1].strip()}"
        ) from None


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


def _normalised(array: np.ndarray) -> np.ndarray:
    out = array.copy()
    faiss.normalize_L2(out)
    return out


@contextlib.contextmanager
def quiet_faiss_prints() -> Iterator[None]:
    """Drop what faiss's C++ code prints to standard output meanwhile (its on-disk inverted lists say
    where they map their file), so that a command's own output (``--json``) stays whole."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    libc.fflush(None)
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def train_on(index: faiss.Index, sample: np.ndarray, factory: str) -> None:
    """Train ``index`` on ``(S, D)`` normalised vectors.

    Raises:
        ValueError: Too few vectors for the factory (its lists or codebooks); the message says what to change.
    """
    try:
        index.train(sample)
    except RuntimeError as error:
        reason = str(error).splitlines()[0].split("Error: ")[-1]
        raise ValueError(
            f"cannot train {factory!r} on {len(sample)} vectors ({reason}); "
            "give more vectors or choose a smaller index (fewer lists, fewer PQ bits)"
        ) from None


def build_index(
    vectors: np.ndarray,
    factory: str = "Flat",
    ids: np.ndarray | None = None,
    refine: bool = False,
    train_size: int = 100_000,
    batch_size: int = 65_536,
    fingerprint: dict[str, Any] | None = None,
    search_params: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[faiss.Index, IndexInfo]:
    """Build an inner-product index from a FAISS factory string (``Flat``, ``HNSW32``, ``IVF256,PQ16``).

    Vectors are L2-normalised first, so inner product is cosine similarity.

    Args:
        vectors: ``(N, D)`` embeddings.
        factory: FAISS factory string of the index proper (``IDMap2`` is added around it).
        ids: ``(N,)`` int64 ids returned by searches; default ``0..N-1``.
        refine: Re-rank the candidates of an approximate index with exact inner products
            (FAISS ``RFlat``); costs a copy of the vectors.
        train_size: Vectors sampled (seeded) to train indexes that need training (IVF, PQ).
        batch_size: Vectors added per call, so memory stays flat beyond the input itself.
        fingerprint: Model fingerprint stored with the index.
        search_params: Search-time parameters stored with the index and applied on load
            (see :func:`set_search_params`); default: ``k_factor_rf=4`` with ``refine``.
        seed: Seed of the training sample.
        progress: Show a progress bar while adding.

    Raises:
        ValueError: Bad vectors or ids, or a factory string FAISS does not understand.
    """
    from tqdm.auto import tqdm

    array = check_vectors(vectors)
    count, dim = array.shape
    ids = np.arange(count, dtype=np.int64) if ids is None else np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape != (count,):
        raise ValueError(f"ids must have shape ({count},), got {ids.shape}")
    if len(np.unique(ids)) != count:
        raise ValueError("ids must be unique")
    full = "IDMap2," + factory + (",RFlat" if refine and not factory.endswith("RFlat") else "")
    try:
        index = faiss.index_factory(dim, full, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(f"bad FAISS factory string {factory!r}: {str(error).splitlines()[0]}") from None
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = array if count <= train_size else array[np.sort(rng.choice(count, train_size, replace=False))]
        train_on(index, _normalised(sample), factory)
    for start in tqdm(range(0, count, batch_size), desc="index", unit="batch", disable=not progress):
        stop = min(start + batch_size, count)
        index.add_with_ids(_normalised(array[start:stop]), ids[start:stop])
    if search_params is None:
        search_params = "k_factor_rf=4" if refine else ""
    set_search_params(index, search_params)
    return index, IndexInfo(factory, "inner_product", dim, count, dict(fingerprint or {}), refine, search_params)


def save_index(
    index: faiss.Index,
    info: IndexInfo,
    output: str | os.PathLike[str],
    metadata: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Write ``index.faiss`` and ``info.json`` (and ``metadata.jsonl``: one row per id, when given)
    atomically into a folder; :func:`convirt.retrieval.load_index_folder` reads all three back.

    Raises:
        ValueError: ``metadata`` has another number of rows than the index has vectors.
    """
    if metadata is not None and len(metadata) != info.count:
        raise ValueError(f"{len(metadata)} metadata rows for an index of {info.count} vectors")
    with atomic_folder(output) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
        if metadata is not None:
            with open(tmp / METADATA_FILE, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in metadata)
    return Path(output)


def load_index(
    path: str | os.PathLike[str], mmap: bool = False, fingerprint: dict[str, Any] | None = None
) -> tuple[faiss.Index, IndexInfo]:
    """Load an index folder written by :func:`save_index`.

    Args:
        path: The index folder.
        mmap: Map the index file into memory instead of reading it (large indexes; only the
            pages a search touches are read). The on-disk lists of an index built out of core
            are always mapped, found beside ``index.faiss`` wherever the folder now is.
        fingerprint: The fingerprint of the model about to query the index; a different model
            is an error.

    Raises:
        FileNotFoundError: The folder or its files are missing.
        ValueError: ``fingerprint`` names another model than the index's.
    """
    folder = Path(path)
    if not (folder / INDEX_FILE).is_file() or not (folder / INFO_FILE).is_file():
        raise FileNotFoundError(f"no index at {folder}: build one with `convirt index build`")
    info = IndexInfo(**json.loads((folder / INFO_FILE).read_text(encoding="utf-8")))
    if fingerprint is not None:
        check_same_space(info.fingerprint, fingerprint)
    if (folder / LISTS_FILE).is_file():  # mapped by faiss whatever the flags (IO_FLAG_MMAP would skip them)
        with quiet_faiss_prints():
            index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_ONDISK_SAME_DIR)
    else:
        index = faiss.read_index(str(folder / INDEX_FILE), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
    set_search_params(index, info.search_params)
    return index, info


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of L2-normalised queries: ``(scores, ids)``, each ``(Q, k)``; id -1 is none."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    scores, ids = index.search(_normalised(check_vectors(queries, index.d)), k)
    return scores, ids


def index_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """The ids and (normalised) vectors an ``IDMap2`` index holds, in insertion order.

    Raises:
        ValueError: The index cannot give its vectors back (e.g. IVF without refinement).
    """
    if not hasattr(index, "id_map"):
        raise ValueError(
            "this index keeps no map of its ids (an IVF index built out of core, or not by convirt), so it "
            "cannot give its vectors back: query it with other embeddings (`convirt index eval --queries`)"
        )
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)  # type: ignore[attr-defined]
    try:
        vectors = index.reconstruct_batch(ids) if len(ids) else np.zeros((0, index.d))
    except RuntimeError:
        raise ValueError(
            "this index type cannot return its vectors; rebuild it with --refine, or as Flat/HNSW"
        ) from None
    return ids, vectors.astype(np.float32)


def merge_indexes(
    parts: Sequence[tuple[faiss.Index, IndexInfo]], renumber: bool = False
) -> tuple[faiss.Index, IndexInfo]:
    """Merge indexes built in parts (per rank or per archive) into one.

    Parts must share the factory, dimension and model fingerprint, and their ids must not
    overlap. The merged index is rebuilt from the parts' vectors, in part order, so it equals
    one build over the concatenated parts (graph indexes cannot be spliced, and a trained
    index then learns from all the parts). With ``renumber`` the ids become ``0..N-1`` in part
    order (the rows of the parts' metadata, concatenated).

    Raises:
        ValueError: No parts, parts that differ, overlapping ids, or vectors that cannot be read back.
    """
    if not parts:
        raise ValueError("no indexes to merge")
    first = parts[0][1]
    for _, info in parts[1:]:
        if (info.factory, info.dim, info.refine) != (first.factory, first.dim, first.refine):
            raise ValueError(
                f"cannot merge a {info.factory!r} index of dim {info.dim} into a "
                f"{first.factory!r} index of dim {first.dim}"
            )
        check_same_space(first.fingerprint, info.fingerprint, what="part")
    all_ids, all_vectors = zip(*(index_vectors(index) for index, _ in parts))
    ids = np.arange(sum(len(i) for i in all_ids), dtype=np.int64) if renumber else np.concatenate(all_ids)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("the parts share ids; give each part its own id range")
    return build_index(
        np.concatenate(all_vectors),
        first.factory,
        ids=ids,
        refine=first.refine,
        fingerprint=first.fingerprint,
        search_params=first.search_params,
    )
