import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

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


# Four positives, four negatives, and one positive-negative tie (at 0.5).
HAND_LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0])
HAND_SCORES = np.array([0.9, 0.8, 0.7, 0.5, 0.5, 0.3, 0.2, 0.1])


def test_metrics_equal_hand_computed_values():
    from convirt.zeroshot.metrics import _plain_auprc, _plain_auroc

    # AUROC: of the 16 positive-negative pairs the positive scores higher in 4 + 3 + 2 + 1 = 10 and
    # ties in 1 (counted one half). AUPRC (average precision): recall steps by 1/4 at 0.9, 0.7, 0.5
    # (the tie one threshold) and 0.2, where precision is 1/1, 2/3, 3/5 and 4/7. At threshold 0.5
    # (score >= threshold): TP 3, FP 2, FN 1, TN 2.
    auroc_value, auprc_value = 10.5 / 16, (1 + 2 / 3 + 3 / 5 + 4 / 7) / 4
    result = binary_metrics(HAND_LABELS, HAND_SCORES, threshold=0.5, bootstrap=0)
    assert result["auroc"] == pytest.approx(auroc_value, abs=1e-12)
    assert result["auprc"] == pytest.approx(auprc_value, abs=1e-12)
    assert result["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1), abs=1e-12)
    assert result["sensitivity"] == pytest.approx(3 / 4, abs=1e-12)
    assert result["specificity"] == pytest.approx(2 / 4, abs=1e-12)
    assert (result["positives"], result["negatives"], result["threshold"]) == (4, 4, 0.5)
    # The bootstrap's own statistics give the same values.
    assert _plain_auroc(HAND_LABELS, HAND_SCORES) == pytest.approx(auroc_value, abs=1e-12)
    assert _plain_auprc(HAND_LABELS, HAND_SCORES) == pytest.approx(auprc_value, abs=1e-12)
    # Perfectly ranked, then perfectly reversed: 1 and 0, and average precision 1 and the base rate 1/2.
    ranked = np.linspace(1, 0, 8)
    perfect = binary_metrics(np.array([1] * 4 + [0] * 4), ranked, threshold=0.5, bootstrap=0)
    reversed_ = binary_metrics(np.array([0] * 4 + [1] * 4), ranked, threshold=0.5, bootstrap=0)
    assert (perfect["auroc"], perfect["auprc"], perfect["f1"]) == pytest.approx((1.0, 1.0, 1.0))
    assert (reversed_["auroc"], reversed_["f1"], reversed_["sensitivity"]) == pytest.approx((0.0, 0.0, 0.0))
    assert reversed_["auprc"] == pytest.approx((1 / 5 + 2 / 6 + 3 / 7 + 4 / 8) / 4)


def test_youden_threshold_maximises_j():
    # By hand: J = TPR - FPR is 1/4, 1/2, 3/4, 5/12, 2/3, 1/3, 0 at thresholds 0.7 down to 0.1: the best is 0.5.
    hand = youden_threshold(np.array([0, 0, 1, 0, 1, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]))
    assert hand == 0.5
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
