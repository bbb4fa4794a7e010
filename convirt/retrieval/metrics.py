"""Label-aware retrieval metrics: a neighbour is relevant when its finding set equals the query's."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np


def same_patient_exclusions(query_patients: Sequence[str], index_patients: Sequence[str]) -> list[set[int]]:
    """For each query, the index ids (row positions) of the query's own patient.

    Same-patient hits inflate every retrieval number (a patient's other films look alike), so
    evaluation leaves them out by default.
    """
    rows: dict[str, set[int]] = defaultdict(set)
    for position, patient in enumerate(index_patients):
        rows[patient].add(position)
    return [rows.get(patient, set()) for patient in query_patients]


def _kept(ids: np.ndarray, excluded: set[int], k: int, row: int) -> list[int]:
    kept = [int(i) for i in ids if i >= 0 and int(i) not in excluded][:k]
    if len(kept) < k:
        raise ValueError(
            f"query {row} has {len(kept)} neighbours left after exclusions, fewer than k={k}; search more candidates"
        )
    return kept


def per_query_retrieval(
    neighbour_ids: np.ndarray,
    query_sets: Sequence[frozenset[str]],
    index_sets: Sequence[frozenset[str]],
    k: int,
    exclude: Sequence[set[int]] | None = None,
) -> dict[str, np.ndarray]:
    """Each query's precision@k, average precision@k and recall@k (arguments as
    :func:`retrieval_metrics`); the last two are NaN for a query with no relevant item, so that a
    bootstrap over queries can resample them.

    Raises:
        ValueError: Shapes do not match, no queries, or fewer than ``k`` candidates remain.
    """
    if neighbour_ids.shape[0] != len(query_sets):
        raise ValueError(f"{neighbour_ids.shape[0]} result rows for {len(query_sets)} queries")
    if len(query_sets) == 0:
        raise ValueError("no queries")
    exclude = exclude if exclude is not None else [set() for _ in query_sets]
    totals = Counter(index_sets)
    shape = (len(query_sets),)
    precision, average_precision, recall = np.zeros(shape), np.full(shape, np.nan), np.full(shape, np.nan)
    for row, ids in enumerate(neighbour_ids):
        target = query_sets[row]
        hits = np.array([index_sets[i] == target for i in _kept(ids, exclude[row], k, row)], dtype=float)
        precision[row] = hits.mean()
        relevant = totals[target] - sum(1 for i in exclude[row] if i < len(index_sets) and index_sets[i] == target)
        if relevant > 0:
            precision_at_i = np.cumsum(hits) / np.arange(1, k + 1)
            average_precision[row] = float((precision_at_i * hits).sum() / min(relevant, k))
            recall[row] = float(hits.sum() / relevant)
    return {"precision": precision, "average_precision": average_precision, "recall": recall}


def _nanmean(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


def retrieval_metrics(
    neighbour_ids: np.ndarray,
    query_sets: Sequence[frozenset[str]],
    index_sets: Sequence[frozenset[str]],
    k: int,
    exclude: Sequence[set[int]] | None = None,
) -> dict[str, float | int]:
    """Precision@k, mAP@k and recall@k of image-to-image search.

    Args:
        neighbour_ids: ``(Q, M)`` index ids (row positions of ``index_sets``), best first,
            ``M >= k`` plus room for exclusions; ``-1`` for none.
        query_sets: Finding set of each query (normal is the empty set).
        index_sets: Finding set of each indexed item.
        k: Neighbours counted per query.
        exclude: Per query, index ids never counted (the query itself, its patient's images).

    Returns:
        ``precision_at_k``, ``map_at_k`` and ``recall_at_k`` (means over queries that have at
        least one relevant item; the others are counted in ``queries_without_relevant``), and
        ``queries``.

    Raises:
        ValueError: Shapes do not match, no queries, or fewer than ``k`` candidates remain.
    """
    per = per_query_retrieval(neighbour_ids, query_sets, index_sets, k, exclude)
    return {
        f"precision_at_{k}": float(per["precision"].mean()),
        f"map_at_{k}": _nanmean(per["average_precision"]),
        f"recall_at_{k}": _nanmean(per["recall"]),
        "queries": len(query_sets),
        "queries_without_relevant": int(np.isnan(per["recall"]).sum()),
    }


def label_precision_at_k(
    neighbour_ids: np.ndarray,
    query_sets: Sequence[frozenset[str]],
    index_sets: Sequence[frozenset[str]],
    k: int,
    query_ids: Sequence[int] | None = None,
) -> float:
    """Mean fraction of the top-``k`` neighbours whose finding set equals the query's.

    ``query_ids`` gives the index id of each query when the queries are themselves indexed:
    that id is skipped, so an image never retrieves itself.
    """
    exclude = [{int(i)} for i in query_ids] if query_ids is not None else None
    return float(retrieval_metrics(neighbour_ids, query_sets, index_sets, k, exclude)[f"precision_at_{k}"])


def per_query_recall(
    neighbour_ids: np.ndarray, targets: Sequence[set[int]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, np.ndarray]:
    """Per query and cut-off, whether a target is among its top ``k`` (``recall_at_K``: ``(Q,)``
    booleans); arguments and errors as :func:`recall_at_ks`."""
    if neighbour_ids.shape[0] != len(targets):
        raise ValueError(f"{neighbour_ids.shape[0]} result rows for {len(targets)} queries")
    if len(targets) == 0:
        raise ValueError("no queries")
    if any(not target for target in targets):
        raise ValueError("every query needs at least one target")
    if neighbour_ids.shape[1] < max(ks):
        raise ValueError(f"{neighbour_ids.shape[1]} neighbours per query, fewer than k={max(ks)}")
    return {
        f"recall_at_{k}": np.array(
            [bool(targets[q] & {int(i) for i in row[:k]}) for q, row in enumerate(neighbour_ids)]
        )
        for k in ks
    }


def recall_at_ks(
    neighbour_ids: np.ndarray, targets: Sequence[set[int]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Cross-modal recall: the fraction of queries with at least one target among their top ``k``.

    Args:
        neighbour_ids: ``(Q, M)`` gallery ids, best first, ``M >= max(ks)``; ``-1`` for none.
        targets: Per query, the gallery ids that count as a correct match (for image -> text:
            the image's own report and every report identical to it after normalisation).
        ks: Cut-offs.

    Returns:
        ``recall_at_1`` ... per ``k``.

    Raises:
        ValueError: Shapes disagree, no queries, a query without target, or too few columns.
    """
    return {key: float(hits.mean()) for key, hits in per_query_recall(neighbour_ids, targets, ks).items()}


def image_text_recall(
    image_vectors: np.ndarray,
    image_groups: Sequence[int],
    text_vectors: np.ndarray,
    text_groups: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    per_query: bool = False,
) -> dict[str, Any]:
    """Image->text and text->image recall@k by exact search; a match is any item of the same group.

    Groups say which reports are the same text (an image's own report and every report identical
    to it after normalisation: archives repeat normal reports). A text whose group has no image
    is left out of text->image.

    Args:
        image_vectors: ``(I, D)`` image embeddings; ``image_groups`` their reports' groups.
        text_vectors: ``(T, D)`` report embeddings; ``text_groups`` their groups.
        ks: Cut-offs (those above the gallery sizes are dropped).
        per_query: Also return ``per_query``: each way's hits per query (:func:`per_query_recall`).

    Returns:
        ``image_to_text`` and ``text_to_image`` (``recall_at_K`` each), ``images``, ``texts``.
    """
    from convirt.retrieval.index import build_index, search

    depth = max(ks)
    text_members: dict[int, set[int]] = {}
    for i, group in enumerate(text_groups):
        text_members.setdefault(group, set()).add(i)
    image_members: dict[int, set[int]] = {}
    for i, group in enumerate(image_groups):
        image_members.setdefault(group, set()).add(i)
    text_index, _ = build_index(text_vectors, "Flat")
    _, to_text = search(text_index, image_vectors, min(depth, len(text_vectors)))
    image_index, _ = build_index(image_vectors, "Flat")
    _, to_image = search(image_index, text_vectors, min(depth, len(image_vectors)))
    kept = [k for k in ks if k <= min(depth, len(text_vectors), len(image_vectors))]
    image_targets = [image_members.get(g, set()) for g in text_groups]
    answered = [i for i, target in enumerate(image_targets) if target]
    hits = {
        "image_to_text": per_query_recall(to_text, [text_members[g] for g in image_groups], kept),
        "text_to_image": per_query_recall(to_image[answered], [image_targets[i] for i in answered], kept),
    }
    result: dict[str, Any] = {
        way: {key: float(found.mean()) for key, found in by_k.items()} for way, by_k in hits.items()
    }
    result.update(images=len(image_vectors), texts=len(text_vectors))
    if per_query:
        result["per_query"] = hits
    return result
