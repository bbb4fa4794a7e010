import numpy as np
import pytest

from convirt.zeroshot.metrics import youden_threshold
from convirt.zeroshot.operating_points import (
    RULES,
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
