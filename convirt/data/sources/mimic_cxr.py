"""MIMIC-CXR-JPG: the official tree and its CSV files, official splits honoured.

Layout (PhysioNet): ``files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`` with the free-text report
of each study at ``files/pXX/pNNNNNNNN/sNNNNNNNN.txt`` (MIMIC-CXR's ``mimic-cxr-reports.zip``,
unpacked into the same tree), and ``mimic-cxr-2.0.0-split.csv(.gz)``, ``-metadata.csv(.gz)`` and
``-chexpert.csv(.gz)`` at the root.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from convirt.data.labels import chexpert_labels, open_table
from convirt.data.schema import Row

SOURCE = "mimic-cxr"
_SPLITS = {"train": "train", "validate": "val", "valid": "val", "val": "val", "test": "test"}


def _table(root: Path, name: str, required: bool) -> Path | None:
    for candidate in (root / f"mimic-cxr-2.0.0-{name}.csv.gz", root / f"mimic-cxr-2.0.0-{name}.csv"):
        if candidate.is_file():
            return candidate
    if required:
        raise FileNotFoundError(
            f"{root}: mimic-cxr-2.0.0-{name}.csv(.gz) not found; --input must be the "
            f"MIMIC-CXR-JPG root (the folder that holds files/ and the CSV files)"
        )
    return None


def _records(path: Path) -> Iterator[dict[str, str]]:
    with open_table(path) as handle:
        yield from csv.DictReader(handle)  # type: ignore[arg-type]


def read_mimic_cxr_rows(
    path: str | os.PathLike[str], images: str | os.PathLike[str] | None = None, uncertain: str = "zeros"
) -> Iterator[Row]:
    """One row per image of the split file, in its order.

    Args:
        path: The MIMIC-CXR-JPG root (``files/`` and the ``mimic-cxr-2.0.0-*.csv.gz`` files).
        images: Where ``files/`` lies if not under ``path``; reports are looked up there too.
        uncertain: CheXpert ``-1`` labels: ``zeros``, ``ones`` or ``ignore``.

    Raises:
        FileNotFoundError: The root or its split file is missing.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"MIMIC-CXR-JPG root not found: {root}")
    split_table = _table(root, "split", required=True)
    assert split_table is not None
    metadata = _table(root, "metadata", required=False)
    labels = _table(root, "chexpert", required=False)
    return _rows(root, Path(images) if images else root, split_table, metadata, labels, uncertain)


def _rows(
    root: Path, tree: Path, split_table: Path, metadata: Path | None, labels: Path | None, uncertain: str
) -> Iterator[Row]:
    views = {r["dicom_id"]: (r.get("ViewPosition") or "").strip() for r in _records(metadata)} if metadata else {}
    findings: dict[str, tuple[list[str], list[str]]] = {}
    if labels:
        for record in _records(labels):
            found, unsure = chexpert_labels(record, uncertain)
            findings[record["study_id"]] = (found, unsure)
    report_cache: tuple[str, str, str] = ("", "", "")
    for record in _records(split_table):
        dicom, study, subject = record["dicom_id"], record["study_id"], record["subject_id"]
        study_dir = tree / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        if report_cache[0] != study:
            report_cache = (study, *_report(study_dir))
        text, problem = report_cache[1], report_cache[2]
        found, unsure = findings.get(study, ([], []))
        yield Row(
            key=f"mimic-{dicom}",
            image_path=str(study_dir / f"{dicom}.jpg"),
            text=text,
            patient_id=f"mimic-{subject}",
            labels=found,
            view=views.get(dicom, ""),
            source=SOURCE,
            split=_SPLITS.get(record.get("split", "").strip().lower()),
            study_id=f"mimic-{study}",
            uncertain=unsure,
            problem=problem,
        )


def _report(study_dir: Path) -> tuple[str, str]:
    """``(text, problem)`` of a study's report file."""
    path = study_dir.with_suffix(".txt")
    if not path.is_file():
        return "", "missing_report"
    try:
        return path.read_bytes().decode("utf-8"), ""
    except UnicodeDecodeError:
        return "", "non_utf8_text"
