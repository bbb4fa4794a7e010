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

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from convirt.zeroshot.calibration import Calibration, UnfittableFinding, fit_calibration
from convirt.zeroshot.calibration_report import CalibrationReport, report_on_test, save_reliability_diagrams
from convirt.zeroshot.folds import validation_split
from convirt.zeroshot.operating_points import RULES, canonical_rule, choose_operating_point, parse_rule

VALIDATION_FRACTION = 0.3


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


class NoValidationFold(ValueError):
    """These rows cannot give a validation fold: too few patients, or no finding with both classes on it."""


def fit_on_rows(
    labels: Any,
    probs: Any,
    names: Sequence[str],
    keys: Sequence[str],
    patient_ids: Sequence[Any],
    method: str = "platt",
    seed: int = 0,
    rules: Sequence[str] = RULES,
    scores_from: dict[str, Any] | None = None,
) -> tuple[Calibration, dict[str, str]]:
    """Fit each finding's calibration on these (validation) rows and choose ``rules``' operating
    points on its calibrated probabilities; a finding that cannot be fitted (one class here, or
    :class:`~convirt.zeroshot.calibration.UnfittableFinding`) is left out, with the reason.

    Returns:
        The calibration (its fold: these rows and patients; ``scores_from`` recorded) and
        ``{finding: reason}`` of those left out.

    Raises:
        NoValidationFold: No finding can be fitted.
    """
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    fitted, skipped = [], {}
    for column, name in enumerate(names):
        values = y[:, column]
        try:
            fit_calibration(y[:, [column]], p[:, [column]], [name], list(keys), method, seed)
            fitted.append(column)
        except UnfittableFinding as error:
            positives, negatives = int((values == 1).sum()), int((values == 0).sum())
            skipped[name] = str(error) if positives and negatives else f"{positives} positives, {negatives} negatives"
    if not fitted:
        raise NoValidationFold(f"no finding could be calibrated on the validation fold: {skipped}")
    kept = [names[c] for c in fitted]
    calibration = fit_calibration(y[:, fitted], p[:, fitted], kept, list(keys), method, seed, list(patient_ids))
    points = {}
    for column, name in zip(fitted, kept):
        known = y[:, column] >= 0
        calibrated = calibration.apply(name, p[known, column])
        points[name] = {canonical_rule(r): choose_operating_point(y[known, column], calibrated, r) for r in rules}
    return replace(calibration, operating_points=points, scores_from=dict(scores_from or {})), skipped


def fit_on_validation(
    labels: Any,
    probs: Any,
    names: Sequence[str],
    keys: Sequence[str],
    patient_ids: Sequence[Any],
    method: str = "platt",
    fraction: float = VALIDATION_FRACTION,
    seed: int = 0,
    rules: Sequence[str] = RULES,
    scores_from: dict[str, Any] | None = None,
) -> FitOnValidationOutput:
    """Split by patient, then :func:`fit_on_rows` on the validation side.

    Args:
        labels: ``(N, F)`` 0/1 (-1: uncertain, left out of that finding).
        probs: ``(N, F)`` raw probabilities.
        names: ``F`` finding names.
        keys: ``N`` image keys (the rows' ids, fingerprinted into the calibration).
        patient_ids: ``N`` patient ids (a row without one passes its key).
        method: ``"platt"`` or ``"temperature"``.
        fraction: Share of patients on the validation side.
        seed: Seed of the split.
        rules: Operating-point rules (:data:`~convirt.zeroshot.operating_points.RULES`).
        scores_from: The model and descriptor set that made ``probs``
            (:func:`~convirt.zeroshot.calibration.scores_from`), recorded in the calibration.

    Raises:
        NoValidationFold: Fewer than two patients, or no finding can be fitted.
        ValueError: Shapes disagree.
    """
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(names) or len(keys) != len(y):
        raise ValueError(f"labels {y.shape}, probabilities {p.shape}, {len(names)} names, {len(keys)} keys")
    if len(set(map(str, patient_ids))) < 2:
        raise NoValidationFold("fewer than two patients: no validation fold can be split off")
    try:
        validation, test = validation_split(patient_ids, fraction, seed, y, list(names), require_both_classes=False)
    except ValueError as error:  # too few patients for the fraction: no fold, said, not a crash
        raise NoValidationFold(f"no validation fold: {error}") from None
    fold = [keys[row] for row in validation], [patient_ids[row] for row in validation]
    calibration, skipped = fit_on_rows(y[validation], p[validation], names, *fold, method, seed, rules, scores_from)
    return FitOnValidationOutput(calibration, validation, test, skipped)


