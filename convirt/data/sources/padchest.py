"""PadChest: its label CSV (``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``).

Each line names an image (``ImageDir/ImageID``, 16-bit PNG) with its patient, study, projection,
the report (Spanish, as distributed: stemmed and lower-cased) and the labels as a Python list
literal. Images are looked up under ``--images`` (default: the CSV's folder).
"""

from __future__ import annotations

import ast
import csv
import os
from collections.abc import Iterator
from pathlib import Path

from convirt.data.labels import check_table, open_table
from convirt.data.schema import NO_FINDING, Row
from convirt.data.sources.csv import key_from_path

SOURCE = "padchest"
_REQUIRED = ("ImageID", "ImageDir", "PatientID", "StudyID", "Report", "Labels")


def parse_padchest_labels(value: str) -> list[str]:
    """``"['normal']"`` -> ``["No Finding"]``; ``"['pleural effusion', 'cardiomegaly']"`` -> both, stripped.

    A blank value (or pandas' ``nan``, as some exports write it) gives ``[]``.

    Raises:
        ValueError: Anything else that is not a list literal: reading it as no labels would make
            the study a normal one.
    """
    if not value or not value.strip() or value.strip().lower() == "nan":
        return []
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ValueError(f"PadChest labels {value[:80]!r} are not a list literal") from None
    if not isinstance(parsed, list):
        raise ValueError(f"PadChest labels {value[:80]!r} are not a list literal")
    labels: list[str] = []
    for item in parsed:
        name = str(item).strip()
        name = NO_FINDING if name.lower() == "normal" else name
        if name and name not in labels:
            labels.append(name)
    return labels


def read_padchest_rows(path: str | os.PathLike[str], images: str | os.PathLike[str] | None = None) -> Iterator[Row]:
    """One row per CSV line.

    Raises:
        FileNotFoundError: The CSV does not exist.
        ValueError: It lacks PadChest's columns (the message lists those found).
    """
    table = check_table(Path(path), _REQUIRED, "PadChest label CSV")
    return _rows(table, Path(images) if images else table.parent)


def _rows(table: Path, root: Path) -> Iterator[Row]:
    with open_table(table) as handle:
        for record in csv.DictReader(handle):  # type: ignore[arg-type]
            image = record["ImageID"].strip()
            folder = (record.get("ImageDir") or "").strip()
            try:
                labels, problem = parse_padchest_labels(record.get("Labels") or ""), ""
            except ValueError:  # the writer drops and counts the row rather than calling it normal
                labels, problem = [], "unparseable_labels"
            yield Row(
                key=f"padchest-{key_from_path(image)}",
                image_path=str(root / folder / image),
                text=(record.get("Report") or "").strip(),
                patient_id=f"padchest-{record['PatientID'].strip()}",
                labels=labels,
                problem=problem,
                view=(record.get("Projection") or "").strip(),
                source=SOURCE,
                study_id=f"padchest-{record['StudyID'].strip()}",
            )
