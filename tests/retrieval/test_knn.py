import numpy as np
import pytest

from convirt.retrieval.knn import knn_scores


def test_vote_is_similarity_weighted_and_skips_excluded():
    labels = np.array([[1, 0], [0, 1], [1, 0]])
    ids = np.array([[0, 1, 2]])
    sims = np.array([[0.9, 0.5, 0.1]])
    sharp = knn_scores(ids, sims, labels, k=3, temperature=0.01)
    assert sharp[0, 0] > 0.99  # the nearest neighbour decides
    flat = knn_scores(ids, sims, labels, k=3, temperature=100.0)
    assert np.allclose(flat[0], [2 / 3, 1 / 3], atol=1e-2)  # nearly a plain vote
    skipped = knn_scores(ids, sims, labels, k=1, exclude=[{0}])
    assert np.allclose(skipped[0], [0, 1])


def test_no_voter_left_is_an_error():
    with pytest.raises(ValueError, match="no neighbour left"):
        knn_scores(np.array([[0]]), np.array([[1.0]]), np.array([[1]]), k=1, exclude=[{0}])
