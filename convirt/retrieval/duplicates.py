"""Copies of test images in training data, from pixel signatures and embedding neighbours. Arrays in.

A test image is an exact copy when its pixel digest is a training image's; a near copy when a
candidate's thumbnail correlates with its own at ``threshold`` or more and, where details are
given, the thumbnails' details at ``detail_threshold`` or more. Candidates are its
nearest training thumbnails and, where embeddings are given, its nearest training images in the
model's space: the embedding proposes, the pixels decide, so a distinct image that a model merely
finds similar (the same finding, another patient) is never flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convirt.retrieval.index import build_index, search

# Measured 2026-12-03 with 48x48 thumbnails, thumbnail / detail correlations: copies resized to 1/2
# (PNG) or 3/4 (JPEG, quality 75) >= 0.9994 / 0.991 with their source, a contrast change of x1.3
# 0.9935 / 0.968; the closest two distinct images of the shared data's 476 NIH radiographs
# 0.968 / 0.69; of the demo's phantoms (near-identical by design), 467 test against 1,814 training
# images: 39 pairs reach 0.99 in thumbnail, and none of them 0.961 in detail. So both thresholds
# flag every such copy and none of those distinct images. A crop is not caught (3% off each side: 0.82).
NEAR_THRESHOLD = 0.99
DETAIL_THRESHOLD = 0.965


@dataclass(frozen=True)
class Duplicate:
    """A test image found in the training data.

    Attributes:
        test: Row of the test image; ``train``: row of its training copy.
        kind: ``exact`` (the same pixels) or ``near`` (a resized, re-encoded or brightness-shifted copy).
        correlation: Of the two thumbnails (1.0 for an exact copy).
    """

    test: int
    train: int
    kind: str
    correlation: float


def find_duplicates(
    test_digests: list[str],
    test_thumbnails: np.ndarray,
    train_digests: list[str],
    train_thumbnails: np.ndarray,
    test_embeddings: np.ndarray | None = None,
    train_embeddings: np.ndarray | None = None,
    threshold: float = NEAR_THRESHOLD,
    candidates: int = 5,
    test_details: np.ndarray | None = None,
    train_details: np.ndarray | None = None,
    detail_threshold: float = DETAIL_THRESHOLD,
) -> list[Duplicate]:
    """The test images that have a copy among the training images, each with its closest copy.

    Args:
        test_digests, train_digests: Pixel digests (:class:`convirt.data.signatures.Signatures`).
        test_thumbnails, train_thumbnails: Centred unit-norm thumbnails, one row per image.
        test_embeddings, train_embeddings: A model's embeddings of the same images (optional):
            their nearest neighbours join the candidates.
        threshold: Thumbnail correlation from which a candidate is a near copy.
        candidates: Neighbours looked at per test image and per space.
        test_details, train_details: The thumbnails' details (optional): a near copy must also
            correlate in detail at ``detail_threshold`` or more.

    Raises:
        ValueError: Row counts disagree, or only one side's embeddings are given.
    """
    if len(test_digests) != len(test_thumbnails) or len(train_digests) != len(train_thumbnails):
        raise ValueError("digests and thumbnails must have one row per image on each side")
    if (test_embeddings is None) != (train_embeddings is None):
        raise ValueError("give the embeddings of both the test and the training images, or of neither")
    first_copy: dict[str, int] = {}
    for row, digest in enumerate(train_digests):
        first_copy.setdefault(digest, row)
    depth = min(candidates, len(train_digests))
    proposed = [search(build_index(train_thumbnails, "Flat")[0], test_thumbnails, depth)[1]]
    if test_embeddings is not None and train_embeddings is not None:
        proposed.append(search(build_index(train_embeddings, "Flat")[0], test_embeddings, depth)[1])
    found = []
    for row, digest in enumerate(test_digests):
        if digest in first_copy:
            found.append(Duplicate(row, first_copy[digest], "exact", 1.0))
            continue
        ids = sorted({int(i) for ids in proposed for i in ids[row] if i >= 0})
        if not ids:
            continue
        correlations = train_thumbnails[ids] @ test_thumbnails[row]
        kept = correlations >= threshold
        if test_details is not None and train_details is not None:
            kept &= train_details[ids] @ test_details[row] >= detail_threshold
        if kept.any():
            best = int(np.argmax(np.where(kept, correlations, -np.inf)))
            found.append(Duplicate(row, ids[best], "near", float(correlations[best])))
    return found
