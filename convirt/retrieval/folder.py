"""The index folder `convirt index build` writes: the FAISS index, its info and one metadata row per vector.

Metadata rows are the embedding rows (``key``, ``labels``, ``patient_id``, ``path``, ...), in id
order; the library reads them as opaque dicts, all at once (:func:`load_index_folder`) or one at a
time when asked (:func:`open_index_folder`, for indexes too large to hold their rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import faiss
import numpy as np

from convirt.retrieval.index import (
    LISTS_FILE,
    METADATA_FILE,
    IndexInfo,
    build_index,
    load_index,
    merge_indexes,
    save_index,
)

Rows = TypeVar("Rows", bound=Sequence[dict[str, Any]])


@dataclass
class IndexFolderOutput(Generic[Rows]):
    """An index folder, loaded.

    Attributes:
        index: The FAISS index (ids ``0..N-1``, the rows of ``metadata``).
        info: Factory, metric, dimension, count, model fingerprint, search parameters.
        metadata: One dict per indexed vector, by id: a list, or :class:`MetadataRows` read when asked.
    """

    index: faiss.Index
    info: IndexInfo
    metadata: Rows


class MetadataRows(Sequence[dict[str, Any]]):
    """The rows of a ``metadata.jsonl``, parsed when asked: only the line offsets are held (8 bytes a row).

    Args:
        path: The file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        ends = []
        with open(self.path, "rb") as handle:
            start = 0
            while chunk := handle.read(2**24):
                ends.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10) + start + 1)
                start += len(chunk)
        self.offsets = np.concatenate([np.zeros(1, dtype=np.int64), *ends]).astype(np.int64)
        if self.offsets[-1] != start:  # a last row without its newline
            self.offsets = np.append(self.offsets, start)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, item: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, item: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, item: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(len(self)))]
        row = int(item) + len(self) if int(item) < 0 else int(item)
        if not 0 <= row < len(self):
            raise IndexError(f"row {item} of {len(self)}")
        with open(self.path, "rb") as handle:
            handle.seek(int(self.offsets[row]))
            return dict(json.loads(handle.read(int(self.offsets[row + 1] - self.offsets[row]))))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, encoding="utf-8") as handle:
            yield from (json.loads(line) for line in handle)


def build_index_folder(
    vectors: np.ndarray,
    rows: Sequence[dict[str, Any]],
    output: str | os.PathLike[str],
    factory: str = "Flat",
    **options: Any,
) -> IndexFolderOutput[list[dict[str, Any]]]:
    """Build an index of ``(N, D)`` vectors with their ``N`` metadata rows and save it as a folder.

    ``options`` are those of :func:`convirt.retrieval.build_index` (``refine``, ``train_size``,
    ``fingerprint``, ``search_params``, ``progress``).
    """
    index, info = build_index(vectors, factory, **options)
    save_index(index, info, output, metadata=list(rows))
    return IndexFolderOutput(index, info, list(rows))


def load_index_folder(
    folder: str | os.PathLike[str], mmap: bool = False, fingerprint: dict[str, Any] | None = None
) -> IndexFolderOutput[list[dict[str, Any]]]:
    """Load an index folder with all its metadata rows.

    Args:
        folder: Written by `convirt index build` or :func:`build_index_folder`.
        mmap: Map the index file instead of reading it.
        fingerprint: The fingerprint of the model about to query it; another model is an error.

    Raises:
        FileNotFoundError: The folder, its index or its metadata is missing.
        ValueError: ``fingerprint`` names another model, or the metadata and index disagree in size.
    """
    index, info = load_index(folder, mmap=mmap, fingerprint=fingerprint)
    with open(_metadata_path(folder), encoding="utf-8") as handle:
        metadata = [json.loads(line) for line in handle]
    return IndexFolderOutput(index, info, _check_rows(folder, metadata, index))


