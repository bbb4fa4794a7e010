"""The generic table readers: CSV and JSON Lines, one row per image, image paths relative to the file.

Columns (names configurable through ``columns``): ``image``, ``text``, ``patient_id``,
``study_id``, ``view``, ``labels`` (``;``-separated in CSV; a list or a ``;`` string in JSON),
``source``, ``split``. Only ``image`` and ``text`` are required (``text`` may be left optional
for images that are only embedded or scored).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from convirt.data.schema import Row, parse_labels

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

# Keys of a record that stands for an unparseable line (never column names: they start with "__").
_PROBLEM, _PROBLEM_KEY = "__problem__", "__key__"

FIELDS = ("image", "text", "patient_id", "study_id", "view", "labels", "source", "split", "sex", "age")


def key_from_path(path: str) -> str:
    """A shard key from an image path: the path without extension, unsafe characters as ``_``.

    webdataset splits keys from extensions at the first dot, so dots are replaced too.
    """
    stem = str(Path(path).with_suffix(""))
    return _KEY_UNSAFE.sub("_", stem).strip("_") or "sample"


def resolve_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    """The column name of each field, defaults filled in.

    Raises:
        ValueError: A field that does not exist; the message lists the known ones.
    """
    named = {name: name for name in FIELDS}
    for name, column in (columns or {}).items():
        if name not in named:
            raise ValueError(f"unknown field {name!r} in columns; known: {', '.join(FIELDS)}")
        named[name] = column
    return named


def _check_columns(path: Path, found: Sequence[str], named: Mapping[str, str], required: Sequence[str]) -> None:
    for column in (named.get(name, name) for name in required):
        if column not in found:
            raise ValueError(
                f"{path}: column {column!r} not found; columns: {', '.join(found) or '(none)'} "
                f"(choose another with --column FIELD=NAME)"
            )


def _text(value: Any) -> tuple[str, bool]:
    """Field value as clean text, and whether it held bytes that were not UTF-8."""
    text = "" if value is None else str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: the file had undecodable bytes here
        return "", True
    return text.strip(), False


def _labels(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(item).strip() for item in value if str(item).strip()]
    return parse_labels(value)


def rows_from_records(
    records: Iterable[Mapping[str, Any]], root: Path, named: Mapping[str, str], source_name: str
) -> Iterator[Row]:
    """Rows from table records (dicts keyed by column name), image paths relative to ``root``."""
    seen: dict[str, int] = {}
    for number, record in enumerate(records, 1):
        if _PROBLEM in record:
            yield _problem_row(record.get(_PROBLEM_KEY) or f"record-{number}", record[_PROBLEM], source_name)
            continue
        try:
            row = _row_from_record(record, root, named, source_name, seen)
        except Exception as error:  # noqa: BLE001 (one record must not end the read; the writer counts it)
            row = _problem_row(f"record-{number}", f"unexpected_error:{type(error).__name__}", source_name)
        yield row


def _problem_row(key: str, problem: str, source_name: str) -> Row:
    return Row(key=key, image_path="", text="", patient_id=key, source=source_name, problem=problem)


def _row_from_record(
    record: Mapping[str, Any], root: Path, named: Mapping[str, str], source_name: str, seen: dict[str, int]
) -> Row:
    """One record as a row; ``seen`` counts keys, so that repeated image paths get distinct keys."""
    image, _ = _text(record.get(named["image"]))
    key = key_from_path(image)
    if key in seen:
        seen[key] += 1
        key = f"{key}-{seen[key]}"
    else:
        seen[key] = 0
    text, bad_text = _text(record.get(named["text"]))
    return Row(
        key=key,
        image_path=str(root / image) if image else "",
        text=text,
        patient_id=_text(record.get(named["patient_id"]))[0] or key,
        labels=_labels(record.get(named["labels"])),
        view=_text(record.get(named["view"]))[0],
        source=_text(record.get(named["source"]))[0] or source_name,
        split=_text(record.get(named["split"]))[0] or None,
        study_id=_text(record.get(named["study_id"]))[0],
        sex=_text(record.get(named["sex"]))[0],
        age=_text(record.get(named["age"]))[0],
        problem="non_utf8_text" if bad_text else "",
    )


def read_csv_rows(
    path: str | os.PathLike[str],
    image_column: str = "image",
    text_column: str = "text",
    patient_column: str = "patient_id",
    labels_column: str = "labels",
    source_name: str = "csv",
    required: Sequence[str] = ("image", "text"),
    columns: Mapping[str, str] | None = None,
) -> Iterator[Row]:
    """Return an iterator of one :class:`Row` per CSV line; the file and its columns are checked now.

    Bytes that are not UTF-8 do not stop the reader: the row they sit in is marked
    ``non_utf8_text`` and the writer drops and counts it.

    Raises:
        FileNotFoundError: The CSV does not exist.
        ValueError: A required column is missing; the message lists the columns found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found: {path}")
    named = resolve_columns(
        {
            "image": image_column,
            "text": text_column,
            "patient_id": patient_column,
            "labels": labels_column,
            **(columns or {}),
        }
    )
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        _check_columns(path, csv.DictReader(handle).fieldnames or [], named, required)
    return _csv_rows(path, named, source_name)


# The csv module refuses fields over 128 KB by default, which ends the whole read; a field that
# long is a broken row, and the writer drops it by name (report_too_long) instead.
_FIELD_LIMIT = 1 << 30


def _csv_records(handle: Any, path: Path) -> Iterator[dict[str, Any]]:
    """The table's records; a line the csv module cannot parse becomes a record that names the problem."""
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)
    reader = csv.DictReader(handle)
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error:
            yield {_PROBLEM: "malformed_row", _PROBLEM_KEY: f"line-{reader.line_num}"}
            continue
        yield record


def _csv_rows(path: Path, named: Mapping[str, str], source_name: str) -> Iterator[Row]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        yield from rows_from_records(_csv_records(handle, path), path.parent, named, source_name)


def read_jsonl_rows(
    path: str | os.PathLike[str], columns: Mapping[str, str] | None = None, source_name: str = "jsonl"
) -> Iterator[Row]:
    """One :class:`Row` per line of a JSON Lines file (objects with the same fields as the CSV).

    A line that is not JSON, not an object, or an object without the image or report field is a
    ``malformed_row`` (keyed ``line-N``), dropped and counted by the writer as a bad CSV line is.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: None of the first objects has the image and report fields (the message lists
            the fields of the first one).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSON Lines file not found: {path}")
    named = resolve_columns(columns)
    required = (named["image"], named["text"])
    objects = (record for record in _json_records(path) if _PROBLEM not in record)
    checked = list(itertools.islice(objects, _CHECKED_OBJECTS))
    if not any(all(column in record for column in required) for record in checked):
        _check_columns(path, list(checked[0] if checked else {}), named, ("image", "text"))
    return rows_from_records(_json_records(path, required), path.parent, named, source_name)


# Objects read for the column check: enough to look past a few malformed ones at the top.
_CHECKED_OBJECTS = 100


def _json_records(path: Path, required: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """The file's objects; a line that is not an object with the ``required`` fields becomes a
    record that names the problem."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, a number past int's digit limit, deep nesting
                record = None
            if not isinstance(record, dict) or any(column not in record for column in required):
                yield {_PROBLEM: "malformed_row", _PROBLEM_KEY: f"line-{number}"}
                continue
            yield record
