"""CheXpert Plus: its CSV (``df_chexpert_plus_240401.csv``) with the report cut into section columns.

Image paths (``path_to_image``) are relative to the image root (``--images``, default the CSV's
folder); the PNG release stores ``.png`` files under the same names, which are found too.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from convirt.data.labels import check_table, open_table
from convirt.data.reports import COMPARISON, FINDINGS, HISTORY, IMPRESSION, OTHER, TECHNIQUE, clean_sections
from convirt.data.schema import Row
from convirt.data.sources.csv import key_from_path

SOURCE = "chexpert-plus"
# CheXpert Plus column -> canonical section.
_SECTIONS = {
    "section_findings": FINDINGS,
    "section_impression": IMPRESSION,
    "section_end_of_impression": IMPRESSION,
    "section_summary": IMPRESSION,
    "section_clinical_history": HISTORY,
    "section_history": HISTORY,
    "section_comparison": COMPARISON,
    "section_technique": TECHNIQUE,
    "section_narrative": OTHER,
}
_SPLITS = {"train": "train", "valid": "val", "validate": "val", "test": "test"}
_REQUIRED = ("path_to_image", "deid_patient_id", "report")


def read_chexpert_plus_rows(
    path: str | os.PathLike[str], images: str | os.PathLike[str] | None = None
) -> Iterator[Row]:
    """One row per CSV line.

    Raises:
        FileNotFoundError: The CSV does not exist.
        ValueError: It lacks the CheXpert Plus columns (the message lists those found).
    """
    table = check_table(Path(path), _REQUIRED, "CheXpert Plus CSV")
    return _rows(table, Path(images) if images else table.parent)


def _image(root: Path, relative: str) -> Path:
    path = root / relative
    if not path.is_file() and path.with_suffix(".png").is_file():
        return path.with_suffix(".png")
    return path


def _rows(table: Path, root: Path) -> Iterator[Row]:
    with open_table(table) as handle:
        for record in csv.DictReader(handle):  # type: ignore[arg-type]
            relative = record["path_to_image"].strip()
            parts = Path(relative).parts
            study = next((p for p in parts if p.startswith("study")), "")
            patient = record["deid_patient_id"].strip()
            raw: dict[str, str] = {}
            for column, name in _SECTIONS.items():
                value = (record.get(column) or "").strip()
                if value:
                    raw[name] = f"{raw[name]} {value}" if name in raw else value
            sections = clean_sections(raw)
            view = (record.get("ap_pa") or record.get("frontal_lateral") or "").strip()
            yield Row(
                key=key_from_path(relative),
                image_path=str(_image(root, relative)),
                text=(record.get("report") or "").strip(),
                patient_id=patient,
                view=view,
                source=SOURCE,
                split=_SPLITS.get((record.get("split") or "").strip().lower()),
                study_id=f"{patient}-{study}",
                sections=sections,
            )
