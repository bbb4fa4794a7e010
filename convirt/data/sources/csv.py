"""The generic CSV reader: one row per image, image paths relative to the CSV file.

Columns (names configurable): ``image``, ``text``, ``patient_id``, ``labels`` (``;``-separated),
``view``, ``source``, ``split``, ``study_id``. Only ``image`` and ``text`` are required (``text`` may
be left optional for images that are only embedded or scored).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from convirt.data.schema import Row, parse_labels

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def key_from_path(path: str) -> str:
    """A shard key from an image path: the path without extension, unsafe characters as ``_``.

    webdataset splits keys from extensions at the first dot, so dots are replaced too.
    """
    stem = str(Path(path).with_suffix(""))
    return _KEY_UNSAFE.sub("_", stem).strip("_") or "sample"


def read_csv_rows(
    path: str | os.PathLike[str],
    image_column: str = "image",
    text_column: str = "text",
    patient_column: str = "patient_id",
    labels_column: str = "labels",
    source_name: str = "csv",
    required: Sequence[str] = ("image", "text"),
) -> Iterator[Row]:
    """Return an iterator of one :class:`Row` per CSV line; the file and its columns are checked now.

    Raises:
        FileNotFoundError: The CSV does not exist.
        ValueError: A required column is missing; the message lists the columns found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found: {path}")
    with open(path, newline="", encoding="utf-8") as handle:
        columns = csv.DictReader(handle).fieldnames or []
    named = {"image": image_column, "text": text_column, "patient_id": patient_column, "labels": labels_column}
    for column in (named.get(name, name) for name in required):
        if column not in columns:
            raise ValueError(f"{path}: column {column!r} not found; columns: {', '.join(columns) or '(none)'}")
    return _rows(path, image_column, text_column, patient_column, labels_column, source_name)


def _rows(path: Path, image_column: str, text_column: str, patient_column: str, labels_column: str,
          source_name: str) -> Iterator[Row]:
    root = path.parent
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        seen: dict[str, int] = {}
        for record in reader:
            image = record[image_column] or ""
            key = key_from_path(image)
            if key in seen:
                seen[key] += 1
                key = f"{key}-{seen[key]}"
            else:
                seen[key] = 0
            yield Row(
                key=key,
                image_path=str(root / image) if image else "",
                text=(record.get(text_column) or "").strip(),
                patient_id=(record.get(patient_column) or "").strip() or key,
                labels=parse_labels(record.get(labels_column)),
                view=(record.get("view") or "").strip(),
                source=(record.get("source") or "").strip() or source_name,
                split=(record.get("split") or "").strip() or None,
                study_id=(record.get("study_id") or "").strip(),
            )
