import numpy as np
import pytest

from convirt.zeroshot.metrics import youden_threshold
from convirt.zeroshot.operating_points import (
    RULES,
    canonical_rule,
    choose_operating_point,
    evaluate_operating_point,
    parse_rule,
    rates,
)


def _fold(n=2000, shift=1.5, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    return labels, labels * shift + rng.normal(size=n)


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_meets_its_constraint_on_the_validation_fold(rule):
    labels, scores = _fold()
    point = choose_operating_point(labels, scores, rule)
    assert point.achieved == rates(labels, scores, point.threshold)
    rate, target = parse_rule(rule)
    if rate == "youden":
        assert point.threshold == youden_threshold(labels, scores)
    else:
        assert point.achieved[rate] >= target
        # the tightest such threshold: one step further and the constraint breaks or nothing is gained
        step = np.sort(scores)
        if rate == "sensitivity":
            above = step[step > point.threshold]
            assert above.size == 0 or rates(labels, scores, above[0])["sensitivity"] < target
        else:
            below = step[step < point.threshold]
            assert below.size == 0 or rates(labels, scores, below[-1])["specificity"] < target


def test_a_threshold_chosen_on_validation_is_applied_unchanged_to_test():
    labels, scores = _fold(seed=1)
    point = choose_operating_point(labels, scores, "youden")
    # A test fold whose own Youden optimum is elsewhere: the same classes, scores shifted up by 2.
    test_labels, test_scores = _fold(seed=2)
    test_scores = test_scores + 2.0
    assert abs(youden_threshold(test_labels, test_scores) - point.threshold) > 1.0
    reported = evaluate_operating_point(test_labels, test_scores, point, bootstrap=200)
    assert reported.point.threshold == point.threshold
    assert reported.values == rates(test_labels, test_scores, point.threshold)
    assert reported.values["specificity"] < 0.5  # the shifted scores call most negatives positive at it
    for rate in ("sensitivity", "specificity", "ppv", "npv"):
        low, high = reported.intervals[rate]
        assert low <= reported.values[rate] <= high and high - low < 0.2


def test_specificity_rule_that_no_threshold_meets_calls_no_row_positive():
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.9, 0.1, 0.8, 0.2])  # negatives score highest
    point = choose_operating_point(labels, scores, "specificity>=0.90")
    assert point.threshold > 0.9 and point.achieved["specificity"] == 1.0 and point.achieved["sensitivity"] == 0.0


def test_rates_by_hand():
    # score >= 0.5: TP 2 (0.9, 0.5), FP 1 (0.7), FN 1 (0.2), TN 2 (0.3, 0.1)
    values = rates([1, 0, 1, 0, 1, 0], [0.9, 0.7, 0.5, 0.3, 0.2, 0.1], 0.5)
    assert values == pytest.approx({"sensitivity": 2 / 3, "specificity": 2 / 3, "ppv": 2 / 3, "npv": 2 / 3})
    values = rates([1, 0, 0, 0], [0.9, 0.8, 0.3, 0.1], 0.5)
    assert values == pytest.approx({"sensitivity": 1.0, "specificity": 2 / 3, "ppv": 0.5, "npv": 1.0})


@pytest.mark.parametrize("rule", ["sensitivity>0.9", "youdens", "specificity>=1.5", "f1"])
def test_unknown_rules_are_refused_with_the_known_ones_listed(rule):
    labels, scores = _fold(200)
    with pytest.raises(ValueError, match=rf"unknown operating-point rule '{rule}'; known: youden, sensitivity>=0.90"):
        choose_operating_point(labels, scores, rule)


def _boundary_fold():
    """100 negatives scoring 0..99, 10 positives at 49.5, 54.5, ..., 94.5."""
    scores = np.r_[np.arange(100.0), 49.5 + 5 * np.arange(10)]
    return np.r_[np.zeros(100, dtype=int), np.ones(10, dtype=int)], scores


def test_specificity_rule_keeps_a_threshold_that_exactly_meets_the_target():
    labels, scores = _boundary_fold()
    # score >= 89.5 calls negatives 90..99 positive: 10 of 100, a specificity of exactly 0.90
    # (in floats 1 - 0.9 < 10 / 100: a rate comparison stops at 91, a specificity of 0.91).
    point = choose_operating_point(labels, scores, "specificity>=0.90")
    assert point.threshold == 89.5 and point.achieved["specificity"] == 0.9
    assert point.achieved["sensitivity"] == 0.2  # 89.5 and 94.5; at 91 only 94.5


@pytest.mark.parametrize("target", ["0.70", "0.90", "0.30"])
def test_sensitivity_rule_keeps_a_threshold_that_exactly_meets_the_target(target):
    labels, scores = _boundary_fold()
    point = choose_operating_point(labels, scores, f"sensitivity>={target}")
    needed = round(float(target) * 10)  # positives at 94.5, 89.5, ... from the top
    assert point.threshold == 94.5 - 5 * (needed - 1)
    assert point.achieved["sensitivity"] == needed / 10


@pytest.mark.parametrize("target", ["0.70", "0.90", "0.30"])
def test_specificity_targets_met_by_exact_counts(target):
    labels, scores = _boundary_fold()
    point = choose_operating_point(labels, scores, f"specificity>={target}")
    allowed = 100 - round(float(target) * 100)  # false positives: negatives at 99, 98, ... from the top
    assert rates(labels, scores, point.threshold)["specificity"] == (100 - allowed) / 100
    lower = scores[scores < point.threshold].max()  # the next threshold down breaks the constraint
    assert rates(labels, scores, lower)["specificity"] < float(target)


@pytest.mark.parametrize(
    ("rule", "canonical"),
    [
        ("youden", "youden"),
        (" Youden ", "youden"),
        ("Sensitivity >= 0.9", "sensitivity>=0.90"),
        ("sensitivity>=0.90", "sensitivity>=0.90"),
        ("sensitivity>=.95", "sensitivity>=0.95"),
        ("SPECIFICITY>=0.925", "specificity>=0.925"),
        ("specificity >= 0.5000", "specificity>=0.50"),
    ],
)
def test_each_spelling_of_a_rule_has_one_canonical_name(rule, canonical):
    assert canonical_rule(rule) == canonical
    assert parse_rule(canonical) == parse_rule(rule)
    labels, scores = _fold(200)
    assert choose_operating_point(labels, scores, rule).rule == canonical


def test_the_canonical_name_of_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown operating-point rule 'f1'"):
        canonical_rule("f1")
