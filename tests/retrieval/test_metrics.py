import numpy as np
import pytest

from convirt.retrieval import retrieval_metrics, same_patient_exclusions

E, N = frozenset({"Edema"}), frozenset()


def test_precision_map_and_recall_by_hand():
    index_sets = [E, N, E, N, E]
    # one query (an Edema image, not indexed), its ranked neighbours: E, N, E
    result = retrieval_metrics(np.array([[0, 1, 2]]), [E], index_sets, k=3)
    assert result["precision_at_3"] == pytest.approx(2 / 3)
    assert result["map_at_3"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert result["recall_at_3"] == pytest.approx(2 / 3)


def test_same_patient_images_are_excluded():
    patients = ["p1", "p1", "p2", "p3"]
    sets = [E, E, N, E]
    exclusions = same_patient_exclusions(patients, patients)
    assert exclusions[0] == {0, 1} and exclusions[2] == {2}
    neighbours = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 0, 1, 2]])
    with_patient = retrieval_metrics(neighbours, sets, sets, k=1, exclude=[{i} for i in range(4)])
    without = retrieval_metrics(neighbours, sets, sets, k=1, exclude=exclusions)
    assert with_patient["precision_at_1"] == 0.75  # p1's two images find each other
    assert without["precision_at_1"] == 0.5
    assert without["queries_without_relevant"] == 1  # the only normal image has no relevant match


def test_too_few_candidates_after_exclusion():
    with pytest.raises(ValueError, match="fewer than k=2"):
        retrieval_metrics(np.array([[0, 1]]), [E], [E, E], k=2, exclude=[{0}])


def test_cross_modal_recall_by_hand():
    from convirt.retrieval import recall_at_ks

    ids = np.array([[3, 0, 1], [1, 2, 0], [2, 0, 1]])
    targets = [{0}, {2, 3}, {1}]  # hit at rank 2; hit at rank 2; hit at rank 3
    assert recall_at_ks(ids, targets, ks=(1, 2, 3)) == {"recall_at_1": 0.0, "recall_at_2": 2 / 3, "recall_at_3": 1.0}
    with pytest.raises(ValueError, match="at least one target"):
        recall_at_ks(ids, [{0}, set(), {1}], ks=(1,))
    with pytest.raises(ValueError, match="fewer than k=5"):
        recall_at_ks(ids, targets, ks=(1, 5))