def open_index_folder(
    folder: str | os.PathLike[str], mmap: bool = False, fingerprint: dict[str, Any] | None = None
) -> IndexFolderOutput[MetadataRows]:
    """Load an index folder, its metadata rows read only when asked (:class:`MetadataRows`): what a
    search of an index too large to hold its rows needs. Arguments and errors as :func:`load_index_folder`'s."""
    index, info = load_index(folder, mmap=mmap, fingerprint=fingerprint)
    return IndexFolderOutput(index, info, _check_rows(folder, MetadataRows(_metadata_path(folder)), index))


def _metadata_path(folder: str | os.PathLike[str]) -> Path:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METADATA_FILE} in {folder}: build the index with `convirt index build`")
    return path


def _check_rows(folder: str | os.PathLike[str], metadata: Rows, index: faiss.Index) -> Rows:
    if len(metadata) != index.ntotal:
        raise ValueError(f"{Path(folder) / METADATA_FILE}: {len(metadata)} rows for an index of {index.ntotal} vectors")
    return metadata


def merge_index_folders(
    inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]
) -> IndexFolderOutput[Any]:
    """Merge index folders built in parts into one folder, renumbered ``0..N-1`` in input order; or
    merge sub-indexes (`convirt index add`) into an index whose lists lie on disk
    (:func:`convirt.retrieval.ondisk.merge_sub_indexes`), its rows then read when asked.

    Raises:
        ValueError: Sub-indexes and index folders mixed, or parts that cannot be merged.
    """
    from convirt.retrieval.ondisk import is_sub_index, merge_sub_indexes

    subs = [is_sub_index(folder) for folder in inputs]
    if any(subs):
        if not all(subs):
            raise ValueError(
                "sub-indexes (`convirt index add`) merge only with each other: leave out the index folders"
            )
        merge_sub_indexes(inputs, output)
        return open_index_folder(output)
    if on_disk := next((folder for folder in inputs if (Path(folder) / LISTS_FILE).is_file()), None):
        raise ValueError(
            f"{on_disk} was built out of core (its lists on disk): merge the sub-indexes it was made of "
            "(`convirt index add` outputs), or build one index over all the embeddings"
        )
    parts = [load_index_folder(folder) for folder in inputs]
    index, info = merge_indexes([(part.index, part.info) for part in parts], renumber=True)
    metadata = [row for part in parts for row in part.metadata]
    save_index(index, info, output, metadata=metadata)
    return IndexFolderOutput(index, info, metadata)


def patient_rows(
    metadata: Sequence[dict[str, Any]], patient: str | None = None, image_path: str | os.PathLike[str] | None = None
) -> set[int]:
    """Ids of the indexed images of one patient: ``patient``, or the patient of the indexed row whose
    ``path`` is ``image_path`` (the query is an indexed file).

    Raises:
        ValueError: Neither names a patient (the image is not an indexed file).
    """
    if patient is None and image_path is not None:
        wanted = Path(image_path).resolve()
        found = [row for row in metadata if row.get("path") and Path(row["path"]).resolve() == wanted]
        patient = found[0].get("patient_id") if found else None
    if patient is None:
        raise ValueError(
            "leaving out the query's patient needs its id: pass the patient (--patient ID); the image "
            "is not an indexed file"
        )
    return {i for i, row in enumerate(metadata) if str(row.get("patient_id", "")) == str(patient)}


def search_index_folder(
    folder: IndexFolderOutput[Any], query: np.ndarray, k: int = 5, exclude: set[int] | None = None
) -> list[dict[str, Any]]:
    """The ``k`` nearest indexed images of one ``(1, D)`` or ``(D,)`` query vector, ``exclude``'s ids
    left out: per hit ``rank`` (from 1), ``score`` (cosine, 4 decimals) and its metadata row."""
    from convirt.retrieval.index import search

    excluded = exclude or set()
    scores, ids = search(folder.index, np.asarray(query).reshape(1, -1), min(k + len(excluded), folder.index.ntotal))
    kept = [(s, i) for s, i in zip(scores[0], ids[0]) if i >= 0 and int(i) not in excluded][:k]
    return [{"rank": r + 1, "score": round(float(s), 4), **folder.metadata[i]} for r, (s, i) in enumerate(kept)]
