"""Label-aware retrieval metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def label_precision_at_k(
    neighbour_ids: np.ndarray,
    query_sets: Sequence[frozenset[str]],
    index_sets: Sequence[frozenset[str]],
    k: int,
    query_ids: Sequence[int] | None = None,
) -> float:
    """Mean fraction of the top-``k`` neighbours whose finding set equals the query's.

    Args:
        neighbour_ids: ``(Q, M)`` index ids, best first, ``M >= k`` (``-1`` for none).
        query_sets: Finding set of each query (normal is the empty set).
        index_sets: Finding set of each indexed item.
        k: Neighbours counted per query.
        query_ids: Index id of each query when the queries are themselves indexed: that id is
            skipped, so an image never retrieves itself.

    Raises:
        ValueError: Shapes do not match or fewer than ``k`` candidates.
    """
    if neighbour_ids.shape[0] != len(query_sets):
        raise ValueError(f"{neighbour_ids.shape[0]} result rows for {len(query_sets)} queries")
    if len(query_sets) == 0:
        raise ValueError("no queries")
    precisions = []
    for row, ids in enumerate(neighbour_ids):
        skip = query_ids[row] if query_ids is not None else None
        kept = [i for i in ids if i >= 0 and i != skip][:k]
        if len(kept) < k:
            raise ValueError(f"query {row} has {len(kept)} neighbours, fewer than k={k}; search more")
        precisions.append(np.mean([index_sets[i] == query_sets[row] for i in kept]))
    return float(np.mean(precisions))
