"""A calibration reported on rows it was not fitted on: ECE and Brier before and after, operating points.

:func:`report_on_test` is the one place a calibration (and the operating points it carries) is
reported; it refuses rows the calibration was fitted on
(:func:`~convirt.zeroshot.calibration.check_not_fitted_on`). Expected calibration error: 15
equal-width bins on ``[0, 1]``, each weighted by its share of the rows
(:mod:`convirt.zeroshot.reliability`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convirt.zeroshot.calibration import Calibration, check_not_fitted_on
from convirt.zeroshot.metrics import NAN, bootstrap_ci
from convirt.zeroshot.operating_points import OperatingPointOutput, evaluate_operating_point
from convirt.zeroshot.reliability import BINS, brier_score, expected_calibration_error, reliability_diagram

BINNING = f"{BINS} equal-width bins on [0, 1], each weighted by its share of the rows"


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
        mean_ece, mean_brier: ``{"before", "after"}`` means over every finding of ``names``, an
            uncalibrated one counted as it was (after = before), so that two calibrations that
            refused different findings are compared over the same findings.
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
    patient_ids: Sequence[Any] | None = None,
) -> CalibrationReport:
    """ECE and Brier before and after ``calibration``, and its operating points, on these rows.

    Args:
        calibration: Fitted elsewhere (:func:`fit_on_validation`, or a saved file).
        labels: ``(N, F)`` 0/1 (-1: left out of that finding).
        probs: ``(N, F)`` raw probabilities.
        names: ``F`` finding names; those the calibration lacks are listed as uncalibrated.
        keys: ``N`` image keys.
        bootstrap, seed: Replicates and seed of the intervals.
        patient_ids: ``N`` patient ids: another image of a patient the calibration was fitted on
            is refused too (where the calibration recorded its patients).

    Raises:
        FittedRowsError: Any row, or any row's patient, is one the calibration was fitted on.
        ValueError: Shapes disagree.
    """
    check_not_fitted_on(calibration, keys, patient_ids)
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
        # Over every finding, an uncalibrated one as it was: two models' means cover the same findings.
        mean_ece[when], mean_ece_ci[when] = _mean_with_ci(y, values, expected_calibration_error, bootstrap, seed)
        mean_brier[when], mean_brier_ci[when] = _mean_with_ci(y, values, brier_score, bootstrap, seed)
    fold = {"n": calibration.fold.n, "fingerprint": calibration.fold.fingerprint, "seed": calibration.fold.seed}
    uncalibrated = [name for name in names if name not in calibration.parameters]
    return CalibrationReport(
        calibration.method.value, len(y), findings, mean_ece, mean_ece_ci, mean_brier, mean_brier_ci, fold, uncalibrated
    )


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


def format_calibration(found: dict[str, Any]) -> str:
    """The text tables of a report's dict (:meth:`ValidatedOutput.to_dict
    <convirt.zeroshot.validated.ValidatedOutput.to_dict>`): ECE and Brier before and after per
    finding, then each finding's operating points, with 95% CIs."""
    where = "the other patients" if found["fitted_here"] else "every image (none fitted on)"
    fitted = found["fitted_on"]
    lines = [
        f"calibration ({found['method']}, fitted on {fitted['n']} images of fold {fitted['fingerprint'][:12]}),"
        f" reported on {found['reported_on']} images, {where}; ECE: {found['binning']}",
        f"{'finding':<20} {'ECE before':>22} {'ECE after':>22} {'Brier before':>22} {'Brier after':>22}",
    ]
    for name, finding in found["findings"].items():
        cells = [
            _cell(finding[measure][when], finding[f"{measure}_ci"][when])
            for measure in ("ece", "brier")
            for when in ("before", "after")
        ]
        lines.append(f"{name:<20} " + " ".join(f"{c:>22}" for c in cells))
    rates = ("sensitivity", "specificity", "ppv", "npv")
    lines += [
        "",
        "operating points chosen on the validation fold, reported here [95% CI]",
        f"{'finding':<20} {'rule':<18} {'threshold':>9} " + " ".join(f"{r:>22}" for r in rates),
    ]
    for name, finding in found["findings"].items():
        for rule, point in finding["operating_points"].items():
            cells = [_cell(point[rate], point[f"{rate}_ci"]) for rate in rates]
            lines.append(f"{name:<20} {rule:<18} {point['threshold']:>9.3f} " + " ".join(f"{c:>22}" for c in cells))
    refused = found.get("not_fitted", {})
    left = [f"{name} ({reason})" for name, reason in refused.items()]
    left += [name for name in found["uncalibrated"] if name not in refused]
    if left:
        lines.append("not calibrated: " + "; ".join(left))
    return "\n".join(lines)


def _cell(value: float, ci: Sequence[float]) -> str:
    def number(x: float) -> str:
        return "n/a" if x is None or x != x else f"{x:.3f}"

    return number(value) if ci[0] is None or ci[0] != ci[0] else f"{number(value)} [{number(ci[0])}, {number(ci[1])}]"
