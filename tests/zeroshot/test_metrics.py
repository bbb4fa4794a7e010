import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, recall_score, roc_auc_score

from convirt._io import json_safe
from convirt.zeroshot.metrics import (
    UndefinedMetricWarning,
    auroc,
    binary_metrics,
    bootstrap_ci,
    evaluate_findings,
    mean_defined,
    per_finding_auroc,
    youden_threshold,
)


def _data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    scores = labels * 0.8 + rng.normal(size=n)
    return labels, scores


def test_auroc_is_nan_with_a_warning_without_both_classes():
    with pytest.warns(UndefinedMetricWarning, match="Edema: no positives among 3 samples"):
        assert math.isnan(auroc(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]), "Edema"))
    assert auroc(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3])) == 1.0


def test_per_finding_and_mean_skip_undefined():
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    scores = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3]])
    with pytest.warns(UndefinedMetricWarning):
        values = per_finding_auroc(labels, scores, ["a", "b"])
    assert values["a"] == 1.0 and math.isnan(values["b"])
    assert mean_defined(values) == 1.0 and math.isnan(mean_defined({"x": float("nan")}))


def test_metrics_agree_with_scikit_learn():
    labels, scores = _data()
    threshold = 0.3
    result = binary_metrics(labels, scores, threshold=threshold, bootstrap=0)
    predicted = (scores >= threshold).astype(int)
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["f1"] == pytest.approx(f1_score(labels, predicted))
    assert result["sensitivity"] == pytest.approx(recall_score(labels, predicted))
    assert result["specificity"] == pytest.approx(recall_score(1 - labels, 1 - predicted))


def test_youden_threshold_maximises_j():
    labels, scores = _data()
    best = youden_threshold(labels, scores)

    def j(t):
        p = scores >= t
        return p[labels == 1].mean() - p[labels == 0].mean()

    assert j(best) == pytest.approx(max(j(t) for t in scores), abs=1e-12)


def test_bootstrap_ci_is_seeded_stratified_and_covers_the_estimate():
    labels, scores = _data()
    first = bootstrap_ci(labels, scores, roc_auc_score, samples=300, seed=1)
    assert first == bootstrap_ci(labels, scores, roc_auc_score, samples=300, seed=1)
    assert first != bootstrap_ci(labels, scores, roc_auc_score, samples=300, seed=2)
    assert first[0] < roc_auc_score(labels, scores) < first[1] and first[1] - first[0] < 0.2
    # Few positives: stratification keeps both classes in every replicate, so no replicate fails.
    few = np.zeros(100, dtype=int)
    few[:2] = 1
    low, high = bootstrap_ci(few, np.linspace(1, 0, 100), roc_auc_score, samples=50)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)


def test_a_column_without_positives_is_nan_and_left_out_of_means():
    labels, scores = _data()
    matrix = np.stack([labels, np.zeros_like(labels)], axis=1)
    with pytest.warns(UndefinedMetricWarning, match="empty: no positives"):
        result = evaluate_findings(matrix, np.stack([scores, scores], axis=1), ["real", "empty"], bootstrap=20)
    assert math.isnan(result["findings"]["empty"]["auroc"]) and math.isnan(result["findings"]["empty"]["auroc_ci"][0])
    assert result["mean"]["auroc"] == result["findings"]["real"]["auroc"]
    assert json_safe(result)["findings"]["empty"]["auroc"] is None


def test_the_bootstrap_statistics_equal_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    from convirt.zeroshot.metrics import _plain_auprc, _plain_auroc

    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(2, 60))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            y[0] = 1 - y[0]
        s = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.normal(size=n)  # heavy ties, then none
        assert abs(_plain_auroc(y, s) - roc_auc_score(y, s)) < 1e-12
        assert abs(_plain_auprc(y, s) - average_precision_score(y, s)) < 1e-12


def test_mean_auroc_ci_resamples_images_together_and_skips_undefined_cells():
    import numpy as np

    from convirt.zeroshot.metrics import evaluate_findings, mean_auroc_ci

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(200, 3))
    scores = labels + rng.normal(0, 1.0, size=labels.shape)
    labels[:10, 2] = -1  # uncertain: left out of that finding
    scores[10:20, 1] = np.nan  # no score: left out
    low, high = mean_auroc_ci(labels, scores, samples=200, seed=1)
    kept = ~np.isnan(scores)
    mean = evaluate_findings(labels, np.where(kept, scores, 0.0), ["a", "b", "c"], bootstrap=0)["mean"]["auroc"]
    assert low < high and low - 0.02 <= mean <= high + 0.02 and 0.6 < low
    assert (low, high) == mean_auroc_ci(labels, scores, samples=200, seed=1)
    assert np.isnan(mean_auroc_ci(labels[:, :0], scores[:, :0])[0])
