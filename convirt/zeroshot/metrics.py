"""Per-finding metrics with bootstrap confidence intervals, that say why a value is missing.

A finding whose labels hold one class only (no positives, or no negatives) has no AUROC: its
metrics are NaN, a :class:`UndefinedMetricWarning` names it, and means leave it out. The
metric values themselves are scikit-learn's; this module adds thresholds, stratified seeded
bootstrap intervals and the bookkeeping.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

NAN = float("nan")


class UndefinedMetricWarning(UserWarning):
    """A metric cannot be computed (one class only); it is NaN and left out of means."""


def _two_classes(labels: np.ndarray) -> bool:
    return bool(labels.size) and 0 < int(labels.sum()) < labels.size


def _check(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(labels).astype(int).ravel(), np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def auroc(labels: Any, scores: Any, name: str = "") -> float:
    """Area under the ROC curve; NaN (with a warning) when the labels hold one class."""
    return _ranking_metric(roc_auc_score, labels, scores, name)


def auprc(labels: Any, scores: Any, name: str = "") -> float:
    """Area under the precision-recall curve (average precision); NaN with one class only."""
    return _ranking_metric(average_precision_score, labels, scores, name)


def _ranking_metric(metric: Callable[..., Any], labels: Any, scores: Any, name: str) -> float:
    y, s = _check(labels, scores)
    if not _two_classes(y):
        _warn_undefined(name, y)
        return NAN
    return float(metric(y, s))


def _warn_undefined(name: str, labels: np.ndarray) -> None:
    what = "no positives" if int(labels.sum()) == 0 else "no negatives"
    warnings.warn(
        f"{name or 'finding'}: {what} among {labels.size} samples; its metrics are NaN and left out of means",
        UndefinedMetricWarning,
        stacklevel=4,
    )


def youden_threshold(labels: Any, scores: Any) -> float:
    """The score threshold that maximises Youden's J (sensitivity + specificity - 1); NaN with one class."""
    y, s = _check(labels, scores)
    if not _two_classes(y):
        return NAN
    fpr, tpr, thresholds = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], np.max(s)))  # roc_curve's first threshold is +inf


def threshold_metrics(labels: Any, scores: Any, threshold: float) -> dict[str, float]:
    """F1, sensitivity and specificity of ``score >= threshold``; a rate without a denominator is NaN."""
    y, s = _check(labels, scores)
    predicted = s >= threshold
    tp = int((predicted & (y == 1)).sum())
    fp = int((predicted & (y == 0)).sum())
    fn = int((~predicted & (y == 1)).sum())
    tn = int((~predicted & (y == 0)).sum())
    sensitivity = tp / (tp + fn) if tp + fn else NAN
    specificity = tn / (tn + fp) if tn + fp else NAN
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else NAN
    return {"f1": f1, "sensitivity": sensitivity, "specificity": specificity}


