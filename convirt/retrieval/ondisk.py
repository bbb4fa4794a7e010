"""IVF indexes larger than memory, built from embedding parts with faiss's own on-disk inverted lists.

faiss's way (its wiki, "Indexes that do not fit in RAM"): train an empty IVF index on a seeded
sample drawn across the parts; fill copies of it with blocks of parts ("sub-indexes", each held in
memory while it fills, in one job or in many); then merge the sub-indexes' inverted lists into
one ``faiss.OnDiskInvertedLists`` file. The ids in the lists are the row numbers over all parts,
so each job knows its ids from the part sizes alone.

Folders:
    trained (``--train-only``): ``trained.faiss`` (the empty trained index) and ``trained.json``
        (the index info, seed, sample size, and every part's name and size).
    sub-index (`convirt index add`): ``sub.faiss`` (the trained index holding one block of parts),
        ``sub.json`` (its first id and count, the trained index's SHA-256) and ``metadata.jsonl``.
    index (merged): ``index.faiss`` and ``lists.ivfdata`` (its lists, mapped when read), with
        ``info.json`` and ``metadata.jsonl`` as for an index built in memory: every reader reads it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from convirt._embedding_space import check_same_space
from convirt._io import atomic_folder, file_sha256, write_json
from convirt._memory import available_memory
from convirt.retrieval.index import (
    INDEX_FILE,
    INFO_FILE,
    LISTS_FILE,
    METADATA_FILE,
    IndexInfo,
    _normalised,
    check_vectors,
    quiet_faiss_prints,
    set_search_params,
    train_on,
)

TRAINED_FILE, TRAINED_INFO = "trained.faiss", "trained.json"
SUB_FILE, SUB_INFO = "sub.faiss", "sub.json"
# A sub-index fills in memory: about this much of codes and ids per sub-index of a one-job build
# (faiss grows each list's vector by doubling, so up to twice this is held).
SUB_BYTES = 256 * 2**20
# The raw float32 vectors past this share of the memory available at start go out of core: the
# in-memory build holds them all, a normalised copy of each batch and the index as it fills (for
# Flat or SQ8, as large again), next to whatever else runs on the machine.
MEMORY_SHARE = 0.25


class VectorPart(Protocol):
    """A part of the vectors to index (an embedding folder's :class:`convirt.embeddings.EmbeddingPart`, an
    :class:`ArrayPart`): ``vectors()``, ``(count, D)`` floats, maybe memory-mapped; ``rows()``, ``count`` rows."""

    @property
    def name(self) -> str: ...
    @property
    def count(self) -> int: ...
    def vectors(self) -> np.ndarray: ...
    def rows(self) -> Iterable[dict[str, Any]]: ...


@dataclass
class ArrayPart:
    """A part held as an array (or a memory-mapped ``.npy``); rows default to ``{"key": "NAME/I"}``."""

    name: str
    array: np.ndarray
    metadata: Sequence[dict[str, Any]] | None = None

    @property
    def count(self) -> int:
        return len(self.array)

    def vectors(self) -> np.ndarray:
        return self.array

    def rows(self) -> Iterable[dict[str, Any]]:
        if self.metadata is not None:
            return iter(self.metadata)
        return ({"key": f"{self.name}/{i}"} for i in range(self.count))


def out_of_core_needed(count: int, dim: int, available: int | None = None) -> bool:
    """Whether ``count`` x ``dim`` float32 vectors are past :data:`MEMORY_SHARE` of ``available`` bytes
    (default: :func:`available_memory`)."""
    return count * dim * 4 > MEMORY_SHARE * (available_memory() if available is None else available)


def train_ivf(
    parts: Sequence[VectorPart],
    output: str | os.PathLike[str],
    factory: str,
    train_size: int = 100_000,
    seed: int = 0,
    fingerprint: dict[str, Any] | None = None,
    search_params: str | None = None,
) -> IndexInfo:
    """Train an empty IVF index on a seeded sample of the parts and save it as a trained folder.

    The sample is the one :func:`convirt.retrieval.build_index` draws from the parts concatenated
    (same ``seed``, same ``train_size``), read part by part: the same training, without the rest.

    Args:
        parts: All the parts, in id order.
        output: The trained folder.
        factory: An IVF factory string (``IVF4096,PQ32``, ``IVF1024,SQ8``, ``OPQ32,IVF4096,PQ32``).
        train_size, seed: The training sample.
        fingerprint: The model fingerprint stored with the index.
        search_params: Search-time parameters stored with the index (``nprobe=32``).

    Raises:
        ValueError: No vectors, parts of different dimensions, not an IVF factory, or too few vectors.
    """
    plan = _plan(parts, factory, train_size, seed, fingerprint, search_params)
    info = IndexInfo(**plan["info"])
    index = _ivf_factory(info.dim, factory)
    counts = [int(part.count) for part in parts]
    rng = np.random.default_rng(seed)
    total = info.count
    chosen = np.arange(total) if total <= train_size else np.sort(rng.choice(total, train_size, replace=False))
    sample = _gather(parts, counts, chosen, info.dim)
    faiss.normalize_L2(sample)  # in place: the sample is this function's own copy
    train_on(index, sample, factory)
    set_search_params(index, info.search_params)
    with atomic_folder(output) as tmp:
        faiss.write_index(index, str(tmp / TRAINED_FILE))
        write_json(tmp / TRAINED_INFO, plan)
    return info


def add_parts(
    trained: str | os.PathLike[str],
    parts: Sequence[VectorPart],
    output: str | os.PathLike[str],
    block: range | None = None,
    fingerprint: dict[str, Any] | None = None,
    batch_size: int = 65_536,
    progress: bool = False,
) -> dict[str, Any]:
    """Fill a copy of a trained index with a block of parts and save it as a sub-index folder.

    Args:
        trained: A folder written by :func:`train_ivf`.
        parts: All the parts the index was trained for, in order (each job lists them all).
        output: The sub-index folder.
        block: The parts to add, a contiguous range of positions in ``parts`` (:func:`part_block`);
            default all. An empty range makes an empty sub-index (a job of an array larger than the
            parts: it merges like the others).
        fingerprint: The parts' model fingerprint, checked against the trained index's.
        batch_size: Vectors normalised and added per call.
        progress: Show a progress bar.

    Returns:
        The sub-index's ``sub.json``: ``first`` id, ``count``, ``total``, ``parts`` and the trained index's SHA-256.

    Raises:
        ValueError: Parts other than those trained for (or of another model), a block that is not
            contiguous, or a part whose vectors or rows disagree with its size.
    """
    from tqdm.auto import tqdm

    plan = _read_json(Path(trained) / TRAINED_INFO, "a trained index (`convirt index build --train-only`)")
    if _layout(parts) != plan["parts"]:
        raise ValueError(
            f"these parts are not those {trained} was trained for ({len(plan['parts'])} parts, "
            f"{plan['info']['count']:,} vectors): train again on the embedding folder as it is now"
        )
    if fingerprint is not None:
        check_same_space(plan["info"]["fingerprint"], fingerprint, what="trained index")
    block = range(len(parts)) if block is None else block
    if block.step != 1 or block.start < 0 or block.stop > len(parts) or block.stop < block.start:
        raise ValueError(f"a sub-index holds a contiguous range of the {len(parts)} parts, not {block}")
    index = faiss.read_index(str(Path(trained) / TRAINED_FILE))
    offsets = np.concatenate([[0], np.cumsum([part.count for part in parts])]).astype(np.int64)
    dim = int(plan["info"]["dim"])
    with atomic_folder(output) as tmp:
        with open(tmp / METADATA_FILE, "w", encoding="utf-8") as metadata:
            for position in tqdm(block, desc="index add", unit="part", disable=not progress):
                part, start = parts[position], int(offsets[position])
                vectors = part.vectors()
                if vectors.shape[0] != part.count:
                    raise ValueError(f"part {part.name}: {vectors.shape[0]} vectors, not {part.count}")
                for first in range(0, part.count, batch_size):
                    batch = check_vectors(vectors[first : first + batch_size], dim)
                    index.add_with_ids(_normalised(batch), np.arange(start + first, start + first + len(batch)))
                del vectors  # unmapped: the pages read leave this process
                written = 0
                for row in part.rows():
                    metadata.write(json.dumps(row) + "\n")
                    written += 1
                if written != part.count:
                    raise ValueError(f"part {part.name}: {written} metadata rows for {part.count} vectors")
        faiss.write_index(index, str(tmp / SUB_FILE))
        sub = {
            "first": int(offsets[block.start]),
            "count": int(offsets[block.stop] - offsets[block.start]),
            "total": int(offsets[-1]),
            "parts": [parts[position].name for position in block],
            "trained_sha256": file_sha256(Path(trained) / TRAINED_FILE),
            "info": plan["info"],
        }
        write_json(tmp / SUB_INFO, sub)
    return sub


def part_block(count: int, number: int, total: int) -> range:
    """Positions of job ``number`` of ``total`` (from 1) among ``count`` parts: contiguous blocks of near-equal size."""
    if not 1 <= number <= total:
        raise ValueError(f"job {number} of {total}: expected 1 <= number <= total")
    return range((number - 1) * count // total, number * count // total)


def is_sub_index(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a sub-index folder (:func:`add_parts`), to be merged."""
    return (Path(folder) / SUB_INFO).is_file()


