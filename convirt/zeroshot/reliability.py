"""How far predicted probabilities are from observed frequencies: reliability bins, expected
calibration error, Brier score, and the reliability diagram.

Binning (used by :func:`reliability_bins` and so by :func:`expected_calibration_error`):

* ``"uniform"`` (default): 15 equal-width bins on ``[0, 1]``; bin ``i`` holds ``i/15 <= p < (i+1)/15``,
  the last bin also holds ``p = 1``.
* ``"quantile"``: 15 equal-mass bins: rows sorted by probability (ties in a stable order), bin
  ``i`` holds sorted rows ``floor(i*N/15)`` to ``floor((i+1)*N/15) - 1``.

The ECE is ``sum over bins of (count / N) * |observed frequency - mean predicted|``; empty bins
contribute nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss

from convirt._io import atomic_path

BINS = 15
STRATEGIES = ("uniform", "quantile")


@dataclass(frozen=True)
class ReliabilityOutput:
    """Per bin of one finding's probabilities (empty bins kept, with NaN means and count 0).

    Attributes:
        edges: ``(B + 1,)`` bin edges (for ``"quantile"``, the lowest probability of each bin and the top one).
        mean_predicted: ``(B,)`` mean probability in the bin.
        observed: ``(B,)`` share of positives in the bin.
        counts: ``(B,)`` rows in the bin.
        strategy: ``"uniform"`` or ``"quantile"``.
    """

    edges: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray
    strategy: str


def _check(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(labels).astype(int).ravel(), np.asarray(probs, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    if not y.size:
        raise ValueError("no rows to bin")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 (leave uncertain rows out first)")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("probabilities must be finite and in [0, 1]")
    return y, p


def reliability_bins(labels: Any, probs: Any, bins: int = BINS, strategy: str = "uniform") -> ReliabilityOutput:
    """Mean predicted probability, observed frequency and count per bin (binning: module docstring).

    Args:
        labels: ``(N,)`` 0/1.
        probs: ``(N,)`` probabilities in ``[0, 1]``.
        bins: Number of bins.
        strategy: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass).
    """
    y, p = _check(labels, probs)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown binning {strategy!r}; known: {', '.join(STRATEGIES)}")
    if bins < 1:
        raise ValueError(f"{bins} bins: need at least one")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, bins + 1)
        index = np.minimum((p * bins).astype(int), bins - 1)
    else:
        order = np.argsort(p, kind="stable")
        index = np.empty(p.size, dtype=int)
        index[order] = np.arange(p.size) * bins // p.size
        starts = np.arange(bins) * p.size // bins
        edges = np.r_[p[order][np.minimum(starts, p.size - 1)], p.max()]
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, weights=p, minlength=bins) / counts
        observed = np.bincount(index, weights=y, minlength=bins) / counts
    return ReliabilityOutput(edges, mean_predicted, observed, counts, strategy)


def expected_calibration_error(labels: Any, probs: Any, bins: int = BINS, strategy: str = "uniform") -> float:
    """Count-weighted mean of ``|observed - mean predicted|`` over the bins of :func:`reliability_bins`.

    Default: 15 equal-width bins on ``[0, 1]``, each weighted by its share of the rows. 0 is
    perfectly calibrated (at this binning); the value is at most 1.
    """
    table = reliability_bins(labels, probs, bins, strategy)
    kept = table.counts > 0
    weights = table.counts[kept] / table.counts.sum()
    return float((weights * np.abs(table.observed[kept] - table.mean_predicted[kept])).sum())


def brier_score(labels: Any, probs: Any) -> float:
    """Mean squared difference between probability and 0/1 label (scikit-learn's ``brier_score_loss``)."""
    y, p = _check(labels, probs)
    return float(brier_score_loss(y, p, pos_label=1))


def reliability_diagram(
    labels: Any,
    curves: dict[str, Any],
    path: str | os.PathLike[str],
    title: str = "",
    bins: int = BINS,
    strategy: str = "uniform",
) -> None:
    """One finding's reliability diagram as a PNG: observed frequency against mean predicted
    probability per bin, one line per set of probabilities on the same axes (e.g. ``{"before":
    raw, "after": calibrated}``), each labelled with its ECE; the diagonal is perfect calibration.

    Args:
        labels: ``(N,)`` 0/1 of the rows the diagram reports on.
        curves: ``{name: (N,) probabilities}``.
        path: The PNG, written atomically.
        title: Usually the finding (and the fold it reports on).
        bins: Number of bins.
        strategy: ``"uniform"`` or ``"quantile"``.
    """
    from convirt.zeroshot.plots import pyplot

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 4.2))
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.6, linestyle="--", label="perfect")
    for name, probs in curves.items():
        table = reliability_bins(labels, probs, bins, strategy)
        kept = table.counts > 0
        ece = expected_calibration_error(labels, probs, bins, strategy)
        axis.plot(
            table.mean_predicted[kept], table.observed[kept], marker="o", markersize=3, label=f"{name} ECE {ece:.3f}"
        )
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel(
        f"mean predicted probability ({bins} {'equal-width' if strategy == 'uniform' else 'equal-mass'} bins)"
    )
    axis.set_ylabel("observed frequency")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        figure.savefig(tmp, dpi=110)
    plt.close(figure)