@dataclass(frozen=True)
class ValidatedOutput:
    """A calibration (fitted here or given) and its report on rows it was not fitted on.

    Attributes:
        calibration: The calibration and its operating points.
        report: On ``reported_rows``.
        reported_rows: Row positions reported on: the test side when fitted here, else every row.
        fitted_here: Whether the calibration was fitted on a validation fold of these rows.
        skipped: ``{finding: reason}`` left uncalibrated when fitted here.
        where: Which rows the report is on, in words (the test side of a split, or every row).
    """

    calibration: Calibration
    report: CalibrationReport
    reported_rows: np.ndarray
    fitted_here: bool
    skipped: dict[str, str] = field(default_factory=dict)
    where: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The report's :meth:`CalibrationReport.to_dict`, with where the calibration came from and
        which rows it is reported on."""
        about = {"fitted_here": self.fitted_here, "reported_rows": self.where}
        return {**about, **self.report.to_dict(), "not_fitted": self.skipped}


@dataclass(frozen=True)
class LabelledRows:
    """Labelled rows scored like the evaluated ones: a separate validation split.

    Attributes:
        labels: ``(N, F)`` 0/1 (-1: left out), the evaluated rows' findings in the same order.
        probs: ``(N, F)`` raw probabilities.
        keys: ``N`` image keys.
        patient_ids: ``N`` patient ids.
    """

    labels: Any
    probs: Any
    keys: Sequence[str]
    patient_ids: Sequence[Any]


def validate(
    labels: Any,
    probs: Any,
    names: Sequence[str],
    keys: Sequence[str],
    patient_ids: Sequence[Any],
    calibration: Calibration | None = None,
    method: str = "platt",
    fraction: float = VALIDATION_FRACTION,
    seed: int = 0,
    bootstrap: int = 1000,
    rules: Sequence[str] = RULES,
    scores_from: dict[str, Any] | None = None,
    validation: LabelledRows | None = None,
) -> ValidatedOutput:
    """Calibration and operating points for labelled rows, reported only where they were not fitted.

    - ``calibration`` given (a saved file): :func:`report_on_test` on every row.
    - ``validation`` given (another split): :func:`fit_on_rows` on it, reported on every row.
    - Neither: :func:`fit_on_validation` on these rows, reported on the test side.

    Every report refuses rows, and other images of patients, the calibration was fitted on.

    Raises:
        NoValidationFold: No fold to fit on (too few patients, no finding with both classes).
        ValueError: See :func:`fit_on_validation` and :func:`report_on_test`.
    """
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    every = np.arange(len(y))
    if calibration is None and validation is not None:
        calibration, skipped = fit_on_rows(
            *(validation.labels, validation.probs, names, validation.keys, validation.patient_ids),
            *(method, seed, rules, scores_from),
        )
        report = report_on_test(calibration, y, p, names, keys, bootstrap, seed, patient_ids)
        where = f"every image ({len(y)}); fitted on another split's {calibration.fold.n}"
        return ValidatedOutput(calibration, report, every, True, skipped, where)
    if calibration is not None:
        report = report_on_test(calibration, y, p, names, keys, bootstrap, seed, patient_ids)
        where = f"every image ({len(y)}); the calibration given was fitted on {calibration.fold.n} others"
        return ValidatedOutput(calibration, report, every, False, where=where)
    fitted = fit_on_validation(y, p, names, keys, patient_ids, method, fraction, seed, rules, scores_from)
    test = fitted.test_rows
    reported = [keys[r] for r in test], [patient_ids[r] for r in test]
    report = report_on_test(fitted.calibration, y[test], p[test], names, reported[0], bootstrap, seed, reported[1])
    patients = len(set(map(str, reported[1])))
    where = f"the test side: {len(test)} of {len(y)} images, {patients} patients none of whose images was fitted on"
    return ValidatedOutput(fitted.calibration, report, test, True, fitted.skipped, where)


def validate_or_skip(
    labels: Any,
    probs: Any,
    names: Sequence[str],
    keys: Sequence[str],
    patient_ids: Sequence[Any],
    calibration: str | os.PathLike[str] | Calibration | None = None,
    method: str = "platt",
    fraction: float = VALIDATION_FRACTION,
    seed: int = 0,
    bootstrap: int = 1000,
    rules: Sequence[str] = RULES,
    scores_from: dict[str, Any] | None = None,
    validation: LabelledRows | None = None,
) -> ValidatedOutput | str:
    """:func:`validate`, or why these rows cannot give a validation fold (one patient, no finding
    that could be calibrated on it) as a string: what `convirt zeroshot` reports beside its AUROCs.

    Raises:
        ValueError: An unknown rule or a fraction outside ``(0, 1)``, a calibration file that
            cannot be read, was fitted on another model's or descriptor set's scores than
            ``scores_from`` or covers none of ``names``, rows it was fitted on
            (:class:`~convirt.zeroshot.calibration.FittedRowsError`), bad probabilities: never skipped.
    """
    for rule in rules:
        parse_rule(rule)
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction {fraction} is not between 0 and 1")
    given = Calibration.load(calibration) if isinstance(calibration, (str, os.PathLike)) else calibration
    if given is not None and scores_from:
        given.check_scores_from(scores_from, str(scores_from.get("descriptors")))
    if given is not None and not set(given.parameters) & set(names):
        raise ValueError(f"the calibration is for {sorted(given.parameters)}, none of {list(names)}")
    try:
        return validate(
            *(labels, probs, names, keys, patient_ids, given, method, fraction, seed, bootstrap, rules),
            *(scores_from, validation),
        )
    except NoValidationFold as error:
        return str(error)


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
    where = "images the calibration was not fitted on"
    written = save_reliability_diagrams(
        validated.calibration, y, p, names, [keys[r] for r in rows], out / RELIABILITY_FOLDER, where
    )
    files: dict[str, Any] = {"reliability": [str(path.relative_to(out)) for path in written]}
    if validated.fitted_here:
        validated.calibration.save(out / CALIBRATION_FILE)
        files["calibration"] = CALIBRATION_FILE
    return {**validated.to_dict(), "files": files}