def merge_sub_indexes(subs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str]) -> IndexInfo:
    """Merge sub-indexes into one index folder whose inverted lists lie on disk, in ``lists.ivfdata``.

    faiss merges the lists (``OnDiskInvertedLists.merge_from_multiple``) from the sub-indexes
    mapped, not read; the metadata rows are copied in id order. Memory stays near what the
    lists' pages need while they are copied (the kernel may drop them at any time).

    Raises:
        ValueError: Not sub-indexes, sub-indexes of different trained indexes, or ids missing or given twice.
    """
    found = [(Path(sub), _read_json(Path(sub) / SUB_INFO, "a sub-index (`convirt index add`)")) for sub in subs]
    found.sort(key=lambda item: (int(item[1]["first"]), int(item[1]["count"])))  # an empty one first
    _check_cover(found)
    indexes = [faiss.read_index(str(folder / SUB_FILE), faiss.IO_FLAG_MMAP) for folder, _ in found]
    lists = faiss.InvertedListsPtrVector()  # type: ignore[attr-defined]
    for index in indexes:
        lists.push_back(faiss.extract_index_ivf(index).invlists)
    info = IndexInfo(**found[0][1]["info"])
    with atomic_folder(output) as tmp:
        merged = faiss.read_index(str(found[0][0] / SUB_FILE), faiss.IO_FLAG_MMAP)  # its quantizer and codebooks
        ivf = faiss.extract_index_ivf(merged)
        ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(tmp / LISTS_FILE))
        with quiet_faiss_prints():
            count = ondisk.merge_from_multiple(lists.data(), lists.size(), False)
        ivf.replace_invlists(ondisk, True)
        ondisk.this.disown()  # type: ignore[attr-defined]  # the index owns it now
        merged.ntotal = ivf.ntotal = count
        ondisk.filename = LISTS_FILE  # found beside index.faiss when read (IO_FLAG_ONDISK_SAME_DIR)
        faiss.write_index(merged, str(tmp / INDEX_FILE))
        del merged, ivf, lists, indexes
        info.count = int(count)
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
        with open(tmp / METADATA_FILE, "wb") as metadata:
            for folder, _ in found:
                with open(folder / METADATA_FILE, "rb") as rows:
                    shutil.copyfileobj(rows, metadata, 2**20)
    return info


