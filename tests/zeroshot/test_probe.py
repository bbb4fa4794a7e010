import numpy as np
import pytest

from convirt.zeroshot.probe import _subsample, run_probes


def _blobs(n=120, seed=0, dim=8):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=(n, 1))
    embeddings = rng.normal(size=(n, dim)) + 2.5 * labels * np.eye(dim)[0]  # one direction separates, the rest noise
    groups = [f"p{i // 2}" for i in range(n)]  # two images per patient
    return embeddings, labels, groups


def test_probes_learn_a_separable_finding_and_more_labels_help():
    # 31 noise directions beside the one that separates: 1% of the labels (one image of each class
    # per fold) cannot find it, all of them can. Seeded data, folds and subsamples; the margin
    # (about 0.23 for either probe here) dwarfs what rounding in another BLAS could move.
    embeddings, labels, groups = _blobs(dim=32)
    outputs = run_probes(embeddings, labels, groups, ["A"], fractions=(0.01, 1.0), bootstrap=50)
    assert [(o.probe, o.fraction) for o in outputs] == [("linear", 0.01), ("linear", 1.0), ("knn", 0.01), ("knn", 1.0)]
    auroc = {(o.probe, o.fraction): o.metrics["findings"]["A"]["auroc"] for o in outputs}
    full = {probe: auroc[probe, 1.0] for probe in ("linear", "knn")}
    assert full["linear"] > 0.8 and full["knn"] > 0.8
    assert all(full[probe] > auroc[probe, 0.01] + 0.15 for probe in full), auroc
    assert outputs[1].probabilities.shape == (120, 1) and not np.isnan(outputs[1].probabilities).any()
    low, high = outputs[1].metrics["findings"]["A"]["auroc_ci"]
    assert low < full["linear"] < high


def test_subsample_is_stratified_and_keeps_both_classes():
    labels = np.array([0] * 90 + [1] * 10)
    rows = _subsample(labels, 0.01, np.random.default_rng(0))
    assert sorted(labels[rows].tolist()) == [0, 1]
    assert len(_subsample(labels, 1.0, np.random.default_rng(0))) == 100


def test_probe_input_errors():
    embeddings, labels, groups = _blobs(20)
    with pytest.raises(ValueError, match="do not match"):
        run_probes(embeddings, labels[:10], groups, ["A"])
    with pytest.raises(ValueError, match="unknown probe 'svm'"):
        run_probes(embeddings, labels, groups, ["A"], probes=["svm"])
    with pytest.raises(ValueError, match="fractions must lie in"):
        run_probes(embeddings, labels, groups, ["A"], fractions=[0])
    with pytest.raises(ValueError, match="3 patients, fewer than 5 folds"):
        run_probes(embeddings, labels, ["a", "b", "c"] * 6 + ["a", "b"], ["A"])


def test_linear_probe_standardises_and_picks_c_on_the_training_part_only():
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    from convirt.zeroshot.probe import C_GRID, _linear_probe

    embeddings, labels, groups = _blobs(120)
    y = labels[:, 0]
    chosen = _linear_probe(y, np.array(groups), seed=0).fit(embeddings * 1e-3, y)  # tiny scale: standardised away
    assert isinstance(chosen[-1], LogisticRegressionCV) and float(np.ravel(chosen[-1].C_)[0]) in C_GRID
    assert chosen.predict_proba(embeddings * 1e-3)[:, 1][y == 1].mean() > 0.6
    # Too few of a class for an inner cross-validation: a fixed C.
    few = _linear_probe(np.array([0] * 20 + [1] * 2), np.array([f"p{i}" for i in range(22)]), seed=0)
    assert isinstance(few[-1], LogisticRegression) and not isinstance(few[-1], LogisticRegressionCV)
