"""Per-finding calibration of probabilities, fitted on a validation fold and applied elsewhere.

Each finding's probability ``p`` is turned into its logit ``z = log(p / (1 - p))`` and mapped back
through a sigmoid:

* temperature scaling: ``sigmoid(z / T)``, one ``T > 0`` per finding (``T > 1`` softens
  overconfident scores); fitted by minimising the mean negative log-likelihood over ``log T``.
* Platt scaling: ``sigmoid(a * z + b)``, per finding; the unpenalised logistic-regression fit.

A finding whose scores fall as it becomes likelier on the fold (a negative Platt slope, a
temperature at the end of its search) cannot be calibrated: :class:`UnfittableFinding` says so
rather than return a mapping that reverses or flattens the scores.

A :class:`Calibration` remembers the fold it was fitted on (rows, positives, seed, a fingerprint
and short hashes of its row ids and patient ids, never the ids) so that
:func:`check_not_fitted_on` can refuse to report on those rows or on those patients' other rows.
It may also carry operating points (:mod:`convirt.zeroshot.operating_points`) chosen on the same
fold's calibrated probabilities, so that a service reading the file marks the findings that pass
them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit

from convirt._embedding_space import FINGERPRINT_KEYS, check_same_space
from convirt._io import write_json
from convirt.zeroshot.folds import fold_fingerprint, row_hash, row_hashes
from convirt.zeroshot.operating_points import OperatingPoint, canonical_rule

FORMAT = "convirt-calibration/1"
# Probabilities are clipped this far from 0 and 1 before the logit: a score of exactly 0 or 1 has none.
_EPS = 1e-7
# Temperatures searched: exp(-7) to exp(7), far beyond any seen in practice.
_LOG_T_BOUNDS = (-7.0, 7.0)
# A fitted log-temperature this close to a bound ran into it: no temperature in range fits.
_AT_BOUND = 1e-3
# A calibration file is a few parameters per finding plus 17 bytes per fitted row.
_MAX_FILE_BYTES = 64 << 20


class UnfittableFinding(ValueError):
    """A finding's scores on the fold cannot give a calibration: one class only, scores that fall
    as the finding becomes likelier, or a temperature fit that ran into its search bound."""


class CalibrationMethod(str, Enum):
    """How probabilities are rescaled: one temperature, or Platt's slope and intercept on the logit."""

    TEMPERATURE = "temperature"
    PLATT = "platt"


def _method(value: str | CalibrationMethod) -> CalibrationMethod:
    try:
        return CalibrationMethod(value)
    except ValueError:
        known = ", ".join(m.value for m in CalibrationMethod)
        raise ValueError(f"unknown calibration method {value!r}; known: {known}") from None


