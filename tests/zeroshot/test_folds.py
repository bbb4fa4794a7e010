import numpy as np
import pytest

from convirt.zeroshot.folds import fold_fingerprint, row_hash, row_hashes, validation_split


def _cohort(patients=400, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 4, size=patients)  # 1-3 images per patient
    ids = np.repeat([f"p{i}" for i in range(patients)], images)
    sick = rng.random(patients) < 0.2
    labels = np.repeat(sick, images).astype(int)
    return ids.tolist(), labels


@pytest.mark.parametrize("with_labels", [False, True])
def test_no_patient_on_both_sides_and_the_same_split_for_the_same_seed(with_labels):
    ids, labels = _cohort()
    given = labels if with_labels else None
    val, test = validation_split(ids, 0.3, seed=3, labels=given)
    assert sorted(np.r_[val, test].tolist()) == list(range(len(ids)))  # every row, once
    assert not {ids[i] for i in val} & {ids[i] for i in test}
    share = len({ids[i] for i in val}) / len(set(ids))
    assert 0.25 < share < 0.35
    again = validation_split(ids, 0.3, seed=3, labels=given)
    assert np.array_equal(val, again[0]) and np.array_equal(test, again[1])
    other = validation_split(ids, 0.3, seed=4, labels=given)
    assert not np.array_equal(val, other[0])


def _patient_prevalence_gap(ids, labels, val, test):
    sick = {p for p, label in zip(ids, labels) if label}
    share = [len({ids[i] for i in side} & sick) / len({ids[i] for i in side}) for side in (val, test)]
    return abs(share[0] - share[1])


def test_labels_stratify_patients_by_the_rarer_finding():
    ids, labels = _cohort()
    matrix = np.c_[np.arange(len(ids)) % 2, labels]  # the second column (20% of patients) is the rarer
    gaps = [_patient_prevalence_gap(ids, labels, *validation_split(ids, 0.3, s, matrix)) for s in range(5)]
    unstratified = [_patient_prevalence_gap(ids, labels, *validation_split(ids, 0.3, s)) for s in range(5)]
    assert max(gaps) < 0.01 < max(unstratified)


def test_a_side_without_positives_is_refused_with_the_finding_named():
    ids = [f"p{i}" for i in range(50)]
    labels = np.zeros((50, 2), dtype=int)
    labels[:25, 0] = 1
    labels[0, 1] = 1  # one positive: one side has none
    with pytest.raises(ValueError, match=r"'Edema': the (validation|test) side would have no positives"):
        validation_split(ids, 0.3, labels=labels, names=["Atelectasis", "Edema"])


def test_missing_patient_ids_and_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="row 1 has no patient id"):
        validation_split(["a", "", "b"])
    with pytest.raises(ValueError, match="not in"):
        validation_split(["a", "b"], fraction=1.0)


def test_fingerprint_ignores_order_and_names_no_row():
    assert fold_fingerprint(["a", "b", "b"]) == fold_fingerprint(["b", "a"]) != fold_fingerprint(["a", "c"])
    hashes = row_hashes(["a", "b"])
    assert len(hashes) == 2 and all(len(h) == 16 for h in hashes) and "a" not in hashes
    assert hashes == sorted({row_hash("b"), row_hash("a")}) and row_hash(7) == row_hash("7")