def bootstrap_ci(
    labels: Any,
    scores: Any,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(labels, scores)``, stratified by class.

    Each replicate resamples positives and negatives separately (with replacement, same counts),
    so every replicate keeps both classes. Seeded: the same inputs give the same interval.
    """
    y, s = _check(labels, scores)
    if not _two_classes(y) or samples <= 0:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    values = []
    for _ in range(samples):
        rows = np.concatenate([rng.choice(positives, positives.size), rng.choice(negatives, negatives.size)])
        value = statistic(y[rows], s[rows])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return NAN, NAN
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


# The bootstrap calls its statistic a thousand times per finding and method; scikit-learn's
# roc_auc_score / average_precision_score spend ~5 ms a call validating their input, which made
# the CIs most of an evaluation's time. These compute the same numbers (tested against
# scikit-learn, ties included) on arrays already checked.


def _plain_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC as the Mann-Whitney U statistic over mid-ranks (ties count one half): ``roc_auc_score``."""
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return NAN
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _plain_auprc(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision, the sum over distinct score thresholds of precision times the step in
    recall: ``average_precision_score``."""
    positives = int(y.sum())
    if positives == 0:
        return NAN
    order = np.argsort(-s, kind="mergesort")
    ranked, hits = s[order], y[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]  # the last row of each distinct score
    true_positives = np.cumsum(hits)[last]
    precision = true_positives / (last + 1)
    recall_step = np.diff(np.r_[0.0, true_positives]) / positives
    return float((precision * recall_step).sum())


NO_THRESHOLD = "none: no validation split named (see operating_points, chosen on a validation fold)"


def binary_metrics(
    labels: Any,
    scores: Any,
    name: str = "",
    threshold: float | None = None,
    threshold_source: str = "",
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC, AUPRC, and F1 / sensitivity / specificity at a threshold, each with a 95% CI.

    Args:
        labels: ``(N,)`` 0/1.
        scores: ``(N,)`` higher = more likely positive.
        name: The finding, for warnings.
        threshold: Decision threshold, chosen on other rows (a validation split). Default: none,
            and F1, sensitivity and specificity are NaN: a threshold is never picked on the rows
            it is reported on (:mod:`convirt.zeroshot.validated` chooses them on a validation fold).
        threshold_source: Where the threshold came from, recorded in the output.
        bootstrap: Replicates for the intervals (0: no intervals).
        seed: Bootstrap seed.

    Returns:
        ``auroc``, ``auprc``, ``f1``, ``sensitivity``, ``specificity`` (NaN where undefined),
        ``<metric>_ci`` as ``[low, high]``, ``threshold``, ``threshold_source``, ``positives``,
        ``negatives``.
    """
    y, s = _check(labels, scores)
    if threshold is None:
        threshold, threshold_source = NAN, NO_THRESHOLD
    out: dict[str, Any] = {
        "positives": int(y.sum()),
        "negatives": int(y.size - y.sum()),
        "auroc": auroc(y, s, name),
        "auprc": auprc(y, s, name) if _two_classes(y) else NAN,
        "threshold": threshold,
        "threshold_source": threshold_source or "given",
    }
    out.update(
        threshold_metrics(y, s, threshold)
        if not math.isnan(threshold)
        else {"f1": NAN, "sensitivity": NAN, "specificity": NAN}
    )
    statistics: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"auroc": _plain_auroc, "auprc": _plain_auprc}
    if not math.isnan(threshold):
        for key in ("f1", "sensitivity", "specificity"):
            statistics[key] = lambda a, b, key=key: threshold_metrics(a, b, threshold)[key]  # type: ignore[misc]
    for key in ("auroc", "auprc", "f1", "sensitivity", "specificity"):
        low, high = bootstrap_ci(y, s, statistics[key], bootstrap, seed) if key in statistics else (NAN, NAN)
        out[f"{key}_ci"] = [low, high]
    return out


def evaluate_findings(
    labels: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    thresholds: Sequence[float] | None = None,
    threshold_source: str = "",
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`binary_metrics` per finding column of ``(N, F)`` labels and scores, plus means.

    A label of ``-1`` (uncertain, left out) drops that image from that finding's metrics only.

    Returns:
        ``{"findings": {name: metrics}, "mean": {metric: mean over defined findings}}``.
    """
    if labels.shape != scores.shape or labels.ndim != 2 or labels.shape[1] != len(names):
        raise ValueError(f"labels {labels.shape}, scores {scores.shape} and {len(names)} names do not match")
    kept = [labels[:, i] >= 0 for i in range(len(names))]
    per = {
        name: binary_metrics(
            labels[kept[i], i],
            scores[kept[i], i],
            name,
            None if thresholds is None else thresholds[i],
            threshold_source,
            bootstrap,
            seed,
        )
        for i, name in enumerate(names)
    }
    means = {
        key: mean_defined({n: m[key] for n, m in per.items()})
        for key in ("auroc", "auprc", "f1", "sensitivity", "specificity")
    }
    return {"findings": per, "mean": means}


def per_finding_auroc(labels: np.ndarray, scores: np.ndarray, names: list[str]) -> dict[str, float]:
    """AUROC of each finding column of ``(N, F)`` labels and scores (NaN where undefined)."""
    if labels.shape != scores.shape or labels.shape[1] != len(names):
        raise ValueError(f"labels {labels.shape}, scores {scores.shape} and {len(names)} names do not match")
    return {name: auroc(labels[:, i], scores[:, i], name) for i, name in enumerate(names)}


def mean_defined(values: Mapping[str, float | None]) -> float:
    """Mean over the defined (not NaN, not ``None``) values; NaN if none is."""
    defined = [v for v in values.values() if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else NAN


def mean_auroc_ci(
    labels: np.ndarray, scores: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean AUROC over findings, images resampled together.

    ``(N, F)`` labels (-1: left out of that finding) and scores (NaN: no score, left out). A
    replicate's mean is over the findings that keep both classes in it. Seeded.
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    if labels.shape != scores.shape or labels.ndim != 2 or samples <= 0 or len(labels) == 0:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        rows = rng.integers(0, len(labels), len(labels))
        per = []
        for column in range(labels.shape[1]):
            y, s = labels[rows, column], scores[rows, column]
            kept = (y >= 0) & ~np.isnan(s)
            if _two_classes(y[kept]):
                per.append(_plain_auroc(y[kept], s[kept]))
        if per:
            values.append(float(np.mean(per)))
    if not values:
        return NAN, NAN
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci(values: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-query values (NaN: the query does not
    count, as a query without a relevant item in mAP). Seeded; NaNs when fewer than two values."""
    kept = np.asarray(values, dtype=float)
    kept = kept[~np.isnan(kept)]
    if len(kept) < 2 or samples <= 0:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    means = kept[rng.integers(0, len(kept), (samples, len(kept)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)
