"""The COVID-19 image data collection (ieee8023/covid-chestxray-dataset): its ``metadata.csv``.

Each line names an image (``folder/filename``) with the patient, the finding
(``Pneumonia/Viral/COVID-19``), the view, the modality and the clinical notes that become the
text. Rows of other modalities (CT) are kept out and counted as ``not_xray``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from convirt.data.schema import NO_FINDING, Row
from convirt.data.sources.csv import key_from_path

SOURCE = "covid-chestxray-dataset"
_REQUIRED = ("patientid", "finding", "filename", "clinical_notes")
# Parts of the finding path that name a kind, not a diagnosis.
_KINDS = {"viral", "bacterial", "fungal", "lipoid", "aspiration", "todo", "unknown"}


def finding_labels(finding: str) -> list[str]:
    """``"Pneumonia/Viral/COVID-19"`` -> ``["Pneumonia", "COVID-19"]``; ``"No Finding"`` kept as is."""
    labels = [part.strip() for part in finding.split("/") if part.strip() and part.strip().lower() not in _KINDS]
    return [NO_FINDING if label.lower() == "no finding" else label for label in labels]


def read_covid_collection_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """One row per line of ``metadata.csv`` (the repository root or the file itself).

    Raises:
        FileNotFoundError: No ``metadata.csv``.
        ValueError: It lacks the collection's columns (the message lists those found).
    """
    table = Path(path)
    if table.is_dir():
        table = table / "metadata.csv"
    if not table.is_file():
        raise FileNotFoundError(f"covid-chestxray-dataset metadata.csv not found: {table}")
    with open(table, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        columns = next(csv.reader(handle), [])
    if missing := [c for c in _REQUIRED if c not in columns]:
        raise ValueError(
            f"{table}: not the collection's metadata.csv: columns {missing} not found; columns: "
            f"{', '.join(columns) or '(none)'}"
        )
    return _rows(table)


def _rows(table: Path) -> Iterator[Row]:
    with open(table, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        for record in csv.DictReader(handle):
            relative = f"{(record.get('folder') or 'images').strip()}/{record['filename'].strip()}"
            notes = " ".join(
                part.strip()
                for part in (record.get("clinical_notes"), record.get("other_notes"))
                if part and part.strip()
            )
            modality = (record.get("modality") or "X-ray").strip().lower()
            try:
                notes.encode("utf-8")
                problem = ""
            except UnicodeEncodeError:
                notes, problem = "", "non_utf8_text"
            if modality not in ("x-ray", "xray", "cr", "dx"):
                problem = "not_xray"
            yield Row(
                key=key_from_path(relative),
                image_path=str(table.parent / relative),
                text=notes,
                patient_id=f"covid-{record['patientid'].strip()}",
                labels=finding_labels(record["finding"]),
                view=(record.get("view") or "").strip(),
                source=SOURCE,
                problem=problem,
            )
