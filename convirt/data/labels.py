"""Label tables in their archives' own formats -> rows: CheXpert, NIH ChestX-ray14, generic CSV.

Each reader yields :class:`convirt.data.schema.Row` objects without report text, for scoring
(zero-shot, probes) and embedding. ``.csv.gz`` files are read directly.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convirt.data.schema import NO_FINDING, Row
from convirt.data.sources.csv import key_from_path, read_csv_rows

FORMATS = ("auto", "csv", "chexpert", "nih")
# How each format is read and where its findings come from, as the finding check names them.
LABEL_LAYOUTS = {
    "csv": "a generic label table (findings from column labels, ';'-separated)",
    "nih": "NIH Data_Entry_2017 (findings from column Finding Labels, '|'-separated)",
    "chexpert": "CheXpert (a column per finding)",
}
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
CHEXPERT_FINDINGS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)


def open_table(path: Path) -> io.TextIOBase:
    """A CSV file (``.csv`` or ``.csv.gz``) opened as UTF-8 text."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")  # type: ignore[return-value]
    return open(path, newline="", encoding="utf-8")  # type: ignore[return-value]


def check_table(path: Path, required: tuple[str, ...], what: str) -> Path:
    """``path``, once it is known to exist and to have the ``required`` columns.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Columns are missing; the message names ``what`` the table should be and lists
            the columns found.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    columns = _header(path)
    if missing := [c for c in required if c not in columns]:
        raise ValueError(
            f"{path}: not the {what}: columns {missing} not found; columns: {', '.join(columns) or '(none)'}"
        )
    return path


def _header(path: Path) -> list[str]:
    with open_table(path) as handle:
        return next(csv.reader(handle), [])  # type: ignore[arg-type]


def detect_format(path: str | os.PathLike[str]) -> str:
    """``nih`` (a ``Finding Labels`` column), ``chexpert`` (``Path`` and the 14 observations) or ``csv``."""
    columns = set(_header(Path(path)))
    if {"Image Index", "Finding Labels"} <= columns:
        return "nih"
    if "Path" in columns and set(CHEXPERT_FINDINGS) <= columns:
        return "chexpert"
    return "csv"


def read_label_rows(
    path: str | os.PathLike[str], format: str = "auto", images: str | None = None, uncertain: str = "zeros"
) -> Iterator[Row]:
    """Rows of a label table.

    Args:
        path: The table (``.csv`` or ``.csv.gz``).
        format: ``auto`` (detected from the header), ``csv`` (generic: ``image``, ``;``-separated
            ``labels``), ``chexpert`` or ``nih``.
        images: Folder the image paths are relative to (default: the table's folder). For NIH,
            images are looked up by file name anywhere under it (the archive spreads them over
            ``images_001/images`` ...).
        uncertain: CheXpert ``-1`` labels: ``zeros`` (negative), ``ones`` (positive) or ``ignore``
            (left out of that finding's metrics; kept in the row's ``uncertain`` list).

    Raises:
        FileNotFoundError: No table at ``path``.
        ValueError: Unknown format or policy, or missing columns (the message lists those found).
    """
    table = Path(path)
    if not table.is_file():
        raise FileNotFoundError(f"label table not found: {table}")
    if format not in FORMATS:
        raise ValueError(f"unknown label format {format!r}; known: {', '.join(FORMATS)}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"unknown uncertainty policy {uncertain!r}; known: {', '.join(UNCERTAIN_POLICIES)}")
    kind = detect_format(table) if format == "auto" else format
    root = Path(images) if images else table.parent
    if kind == "csv":
        if table.suffix == ".gz":
            raise ValueError(f"{table}: generic label CSVs are read uncompressed")
        return read_csv_rows(table, required=("image",)) if not images else _rebased(table, root)
    columns = _header(table)
    needed = ("Image Index", "Finding Labels", "Patient ID") if kind == "nih" else ("Path", *CHEXPERT_FINDINGS)
    if missing := [c for c in needed if c not in columns]:
        raise ValueError(
            f"{table}: not a {kind} label table: columns {missing} not found; columns: {', '.join(columns) or '(none)'}"
        )
    return _nih_rows(table, root) if kind == "nih" else _chexpert_rows(table, root, uncertain)


def _rebased(table: Path, root: Path) -> Iterator[Row]:
    for row in read_csv_rows(table, required=("image",)):
        relative = os.path.relpath(row.image_path, table.parent)
        row.image_path = str(root / relative)
        yield row


def _nih_rows(table: Path, root: Path) -> Iterator[Row]:
    found = {p.name: p for p in root.rglob("*.png")} if root.is_dir() else {}
    with open_table(table) as handle:
        for record in csv.DictReader(handle):  # type: ignore[arg-type]
            name = record["Image Index"].strip()
            labels = [label.strip() for label in record["Finding Labels"].split("|") if label.strip()]
            yield Row(
                key=key_from_path(name),
                image_path=str(found.get(name, root / name)),
                text="",
                patient_id=f"nih-{int(record['Patient ID'])}",
                labels=labels or [NO_FINDING],
                view=(record.get("View Position") or "").strip(),
                source="nih-chestxray14",
                study_id=f"nih-{int(record['Patient ID'])}-{record.get('Follow-up #', '').strip()}",
                sex=(record.get("Patient Gender") or "").strip(),
                age=(record.get("Patient Age") or "").strip(),
            )


def chexpert_labels(record: dict[str, str], uncertain: str = "zeros") -> tuple[list[str], list[str]]:
    """Positive and uncertain findings of a record with the 14 CheXpert columns (1 / 0 / -1 / blank).

    A blank is "not mentioned", a negative; ``-1`` follows the ``uncertain`` policy.
    """
    labels, unsure = [], []
    for finding in CHEXPERT_FINDINGS:
        value = (record.get(finding) or "").strip()
        if not value:
            continue
        number = float(value)
        if number == 1 or (number == -1 and uncertain == "ones"):
            labels.append(finding)
        elif number == -1 and uncertain == "ignore":
            unsure.append(finding)
    return labels, unsure


def _chexpert_rows(table: Path, root: Path, uncertain: str) -> Iterator[Row]:
    with open_table(table) as handle:
        for record in csv.DictReader(handle):  # type: ignore[arg-type]
            path = record["Path"].strip()
            parts = Path(path).parts
            patient = next((p for p in parts if p.startswith("patient")), key_from_path(path))
            study = next((p for p in parts if p.startswith("study")), "")
            labels, unsure = chexpert_labels(record, uncertain)
            view = (record.get("AP/PA") or record.get("Frontal/Lateral") or "").strip()
            yield Row(
                key=key_from_path(path),
                image_path=str(root / path),
                text="",
                patient_id=patient,
                labels=labels,
                view=view,
                source="chexpert",
                study_id=f"{patient}-{study}",
                uncertain=unsure,
                sex=(record.get("Sex") or "").strip(),
                age=(record.get("Age") or "").strip(),
            )


def label_matrix(metas: Sequence[dict[str, Any]], names: Sequence[str], mark_uncertain: bool = False) -> np.ndarray:
    """``(N, F)`` int labels of samples' metadata: 1 where finding ``names[f]`` is among a sample's
    ``labels``, else 0; with ``mark_uncertain``, -1 where it is among its ``uncertain`` ones
    (CheXpert -1 read under ``--uncertain ignore``: left out of that finding's metrics)."""
    labels = [{str(label) for label in meta.get("labels", [])} for meta in metas]
    unsure = [set(meta.get("uncertain", [])) if mark_uncertain else set() for meta in metas]
    return np.array(
        [[-1 if name in doubt else int(name in present) for name in names] for present, doubt in zip(labels, unsure)],
        dtype=int,
    ).reshape(len(metas), len(names))


def has_labels(metas: Sequence[dict[str, Any]]) -> bool:
    """Whether any sample's metadata has a ``labels`` field (every convirt reader writes one, if empty;
    shards without a manifest have one where their json does)."""
    return any("labels" in meta for meta in metas)


def missing_labels(purpose: str) -> str:
    """Why ``purpose`` is refused on samples without labels, and how to give them."""
    return (
        f"{purpose} needs labels, and no sample's metadata has a 'labels' field: for shards without a manifest, "
        'put the finding names in each sample\'s json ({"labels": ["Pneumonia"]}, or "Pneumonia;Edema")'
    )