def build_out_of_core(
    parts: Sequence[VectorPart],
    output: str | os.PathLike[str],
    factory: str,
    train_size: int = 100_000,
    seed: int = 0,
    fingerprint: dict[str, Any] | None = None,
    search_params: str | None = None,
    sub_bytes: int = SUB_BYTES,
    progress: bool = False,
) -> IndexInfo:
    """Train, add and merge in this process: an index folder with its lists on disk, memory bounded.

    The work lies in ``OUTPUT.work`` (the trained index, then sub-indexes of about ``sub_bytes``
    of codes each); a run killed midway resumes from what is there, and the folder is removed once
    the index is merged.
    """
    work = Path(output).with_name(Path(output).name + ".work")
    trained = work / "trained"
    plan = _plan(parts, factory, train_size, seed, fingerprint, search_params)
    if not ((trained / TRAINED_INFO).is_file() and _read_json(trained / TRAINED_INFO, "") == plan):
        shutil.rmtree(work, ignore_errors=True)  # another index or other parts: start again
        train_ivf(parts, trained, factory, train_size, seed, fingerprint, search_params)
    per_vector = faiss.extract_index_ivf(faiss.read_index(str(trained / TRAINED_FILE))).code_size + 8
    subs = []
    for number, block in enumerate(_blocks([part.count for part in parts], max(1, sub_bytes // per_vector))):
        sub = work / f"sub-{number:04d}"
        wanted = [parts[position].name for position in block]
        if not (is_sub_index(sub) and _read_json(sub / SUB_INFO, "")["parts"] == wanted):
            add_parts(trained, parts, sub, block, progress=progress)
        subs.append(sub)
    info = merge_sub_indexes(subs, output)
    shutil.rmtree(work)
    return info


def _ivf_factory(dim: int, factory: str) -> faiss.Index:
    if "RFlat" in factory or "Refine" in factory:
        raise ValueError(
            f"{factory!r}: exact re-ranking keeps every vector in memory; an index built out of core cannot have it"
        )
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        faiss.extract_index_ivf(index)
    except RuntimeError as error:
        raise ValueError(
            f"{factory!r} cannot be built out of core ({str(error).splitlines()[0].split('Error: ')[-1]}): "
            "give an IVF factory string, e.g. 'IVF4096,PQ32' or 'IVF1024,SQ8'"
        ) from None
    return index


def _layout(parts: Sequence[VectorPart]) -> list[list[Any]]:
    return [[part.name, int(part.count)] for part in parts]


def _plan(
    parts: Sequence[VectorPart],
    factory: str,
    train_size: int,
    seed: int,
    fingerprint: dict[str, Any] | None,
    search_params: str | None,
) -> dict[str, Any]:
    """What ``trained.json`` holds: the index info, the sample asked for, every part's name and size."""
    total = sum(int(part.count) for part in parts)
    if not total:
        raise ValueError("no vectors to index: the parts are empty")
    dim = int(parts[0].vectors().shape[1])
    info = IndexInfo(factory, "inner_product", dim, total, dict(fingerprint or {}), False, search_params or "")
    return json.loads(
        json.dumps({"info": asdict(info), "seed": seed, "train_size": train_size, "parts": _layout(parts)})
    )


def _gather(parts: Sequence[VectorPart], counts: list[int], rows: np.ndarray, dim: int) -> np.ndarray:
    """The float32 vectors at global ``rows`` (sorted), read part by part."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    bounds = np.searchsorted(rows, offsets)
    for position, part in enumerate(parts):
        low, high = bounds[position], bounds[position + 1]
        if high > low:
            vectors = part.vectors()
            out[low:high] = check_vectors(vectors[rows[low:high] - offsets[position]], dim)
            del vectors
    return out


def _blocks(counts: list[int], per_block: int) -> list[range]:
    """Contiguous ranges of parts of at most ``per_block`` vectors each (a larger part alone)."""
    blocks, start, held = [], 0, 0
    for position, count in enumerate(counts):
        if held and held + count > per_block:
            blocks.append(range(start, position))
            start, held = position, 0
        held += count
    blocks.append(range(start, len(counts)))
    return blocks


def _check_cover(found: list[tuple[Path, dict[str, Any]]]) -> None:
    """Sub-indexes (sorted by first id) of one trained index, covering every id once."""
    if not found:
        raise ValueError("no sub-indexes to merge")
    first_folder, first = found[0]
    expected = 0
    for folder, sub in found:
        if sub["trained_sha256"] != first["trained_sha256"]:
            raise ValueError(f"{folder} was filled from another trained index than {first_folder}: add its parts again")
        if sub["first"] < expected:
            raise ValueError(f"{folder} holds ids {sub['first']}.. that another sub-index holds too: give each once")
        if sub["first"] > expected:
            raise ValueError(f"ids {expected}..{sub['first'] - 1} are in no sub-index: add those parts and merge again")
        expected = sub["first"] + sub["count"]
    if expected != first["total"]:
        raise ValueError(f"ids {expected}..{first['total'] - 1} are in no sub-index: add those parts and merge again")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path.parent} is not {what}: no {path.name}")
    return dict(json.loads(path.read_text(encoding="utf-8")))