def logit(probs: Any) -> np.ndarray:
    """``log(p / (1 - p))`` of probabilities clipped to ``[1e-7, 1 - 1e-7]``."""
    p = np.clip(np.asarray(probs, dtype=float), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _nll(y: np.ndarray, z: np.ndarray) -> float:
    """Mean negative log-likelihood of 0/1 labels under ``sigmoid(z)``, computed without overflow."""
    return float(-(y * log_expit(z) + (1 - y) * log_expit(-z)).mean())


def _checked(labels: Any, probs: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(labels).astype(int).ravel(), np.asarray(probs, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{name!r}: {y.size} labels but {p.size} probabilities")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name!r}: labels must be 0 or 1 (leave uncertain rows out first)")
    bad = int((~np.isfinite(p)).sum())
    if bad:
        raise ValueError(f"{name!r}: {bad} of {p.size} probabilities are NaN or infinite; leave those rows out first")
    if not 0 < int(y.sum()) < y.size:
        raise UnfittableFinding(f"{name!r}: a calibration needs positives and negatives ({int(y.sum())} of {y.size})")
    return y, p


def fit_temperature(labels: Any, probs: Any, name: str = "finding") -> float:
    """The temperature ``T`` minimising the NLL of ``sigmoid(logit(p) / T)``; ``(N,)`` labels and probabilities.

    Raises:
        ValueError: Shapes differ, labels are not 0/1, or a probability is NaN or infinite.
        UnfittableFinding: One class only, or the best ``log T`` is at a bound of its search
            (scores that fall as the finding becomes likelier push ``T`` to infinity).
    """
    y, p = _checked(labels, probs, name)
    z = logit(p)
    result = minimize_scalar(lambda log_t: _nll(y, z * math.exp(-log_t)), bounds=_LOG_T_BOUNDS, method="bounded")
    log_t = float(result.x)
    if log_t - _LOG_T_BOUNDS[0] < _AT_BOUND:
        raise UnfittableFinding(
            f"{name!r}: the scores separate the classes of the validation fold completely (T {math.exp(log_t):.3g}"
            " would make every probability 0 or 1): too few rows to calibrate on, not calibrated"
        )
    if _LOG_T_BOUNDS[1] - log_t < _AT_BOUND:
        raise UnfittableFinding(
            f"{name!r}: the temperature fit ran into its upper bound (T {math.exp(log_t):.3g}): the scores do not"
            " rise as the finding becomes likelier on the validation fold: not calibrated"
        )
    return math.exp(log_t)


def fit_platt(labels: Any, probs: Any, name: str = "finding") -> tuple[float, float]:
    """Platt's ``(a, b)`` minimising the NLL of ``sigmoid(a * logit(p) + b)`` against Platt's (1999)
    smoothed targets, ``(N+ + 1) / (N+ + 2)`` for a positive and ``1 / (N- + 2)`` for a negative: on
    a small fold whose scores separate the classes the slope stays finite instead of running off
    (unsmoothed, 27 negatives below 3 positives gave a slope of 19.8).

    Raises:
        ValueError: Shapes differ, labels are not 0/1, or a probability is NaN or infinite.
        UnfittableFinding: One class only, or a slope ``a <= 0`` (the calibrated probability
            would fall as the score rises).
    """
    labels01, p = _checked(labels, probs, name)
    z = logit(p)
    positives, negatives = int(labels01.sum()), int(labels01.size - labels01.sum())
    y = np.where(labels01 == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
        t = ab[0] * z + ab[1]
        residual = expit(t) - y  # d NLL / d t per row
        return _nll(y, t), np.array([(residual * z).mean(), residual.mean()])

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="BFGS")
    a, b = float(result.x[0]), float(result.x[1])
    if not a > 0:
        raise UnfittableFinding(
            f"{name!r}: scores fall as the finding becomes likelier on the validation fold (Platt slope {a:.3g}):"
            " not calibrated"
        )
    return a, b


@dataclass(frozen=True)
class FittedFold:
    """The rows a calibration was fitted on, recognisable without naming them.

    Attributes:
        n: Rows in the fold.
        positives: ``{finding: positives}`` among the rows used for that finding.
        seed: Seed of the split that made the fold.
        fingerprint: :func:`~convirt.zeroshot.folds.fold_fingerprint` of the row ids.
        row_hashes: :func:`~convirt.zeroshot.folds.row_hashes` of the row ids.
        patient_hashes: :func:`~convirt.zeroshot.folds.row_hashes` of the rows' patient ids (empty
            when they were not given, as in files written before they were recorded).
    """

    n: int
    positives: dict[str, int]
    seed: int
    fingerprint: str
    row_hashes: tuple[str, ...] = field(repr=False)
    patient_hashes: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Calibration:
    """Per-finding calibration parameters and the fold they were fitted on.

    Attributes:
        method: Temperature or Platt scaling.
        parameters: ``{finding: {"temperature": T}}`` or ``{finding: {"a": a, "b": b}}``.
        fold: The fitted rows.
        operating_points: ``{finding: {rule: point}}`` chosen on the fold's calibrated
            probabilities (empty when none were chosen).
        scores_from: The model (``model_name``, ``checkpoint_sha256``, ``dim``: its fingerprint) and
            ``descriptors`` (the set's name) whose scores were calibrated: a calibration holds for
            those scores only (:meth:`check_scores_from`). Empty when not recorded.
    """

    method: CalibrationMethod
    parameters: dict[str, dict[str, float]]
    fold: FittedFold
    operating_points: dict[str, dict[str, OperatingPoint]] = field(default_factory=dict)
    scores_from: dict[str, Any] = field(default_factory=dict)

    def check_scores_from(self, fingerprint: dict[str, Any], descriptors: str) -> None:
        """Refuse to calibrate the scores of another model or descriptor set than the fitted one's.

        Raises:
            ValueError: The model's fingerprint or the descriptor set's name differs (both named).
        """
        check_same_space(self.scores_from, fingerprint, what="calibration")
        fitted = self.scores_from.get("descriptors")
        if fitted is not None and fitted != descriptors:
            raise ValueError(
                f"the calibration was fitted on the {fitted!r} descriptor set's scores, not {descriptors!r}"
            )

    def apply(self, finding: str, probs: Any) -> np.ndarray:
        """Calibrated ``(N,)`` probabilities of ``finding`` from its raw ``(N,)`` probabilities."""
        if finding not in self.parameters:
            raise ValueError(f"no calibration for {finding!r}; calibrated: {', '.join(self.parameters)}")
        z, values = logit(probs), self.parameters[finding]
        if self.method is CalibrationMethod.TEMPERATURE:
            return np.asarray(expit(z / values["temperature"]))
        return np.asarray(expit(values["a"] * z + values["b"]))

    def save(self, path: str | Path) -> Path:
        """Write the calibration as JSON (atomically), with its format version."""
        payload: dict[str, Any] = {"format": FORMAT, "method": self.method.value, "parameters": self.parameters}
        payload["fold"] = {
            **asdict(self.fold),
            "row_hashes": list(self.fold.row_hashes),
            "patient_hashes": list(self.fold.patient_hashes),
        }
        payload["operating_points"] = {
            finding: {rule: asdict(point) for rule, point in points.items()}
            for finding, points in self.operating_points.items()
        }
        payload["scores_from"] = self.scores_from
        return write_json(path, payload, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a calibration written by :meth:`save`; refuses other formats and bad parameters.

        Operating-point rules are read under their :func:`~convirt.zeroshot.operating_points.canonical_rule`
        names (a file may spell ``sensitivity>=0.9``); a file without patient hashes has none.
        """
        size = Path(path).stat().st_size
        if size > _MAX_FILE_BYTES:
            raise ValueError(f"calibration file of {size} bytes is over {_MAX_FILE_BYTES}: not a calibration")
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
            if payload.get("format") != FORMAT:
                raise ValueError(f"format {payload.get('format')!r}, expected {FORMAT!r}")
            method = _method(payload["method"])
            keys = {"temperature"} if method is CalibrationMethod.TEMPERATURE else {"a", "b"}
            parameters = {str(f): {k: float(v[k]) for k in keys} for f, v in payload["parameters"].items()}
            fold = payload["fold"]
            fitted = FittedFold(
                int(fold["n"]),
                {str(k): int(v) for k, v in fold["positives"].items()},
                int(fold["seed"]),
                str(fold["fingerprint"]),
                tuple(str(h) for h in fold["row_hashes"]),
                tuple(str(h) for h in fold.get("patient_hashes") or ()),
            )
            points = {str(finding): _points(rules) for finding, rules in payload.get("operating_points", {}).items()}
        except (KeyError, TypeError, AttributeError, ValueError, json.JSONDecodeError) as error:
            raise ValueError(f"not a calibration file: {error}") from None
        for finding, values in parameters.items():
            if not all(math.isfinite(v) for v in values.values()) or values.get("temperature", 1.0) <= 0:
                raise ValueError(f"calibration file: bad parameters for {finding!r}: {values}")
        scores_from = payload.get("scores_from") or {}
        if not isinstance(scores_from, dict):
            raise ValueError(f"calibration file: scores_from is {type(scores_from).__name__}, not a mapping")
        return cls(method, parameters, fitted, points, scores_from)


def scores_from(fingerprint: dict[str, Any], descriptors: str) -> dict[str, Any]:
    """What :attr:`Calibration.scores_from` records of a model's fingerprint and a descriptor set's name."""
    return {**{key: fingerprint.get(key) for key in FINGERPRINT_KEYS}, "descriptors": descriptors}


def _points(rules: dict[str, Any]) -> dict[str, OperatingPoint]:
    points: dict[str, OperatingPoint] = {}
    for rule, value in rules.items():
        name = canonical_rule(str(rule))  # an unknown rule is a ValueError
        if name in points:
            raise ValueError(f"operating point {name!r} given twice (as {rule!r} too)")
        points[name] = _point(name, value)
    return points


def _point(rule: str, value: dict[str, Any]) -> OperatingPoint:
    threshold = float(value["threshold"])
    if not math.isfinite(threshold):
        raise ValueError(f"operating point {rule!r}: threshold {threshold}")
    achieved = {str(k): float(v) for k, v in value["achieved"].items()}
    return OperatingPoint(rule, threshold, achieved, int(value["n"]), int(value["positives"]))


def fit_calibration(
    labels: Any,
    probs: Any,
    names: Sequence[str],
    row_ids: Sequence[Any],
    method: str | CalibrationMethod = "temperature",
    seed: int = 0,
    patient_ids: Sequence[Any] | None = None,
) -> Calibration:
    """Fit one calibration per finding column on a validation fold.

    Args:
        labels: ``(N, F)`` 0/1 (``-1``: uncertain, left out of that finding's fit).
        probs: ``(N, F)`` raw probabilities.
        names: ``F`` finding names.
        row_ids: ``N`` row ids (image keys) of the fold, fingerprinted into the result.
        method: ``"temperature"`` or ``"platt"``.
        seed: Seed of the split that made the fold (recorded).
        patient_ids: ``N`` patient ids of the rows, hashed into the result so that
            :func:`check_not_fitted_on` can refuse these patients' other rows; ``None``: not recorded.

    Raises:
        ValueError: Shapes or lengths disagree, the method is unknown, or a probability is not finite.
        UnfittableFinding: A finding cannot be calibrated on the fold (see :func:`fit_temperature`
            and :func:`fit_platt`); raised for the first such finding, naming it.
    """
    chosen = _method(method)
    y, p = np.asarray(labels), np.asarray(probs, dtype=float)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(names) or y.shape[0] != len(row_ids):
        raise ValueError(f"labels {y.shape}, probabilities {p.shape}, {len(names)} names, {len(row_ids)} row ids")
    if patient_ids is not None and len(patient_ids) != len(row_ids):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(row_ids)} row ids")
    parameters: dict[str, dict[str, float]] = {}
    positives: dict[str, int] = {}
    for column, name in enumerate(names):
        kept = y[:, column] >= 0
        positives[name] = int((y[kept, column] == 1).sum())
        if chosen is CalibrationMethod.TEMPERATURE:
            parameters[name] = {"temperature": fit_temperature(y[kept, column], p[kept, column], name)}
        else:
            a, b = fit_platt(y[kept, column], p[kept, column], name)
            parameters[name] = {"a": a, "b": b}
    hashes = tuple(row_hashes(row_ids))
    patients = () if patient_ids is None else tuple(row_hashes(patient_ids))
    fold = FittedFold(len(row_ids), positives, seed, fold_fingerprint(row_ids), hashes, patients)
    return Calibration(chosen, parameters, fold)


class FittedRowsError(ValueError):
    """Rows to report on include rows a calibration was fitted on, or other rows of their patients."""


# What a `convirt zeroshot --calibration FILE` user can do about it.
_REFIT = "or fit a new one (convirt zeroshot without --calibration fits one on a validation fold of its images)"


def check_not_fitted_on(
    calibration: Calibration, row_ids: Sequence[Any], patient_ids: Sequence[Any] | None = None
) -> None:
    """Refuse to report on rows the calibration was fitted on, or on other rows of its patients.

    Args:
        calibration: The calibration to report on.
        row_ids: ``N`` row ids (image keys) to report on.
        patient_ids: ``N`` patient ids of those rows; compared when given and the calibration
            recorded its fold's patients (:attr:`FittedFold.patient_hashes`).

    Raises:
        FittedRowsError: Any of ``row_ids`` is one of the fitted fold's rows, or any of
            ``patient_ids`` is one of its patients.
        ValueError: ``patient_ids`` and ``row_ids`` differ in length.
    """
    rows = [str(row) for row in row_ids]
    fold = calibration.fold
    fitted = set(fold.row_hashes)
    overlap = sum(1 for h in row_hashes(rows) if h in fitted)
    if overlap:
        raise FittedRowsError(
            f"{overlap} of the {len(set(rows))} rows to report on were used to fit this calibration"
            f" (fold {fold.fingerprint[:12]}): evaluate other images than the calibration was fitted on, {_REFIT}"
        )
    if patient_ids is None or not fold.patient_hashes:
        return
    if len(patient_ids) != len(rows):
        raise ValueError(f"{len(patient_ids)} patient ids for {len(rows)} row ids")
    fitted_patients = set(fold.patient_hashes)
    shared = {row: h for row, h in zip(rows, map(row_hash, patient_ids)) if h in fitted_patients}
    if shared:
        raise FittedRowsError(
            f"{len(shared)} of the {len(set(rows))} rows to report on ({len(set(shared.values()))} patients) share a"
            f" patient with the rows this calibration was fitted on (fold {fold.fingerprint[:12]}): report on other"
            f" patients, {_REFIT}"
        )
