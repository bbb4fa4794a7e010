"""A validation fold split off by patient, and fingerprints of the rows a fold holds.

Calibration and operating points are fitted on the validation side and reported on the test side;
no patient is on both sides, so a patient's other images cannot tell the test side what the
validation side learnt. The fingerprints let a later step refuse to report on the rows a fit saw.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

# Characters of a row's SHA-256 kept to recognise it again: 64 bits, no collision in practice.
_ROW_HASH_CHARS = 16


def validation_split(
    patient_ids: Sequence[Any],
    fraction: float = 0.3,
    seed: int = 0,
    labels: Any = None,
    names: Sequence[str] | None = None,
    require_both_classes: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows into a validation side (about ``fraction`` of the patients) and a test side.

    Every row of a patient lands on the same side. The same inputs and seed give the same split.
    Patients, not rows, are drawn: ``fraction`` of them (rounded up) go to the validation side.
    Without labels they are drawn by :class:`~sklearn.model_selection.ShuffleSplit`. With
    labels, by :class:`~sklearn.model_selection.StratifiedShuffleSplit` over patients, stratified
    by whether a patient has a positive row for the finding with the fewest rows in its rarer
    class (the one most at risk of missing a class on one side); if a stratum has under two
    patients the draw is not stratified.

    Args:
        patient_ids: ``(N,)`` one per row; a row without a patient id should pass its image key.
        fraction: Share of patients on the validation side, in ``(0, 1)``.
        seed: Seed of the draw.
        labels: ``(N,)`` or ``(N, F)`` 0/1 labels (``-1``: uncertain, not counted), or ``None``.
        names: ``F`` finding names for error messages (default ``finding 0``, ...).
        require_both_classes: Refuse a split that leaves a side without positives or negatives
            of a finding (``False``: the caller leaves such findings out itself).

    Returns:
        ``(val_idx, test_idx)``: sorted row positions of each side.

    Raises:
        ValueError: A row has no patient id, the fraction is outside ``(0, 1)``, there are fewer
            than two patients, or (``require_both_classes``) a side would have no positives or
            no negatives for a finding.
    """
    groups = _patient_groups(patient_ids)
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction {fraction} is not in (0, 1)")
    patients = len(set(groups))
    if patients < 2:
        raise ValueError(f"{patients} patient(s): a validation split needs at least two")
    matrix = None if labels is None else _label_matrix(labels, len(groups))
    patient_of, strata = _patients(groups, None if matrix is None else matrix[:, _rarest(matrix)])
    held_count = math.ceil(fraction * patients)
    if held_count >= patients:
        raise ValueError(f"a fraction of {fraction} of {patients} patients leaves none on the test side")
    # Stratified where each side can hold a patient of each stratum, else a plain draw (scikit-learn
    # refuses a stratified one that cannot).
    if strata is None or np.bincount(strata).min() < 2 or min(held_count, patients - held_count) < 2:
        _, held = next(ShuffleSplit(1, test_size=held_count, random_state=seed).split(np.zeros(patients)))
    else:
        _, held = next(
            StratifiedShuffleSplit(1, test_size=held_count, random_state=seed).split(np.zeros(patients), strata)
        )
    on_val = np.isin(patient_of, held)
    val_idx, test_idx = np.flatnonzero(on_val), np.flatnonzero(~on_val)
    if matrix is not None and require_both_classes:
        _check_both_classes(matrix, val_idx, test_idx, names)
    return np.sort(val_idx), np.sort(test_idx)


def _patient_groups(patient_ids: Sequence[Any]) -> np.ndarray:
    ids = list(patient_ids)
    for row, value in enumerate(ids):
        if value is None or str(value) == "":
            raise ValueError(f"row {row} has no patient id; pass the image key for rows without one")
    return np.asarray([str(value) for value in ids])


def _patients(groups: np.ndarray, stratum: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Each row's patient number, and each patient's stratum: 1 if any of its rows is positive."""
    _, patient_of = np.unique(groups, return_inverse=True)
    if stratum is None:
        return patient_of, None
    positive = np.zeros(patient_of.max() + 1, dtype=int)
    np.maximum.at(positive, patient_of, (stratum == 1).astype(int))
    return patient_of, positive


def _label_matrix(labels: Any, rows: int) -> np.ndarray:
    matrix = np.asarray(labels).astype(int)
    matrix = matrix.reshape(-1, 1) if matrix.ndim == 1 else matrix
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        raise ValueError(f"labels {np.asarray(labels).shape} do not match {rows} patient ids")
    if not np.isin(matrix, (-1, 0, 1)).all():
        raise ValueError("labels must be 0, 1 or -1 (uncertain)")
    return matrix


def _rarest(matrix: np.ndarray) -> int:
    rarer_class = np.minimum((matrix == 1).sum(axis=0), (matrix == 0).sum(axis=0))
    return int(np.argmin(rarer_class))


def _check_both_classes(
    matrix: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray, names: Sequence[str] | None
) -> None:
    for column in range(matrix.shape[1]):
        name = names[column] if names is not None else f"finding {column}"
        for side, rows in (("validation", val_idx), ("test", test_idx)):
            values = matrix[rows, column]
            positives, negatives = int((values == 1).sum()), int((values == 0).sum())
            if positives == 0 or negatives == 0:
                what = "no positives" if positives == 0 else "no negatives"
                raise ValueError(
                    f"{name!r}: the {side} side would have {what} ({positives} positives, {negatives} negatives);"
                    " change the fraction or seed, or leave the finding out"
                )


def row_hash(row_id: Any) -> str:
    """The short SHA-256 hash of one row id (or patient id), as :func:`row_hashes` keeps it."""
    return hashlib.sha256(str(row_id).encode()).hexdigest()[:_ROW_HASH_CHARS]


def row_hashes(row_ids: Sequence[Any]) -> list[str]:
    """Sorted, de-duplicated short SHA-256 hashes of row ids: rows recognised again without naming them."""
    return sorted({row_hash(row) for row in row_ids})


def fold_fingerprint(row_ids: Sequence[Any]) -> str:
    """SHA-256 of a fold's set of row ids (order and repeats do not matter)."""
    return hashlib.sha256("\n".join(row_hashes(row_ids)).encode()).hexdigest()
