"""kNN diagnosis: per-finding scores from a similarity-weighted vote of an image's neighbours."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def knn_scores(
    neighbour_ids: np.ndarray,
    neighbour_similarities: np.ndarray,
    index_labels: np.ndarray,
    k: int,
    exclude: Sequence[set[int]] | None = None,
    temperature: float = 0.1,
) -> np.ndarray:
    """Score each finding by the softmax-weighted share of the ``k`` nearest neighbours that have it.

    Args:
        neighbour_ids: ``(Q, M)`` index ids (rows of ``index_labels``), best first; ``-1`` for none.
        neighbour_similarities: ``(Q, M)`` cosine similarities of those neighbours.
        index_labels: ``(N, F)`` 0/1 finding labels of the indexed images.
        k: Neighbours that vote.
        exclude: Per query, ids that may not vote (itself, its patient's images).
        temperature: Softmax temperature of the similarity weights; small values trust the
            nearest neighbours most.

    Returns:
        ``(Q, F)`` scores in [0, 1].

    Raises:
        ValueError: Shapes disagree, or a query has no neighbour left to vote.
    """
    if neighbour_ids.shape != neighbour_similarities.shape:
        raise ValueError(f"ids {neighbour_ids.shape} and similarities {neighbour_similarities.shape} differ")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scores = np.zeros((neighbour_ids.shape[0], index_labels.shape[1]), dtype=np.float64)
    for row, (ids, sims) in enumerate(zip(neighbour_ids, neighbour_similarities)):
        skip = exclude[row] if exclude is not None else set()
        kept = [(int(i), float(s)) for i, s in zip(ids, sims) if i >= 0 and int(i) not in skip][:k]
        if not kept:
            raise ValueError(f"query {row} has no neighbour left to vote; search more candidates")
        votes = np.array([s for _, s in kept]) / temperature
        weights = np.exp(votes - votes.max())
        weights /= weights.sum()
        scores[row] = weights @ index_labels[[i for i, _ in kept]]
    return scores
