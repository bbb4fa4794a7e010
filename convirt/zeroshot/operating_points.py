"""Operating points: a decision threshold chosen on a validation fold by a named rule, then
reported unchanged on a test fold with bootstrap intervals.

A row is called positive when ``score >= threshold``. Rules:

* ``"youden"``: the threshold maximising sensitivity + specificity - 1.
* ``"sensitivity>=X"``: the highest threshold whose sensitivity is at least ``X`` (so the best
  specificity that keeps the sensitivity).
* ``"specificity>=X"``: the lowest threshold whose specificity is at least ``X`` (so the best
  sensitivity that keeps the specificity).

``X`` is a number in ``(0, 1)``; the usual ones are listed in :data:`RULES`. A rule has one
spelling, :func:`canonical_rule`'s (``"Sensitivity >= 0.9"`` is ``"sensitivity>=0.90"``), and the
constraints compare counts of rows, not rates: 90 of 100 negatives meet ``specificity>=0.90``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from convirt.zeroshot.metrics import NAN, _check, _two_classes, bootstrap_ci, youden_threshold

RULES = ("youden", "sensitivity>=0.90", "sensitivity>=0.95", "specificity>=0.90")
_CONSTRAINT = re.compile(r"^(sensitivity|specificity)\s*>=\s*(0?\.\d+)$")
RATES = ("sensitivity", "specificity", "ppv", "npv")


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold chosen by a rule on a validation fold, with what it achieved there.

    Attributes:
        rule: The rule's :func:`canonical_rule` name, e.g. ``"sensitivity>=0.90"``.
        threshold: Call positive when ``score >= threshold``.
        achieved: ``sensitivity``, ``specificity``, ``ppv``, ``npv`` on the fold it was chosen on.
        n: Rows of that fold.
        positives: Positives among them.
    """

    rule: str
    threshold: float
    achieved: dict[str, float]
    n: int
    positives: int


@dataclass(frozen=True)
class OperatingPointOutput:
    """An operating point reported on other rows (its threshold unchanged).

    Attributes:
        point: The operating point (from the validation fold).
        values: ``sensitivity``, ``specificity``, ``ppv``, ``npv`` on these rows (NaN without a denominator).
        intervals: ``{rate: (low, high)}`` percentile bootstrap intervals, stratified by class.
        n: Rows reported on.
        positives: Positives among them.
    """

    point: OperatingPoint
    values: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    n: int
    positives: int


def parse_rule(rule: str) -> tuple[str, float]:
    """``("youden", nan)`` or ``(rate, target)`` from a rule's name.

    Raises:
        ValueError: The name is not ``youden`` or ``sensitivity|specificity>=X`` with ``0 < X < 1``.
    """
    text = rule.strip().lower()
    if text == "youden":
        return "youden", NAN
    match = _CONSTRAINT.match(text)
    if match is None or not 0 < float(match.group(2)) < 1:
        raise ValueError(f"unknown operating-point rule {rule!r}; known: {', '.join(RULES)}")
    return match.group(1), float(match.group(2))


def _decimal(target: float) -> str:
    """The shortest decimal of at least two places that reads back as ``target``: 0.9 is ``0.90``."""
    places = 2
    while float(f"{target:.{places}f}") != target and places < 17:
        places += 1
    return f"{target:.{places}f}"


def canonical_rule(rule: str) -> str:
    """A rule's one spelling: ``"youden"`` or ``"sensitivity>=0.90"`` (two decimals or as many as needed).

    Raises:
        ValueError: The rule is unknown (see :func:`parse_rule`).
    """
    rate, target = parse_rule(rule)
    return rate if rate == "youden" else f"{rate}>={_decimal(target)}"


def rates(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV of ``score >= threshold``; NaN where a denominator is 0."""
    y, s = _check(labels, scores)
    return _rates(y, s, threshold)


def _rates(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    called = s >= threshold
    tp = int((called & (y == 1)).sum())
    fp = int(called.sum()) - tp
    fn = int((y == 1).sum()) - tp
    tn = y.size - tp - fp - fn
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else NAN,
        "specificity": tn / (tn + fp) if tn + fp else NAN,
        "ppv": tp / (tp + fp) if tp + fp else NAN,
        "npv": tn / (tn + fn) if tn + fn else NAN,
    }


def _statistic(rate: str, threshold: float) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda y, s: _rates(y, s, threshold)[rate]


def choose_operating_point(labels: Any, scores: Any, rule: str) -> OperatingPoint:
    """The threshold a rule picks on these (validation) rows; ``(N,)`` 0/1 labels and scores.

    Raises:
        ValueError: The rule is unknown, or the labels hold one class only.
    """
    rate, target = parse_rule(rule)
    y, s = _check(labels, scores)
    if not _two_classes(y):
        raise ValueError(f"an operating point needs positives and negatives ({int(y.sum())} of {y.size})")
    if rate == "youden":
        threshold = youden_threshold(y, s)
    else:
        fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)  # thresholds falling, tpr and fpr rising
        positives, negatives = int(y.sum()), int(y.size - y.sum())
        # Counts, not rates: 1 - 0.9 is 0.09999999999999998 in floats, under 10 / 100 false positives.
        tps, fps = np.rint(tpr * positives), np.rint(fpr * negatives)
        exact = Fraction(_decimal(target))
        if rate == "sensitivity":
            needed = math.ceil(exact * positives)
            threshold = float(thresholds[int(np.argmax(tps >= needed))])  # tps reaches every positive
        else:
            allowed = math.floor((1 - exact) * negatives)
            threshold = float(thresholds[int(np.flatnonzero(fps <= allowed)[-1])])  # fps starts at 0
        if math.isinf(threshold):  # roc_curve's first threshold: no row called positive
            threshold = float(np.nextafter(s.max(), np.inf))
    return OperatingPoint(canonical_rule(rule), threshold, _rates(y, s, threshold), int(y.size), int(y.sum()))


def evaluate_operating_point(
    labels: Any, scores: Any, point: OperatingPoint, bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> OperatingPointOutput:
    """Sensitivity, specificity, PPV and NPV of ``point``'s threshold on these (test) rows.

    The threshold is the point's, never recomputed from these rows. Intervals come from
    :func:`~convirt.zeroshot.metrics.bootstrap_ci`, which resamples positives and negatives
    separately: PPV and NPV intervals hold the prevalence of these rows fixed.

    Args:
        labels: ``(N,)`` 0/1.
        scores: ``(N,)`` the same kind of scores the point was chosen on.
        point: From :func:`choose_operating_point` on a validation fold.
        bootstrap: Replicates (0: no intervals).
        seed: Bootstrap seed.
        level: Interval coverage.
    """
    y, s = _check(labels, scores)
    values = _rates(y, s, point.threshold)
    intervals = {rate: bootstrap_ci(y, s, _statistic(rate, point.threshold), bootstrap, seed, level) for rate in RATES}
    return OperatingPointOutput(point, values, intervals, int(y.size), int(y.sum()))
