"""Fit on a validation fold, report on the rows it never saw: calibration and operating points.

The one path every command takes (``convirt zeroshot``, the bench's ``calibration`` and
``operating_points`` protocols):

1. :func:`fit_on_validation` splits the labelled rows by patient (seeded,
   :func:`~convirt.zeroshot.folds.validation_split`), fits each finding's calibration on the
   validation side and chooses each rule's operating point there, on the calibrated
   probabilities. The result is a :class:`~convirt.zeroshot.calibration.Calibration` that
   remembers its fold, and the test side's row positions.
2. :func:`report_on_test` reports a calibration on other rows: expected calibration error (15
   equal-width bins on ``[0, 1]``, count-weighted) and Brier score before and after, and each
   operating point's sensitivity, specificity, PPV and NPV, with bootstrap CIs. It refuses rows
   the calibration was fitted on (:func:`~convirt.zeroshot.calibration.check_not_fitted_on`), so
   no command can report on the rows it fitted or chose on.

A finding without both classes on the validation side is left uncalibrated (listed in
``skipped``), not an error: a small archive may have no positive of a rare finding there.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from convirt.zeroshot.calibration import Calibration, check_not_fitted_on, fit_calibration
from convirt.zeroshot.folds import validation_split
from convirt.zeroshot.metrics import NAN, bootstrap_ci
from convirt.zeroshot.operating_points import (
    RULES,
    OperatingPointOutput,
    choose_operating_point,
    evaluate_operating_point,
)
from convirt.zeroshot.reliability import BINS, brier_score, expected_calibration_error, reliability_diagram

VALIDATION_FRACTION = 0.3
BINNING = f"{BINS} equal-width bins on [0, 1], each weighted by its share of the rows"


@dataclass(frozen=True)
class FitOnValidationOutput:
    """A calibration fitted on a validation fold, and the rest.

    Attributes:
        calibration: Parameters and operating points of the findings that could be fitted.
        validation_rows: Sorted row positions it was fitted on.
        test_rows: Sorted row positions left to report on (no patient of the validation side).
        skipped: ``{finding: reason}`` for findings left uncalibrated.
    """

    calibration: Calibration
    validation_rows: np.ndarray
    test_rows: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)


def fit_on_validation(
    labels: Any,
    probs: Any,
    names: Sequence[str],
    keys: Sequence[str],
    patient_ids: Sequence[Any],
    method: str = "temperature",
    fraction: float = VALIDATION_FRACTION,
    seed: int = 0,
    rules: Sequence[str] = RULES,
) -> FitOnValidationOutput:
    """Split by patient, fit each finding's calibration on the validation side and choose ``rules``'
    operating points on its calibrated probabilities.

    Args:
        labels: ``(N, F)`` 0/1 (-1: uncertain, left out of that finding).
        probs: ``(N, F)`` raw probabilities.
        names: ``F`` finding names.
        keys: ``N`` image keys (the rows' ids, fingerprinted into the calibration).
        patient_ids: ``N`` patient ids (a row without one passes its key).
        method: ``"temperature"`` or ``"platt"``.
        fraction: Share of patients on the validation side.
        seed: Seed of the split.
        rules: Operating-point rules (:data:`~convirt.zeroshot.operating_points.RULES`).

    Raises:
        ValueError: Shapes disagree, fewer than two patients, or no finding can be fitted.
    """
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(names) or len(keys) != len(y):
        raise ValueError(f"labels {y.shape}, probabilities {p.shape}, {len(names)} names, {len(keys)} keys")
    validation, test = validation_split(patient_ids, fraction, seed, y, list(names), require_both_classes=False)
    fitted, skipped = [], {}
    for column, name in enumerate(names):
        values = y[validation, column]
        positives, negatives = int((values == 1).sum()), int((values == 0).sum())
        if positives and negatives:
            fitted.append(column)
        else:
            skipped[name] = f"{positives} positives and {negatives} negatives on the validation fold"
    if not fitted:
        raise ValueError(f"no finding has positives and negatives on the validation fold: {skipped}")
    kept_names = [names[c] for c in fitted]
    fold_keys = [keys[row] for row in validation]
    calibration = fit_calibration(
        y[validation][:, fitted], p[validation][:, fitted], kept_names, fold_keys, method, seed
    )
    points = {}
    for column, name in zip(fitted, kept_names):
        known = y[validation, column] >= 0
        calibrated = calibration.apply(name, p[validation, column][known])
        points[name] = {rule: choose_operating_point(y[validation, column][known], calibrated, rule) for rule in rules}
    return FitOnValidationOutput(replace(calibration, operating_points=points), validation, test, skipped)


@dataclass(frozen=True)
class FindingReport:
    """One finding's calibration and operating points on the rows reported on.

    Attributes:
        n: Rows with a label for the finding.
        positives: Positives among them.
        ece, brier: ``{"before": value, "after": value}``.
        ece_ci, brier_ci: ``{"before": (low, high), "after": (low, high)}``, stratified bootstrap.
        points: The calibration's operating points, evaluated on these rows.
        parameters: The finding's calibration parameters.
    """

    n: int
    positives: int
    ece: dict[str, float]
    ece_ci: dict[str, tuple[float, float]]
    brier: dict[str, float]
    brier_ci: dict[str, tuple[float, float]]
    points: list[OperatingPointOutput]
    parameters: dict[str, float]


@dataclass(frozen=True)
class CalibrationReport:
    """A calibration reported on rows it was not fitted on.

    Attributes:
        method: ``"temperature"`` or ``"platt"``.
        n: Rows reported on.
        findings: ``{finding: FindingReport}`` for the calibrated findings.
        mean_ece, mean_brier: ``{"before", "after"}`` means over the findings.
        mean_ece_ci, mean_brier_ci: Their percentile bootstrap intervals (rows resampled together).
        fold: ``{"n", "fingerprint", "seed"}`` of the fold the calibration was fitted on.
        uncalibrated: Findings reported on with no calibration for them.
    """

    method: str
    n: int
    findings: dict[str, FindingReport]
    mean_ece: dict[str, float]
    mean_ece_ci: dict[str, tuple[float, float]]
    mean_brier: dict[str, float]
    mean_brier_ci: dict[str, tuple[float, float]]
    fold: dict[str, Any]
    uncalibrated: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the binning stated, every value and interval, the operating points by rule."""
        return {
            "method": self.method,
            "binning": BINNING,
            "fitted_on": self.fold,
            "reported_on": self.n,
            "mean": {
                "ece": self.mean_ece,
                "ece_ci": self.mean_ece_ci,
                "brier": self.mean_brier,
                "brier_ci": self.mean_brier_ci,
            },
            "findings": {
                name: {
                    "n": found.n,
                    "positives": found.positives,
                    "parameters": found.parameters,
                    "ece": found.ece,
                    "ece_ci": found.ece_ci,
                    "brier": found.brier,
                    "brier_ci": found.brier_ci,
                    "operating_points": {
                        output.point.rule: {
                            "threshold": output.point.threshold,
                            "chosen_on": {"n": output.point.n, "positives": output.point.positives},
                            **output.values,
                            **{f"{rate}_ci": output.intervals[rate] for rate in output.values},
                        }
                        for output in found.points
                    },
                }
                for name, found in self.findings.items()
            },
            "uncalibrated": self.uncalibrated,
        }


def report_on_test(
    calibration: Calibration,
    labels: Any,
    probs: Any,
    names: Sequence[str],
    keys: Sequence[str],
    bootstrap: int = 1000,
    seed: int = 0,
) -> CalibrationReport:
    """ECE and Brier before and after ``calibration``, and its operating points, on these rows.

    Args:
        calibration: Fitted elsewhere (:func:`fit_on_validation`, or a saved file).
        labels: ``(N, F)`` 0/1 (-1: left out of that finding).
        probs: ``(N, F)`` raw probabilities.
        names: ``F`` finding names; those the calibration lacks are listed as uncalibrated.
        keys: ``N`` image keys.
        bootstrap, seed: Replicates and seed of the intervals.

    Raises:
        ValueError: Any row is one the calibration was fitted on, or shapes disagree.
    """
    check_not_fitted_on(calibration, keys)
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(names) or len(keys) != len(y):
        raise ValueError(f"labels {y.shape}, probabilities {p.shape}, {len(names)} names, {len(keys)} keys")
    findings: dict[str, FindingReport] = {}
    columns = [c for c, name in enumerate(names) if name in calibration.parameters]
    for column in columns:
        name = names[column]
        known = y[:, column] >= 0
        truth, raw = y[known, column], p[known, column]
        curves = {"before": raw, "after": calibration.apply(name, raw)}
        ece = {k: _or_nan(expected_calibration_error, truth, v) for k, v in curves.items()}
        brier = {k: _or_nan(brier_score, truth, v) for k, v in curves.items()}
        points = [
            evaluate_operating_point(truth, curves["after"], point, bootstrap, seed)
            for point in calibration.operating_points.get(name, {}).values()
        ]
        findings[name] = FindingReport(
            n=int(truth.size),
            positives=int((truth == 1).sum()),
            ece=ece,
            ece_ci={k: _interval(truth, v, expected_calibration_error, bootstrap, seed) for k, v in curves.items()},
            brier=brier,
            brier_ci={k: _interval(truth, v, brier_score, bootstrap, seed) for k, v in curves.items()},
            points=points,
            parameters=calibration.parameters[name],
        )
    calibrated = p.copy()
    for column in columns:
        calibrated[:, column] = calibration.apply(names[column], p[:, column])
    mean_ece, mean_ece_ci, mean_brier, mean_brier_ci = {}, {}, {}, {}
    for when, values in (("before", p), ("after", calibrated)):
        mean_ece[when], mean_ece_ci[when] = _mean_with_ci(
            y[:, columns], values[:, columns], expected_calibration_error, bootstrap, seed
        )
        mean_brier[when], mean_brier_ci[when] = _mean_with_ci(
            y[:, columns], values[:, columns], brier_score, bootstrap, seed
        )
    fold = {"n": calibration.fold.n, "fingerprint": calibration.fold.fingerprint, "seed": calibration.fold.seed}
    uncalibrated = [name for name in names if name not in calibration.parameters]
    return CalibrationReport(
        calibration.method.value, len(y), findings, mean_ece, mean_ece_ci, mean_brier, mean_brier_ci, fold, uncalibrated
    )


@dataclass(frozen=True)
class ValidatedOutput:
    """A calibration (fitted here or given) and its report on rows it was not fitted on.

    Attributes:
        calibration: The calibration and its operating points.
        report: On ``reported_rows``.
        reported_rows: Row positions reported on: the test side when fitted here, else every row.
        fitted_here: Whether the calibration was fitted on a validation fold of these rows.
        skipped: ``{finding: reason}`` left uncalibrated when fitted here.
    """

    calibration: Calibration
    report: CalibrationReport
    reported_rows: np.ndarray
    fitted_here: bool
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report's :meth:`CalibrationReport.to_dict`, with where the calibration came from."""
        return {"fitted_here": self.fitted_here, **self.report.to_dict(), "not_fitted": self.skipped}


def validate(
    labels: Any,
    probs: Any,
    names: Sequence[str],
    keys: Sequence[str],
    patient_ids: Sequence[Any],
    calibration: Calibration | None = None,
    method: str = "temperature",
    fraction: float = VALIDATION_FRACTION,
    seed: int = 0,
    bootstrap: int = 1000,
    rules: Sequence[str] = RULES,
) -> ValidatedOutput:
    """Calibration and operating points for labelled rows, reported only where they were not fitted.

    Without ``calibration``: :func:`fit_on_validation` on these rows, then :func:`report_on_test`
    on the test side. With one (a saved file): :func:`report_on_test` on every row, which refuses
    rows it was fitted on.

    Raises:
        ValueError: See :func:`fit_on_validation` and :func:`report_on_test`.
    """
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    if calibration is not None:
        report = report_on_test(calibration, y, p, names, keys, bootstrap, seed)
        return ValidatedOutput(calibration, report, np.arange(len(y)), fitted_here=False)
    fitted = fit_on_validation(y, p, names, keys, patient_ids, method, fraction, seed, rules)
    test = fitted.test_rows
    report = report_on_test(fitted.calibration, y[test], p[test], names, [keys[r] for r in test], bootstrap, seed)
    return ValidatedOutput(fitted.calibration, report, test, True, fitted.skipped)


def _or_nan(statistic: Any, y: np.ndarray, p: np.ndarray) -> float:
    return float(statistic(y, p)) if y.size else NAN


def _interval(y: np.ndarray, p: np.ndarray, statistic: Any, bootstrap: int, seed: int) -> tuple[float, float]:
    return bootstrap_ci(y, p, statistic, bootstrap, seed) if y.size else (NAN, NAN)


def _mean_with_ci(
    labels: np.ndarray, probs: np.ndarray, statistic: Any, bootstrap: int, seed: int, level: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """The mean over findings of ``statistic`` and its percentile bootstrap interval (rows resampled
    together, as :func:`~convirt.zeroshot.metrics.mean_auroc_ci` does for AUROC)."""

    def mean(rows: np.ndarray) -> float:
        values = []
        for column in range(labels.shape[1]):
            y, p = labels[rows, column], probs[rows, column]
            if (known := y >= 0).any():
                values.append(statistic(y[known], p[known]))
        return float(np.mean(values)) if values else NAN

    everything = np.arange(len(labels))
    value = mean(everything) if len(labels) and labels.shape[1] else NAN
    if bootstrap <= 0 or math.isnan(value) or len(labels) < 2:
        return value, (NAN, NAN)
    rng = np.random.default_rng(seed)
    replicates = [mean(rng.integers(0, len(labels), len(labels))) for _ in range(bootstrap)]
    kept = [v for v in replicates if not math.isnan(v)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(kept, [tail, 100 - tail])
    return value, (float(low), float(high))


def save_reliability_diagrams(
    calibration: Calibration,
    labels: Any,
    probs: Any,
    names: Sequence[str],
    keys: Sequence[str],
    folder: str | os.PathLike[str],
    where: str = "test rows",
) -> list[Path]:
    """One reliability diagram per calibrated finding (before and after on the same axes), as
    ``folder/<finding>.png``.

    Raises:
        ValueError: Any row is one the calibration was fitted on.
    """
    check_not_fitted_on(calibration, keys)
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for column, name in enumerate(names):
        known = y[:, column] >= 0
        if name not in calibration.parameters or not known.any():
            continue
        raw = p[known, column]
        path = out / f"{_file_name(name)}.png"
        curves = {"before": raw, f"after ({calibration.method.value})": calibration.apply(name, raw)}
        reliability_diagram(y[known, column], curves, path, f"{name}: {int(known.sum())} {where}")
        written.append(path)
    return written


def _file_name(finding: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", finding).strip("_") or "finding"


CALIBRATION_FILE, RELIABILITY_FOLDER = "calibration.json", "reliability"


def save_validated(
    validated: ValidatedOutput,
    labels: Any,
    probs: Any,
    names: Sequence[str],
    keys: Sequence[str],
    folder: str | os.PathLike[str],
) -> dict[str, Any]:
    """Write ``calibration.json`` (when fitted here: reusable with ``--calibration``) and one
    reliability diagram per finding on the reported rows (``reliability/<finding>.png``) into
    ``folder``; return :meth:`ValidatedOutput.to_dict` with the files named."""
    out = Path(folder)
    rows = validated.reported_rows
    y, p = np.asarray(labels)[rows], np.asarray(probs, dtype=float)[rows]
    where = "test rows (other patients than the fit)" if validated.fitted_here else "rows (none fitted on)"
    written = save_reliability_diagrams(
        validated.calibration, y, p, names, [keys[r] for r in rows], out / RELIABILITY_FOLDER, where
    )
    files = {"reliability": [str(path.relative_to(out)) for path in written]}
    if validated.fitted_here:
        validated.calibration.save(out / CALIBRATION_FILE)
        files["calibration"] = CALIBRATION_FILE
    return {**validated.to_dict(), "files": files}
