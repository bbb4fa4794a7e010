"""The shard schema: the one place that names the keys of a sample.

A sample in a shard is a dict of ``__key__`` plus one field per extension, as webdataset
expects: ``jpg`` (8-bit grayscale JPEG bytes), ``txt`` (the report text, UTF-8) and ``json``
(metadata: patient, study, view, labels, source).

Every reader's findings pass one check here (:func:`checked_findings`): a finding is a name, never a
coordinate, an id or a number.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

KEY = "__key__"
IMAGE = "jpg"
TEXT = "txt"
META = "json"

SPLITS = ("train", "val", "test")
NO_FINDING = "No Finding"
LABEL_SEPARATOR = ";"
MANIFEST = "manifest.json"


@dataclass
class Row:
    """One image-report pair as an archive reader yields it, before it is written to a shard.

    Attributes:
        key: Unique sample key (letters, digits, ``-`` and ``_`` only).
        image_path: Path of the image file on disk.
        text: Report text.
        patient_id: Patient identifier, used to split without leaking patients.
        labels: Finding names; ``[]`` or ``["No Finding"]`` for a normal study.
        view: Projection (``PA``, ``AP``, ``LATERAL``) where known.
        source: Name of the archive the row came from.
        split: Official split where the archive has one, else ``None``.
        study_id: Study (exam) identifier where known: several images can share one report.
        uncertain: Findings labelled uncertain and kept out of their metrics (CheXpert ``-1``
            under the ``ignore`` policy).
        sections: The report cut into canonical sections (see :mod:`convirt.data.reports`), where
            the archive or the writer did so.
        sex, age: The patient's sex and age at the study as the archive writes them (``M``, ``063Y``,
            ``42``), where it does: evaluation reads them for subgroups; nothing shows them.
        problem: Why the reader could not use the row (``non_utf8_text``, ...); the writer drops
            and counts it under that reason.
    """

    key: str
    image_path: str
    text: str
    patient_id: str
    labels: list[str] = field(default_factory=list)
    view: str = ""
    source: str = ""
    split: str | None = None
    study_id: str = ""
    uncertain: list[str] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)
    sex: str = ""
    age: str = ""
    problem: str = ""

    def metadata(self) -> dict[str, object]:
        """Return the JSON metadata stored beside the image and text."""
        return {
            "patient_id": self.patient_id,
            "labels": list(self.labels),
            "view": self.view,
            "source": self.source,
            "study_id": self.study_id,
            **({"uncertain": list(self.uncertain)} if self.uncertain else {}),
            **({"sections": dict(self.sections)} if self.sections else {}),
            **({"sex": self.sex} if self.sex else {}),
            **({"age": self.age} if self.age else {}),
        }


def parse_labels(value: str | None) -> list[str]:
    """Split a ``;``-separated label string into clean label names."""
    if not value:
        return []
    return [part.strip() for part in str(value).split(LABEL_SEPARATOR) if part.strip()]


def finding_set(labels: Iterable[str]) -> frozenset[str]:
    """Return the set of findings, with ``No Finding`` read as the empty set."""
    return frozenset(label for label in labels if label and label != NO_FINDING)


# What a finding is never named: a box coordinate, an id, an image size, a number. A reader that took a
# column or value like these for a finding has misread its file (VinBigData's train.csv read as
# finding columns gave "class_id" and "x_min" as findings; a generic table's labels column of scores
# gave "0.5").
_NOT_FINDINGS = re.compile(r"^([xy]_?(min|max)|[xy][12]|.*_id|id|width|height|rad_id|class_id|[-+.\d\s]*)$", re.I)


def check_finding_names(
    names: Iterable[str], table: str | os.PathLike[str], layout: str, row: str = "", next_step: str = ""
) -> None:
    """Refuse findings that are coordinates, ids, sizes or numbers: the file was read in the wrong layout.

    Args:
        names: The finding names a reader would report.
        table: The file they come from.
        layout: How it was read, naming the column the findings came from.
        row: The key of the row they were first found in, where there is one.
        next_step: What to do instead (default: read the file in its own layout).

    Raises:
        ValueError: Naming the table, the layout it was read as and the names at fault.
    """
    wrong = sorted(name for name in names if _NOT_FINDINGS.match(name.strip()))
    if wrong:
        at = f" (row {row})" if row else ""
        raise ValueError(
            f"{table}{at}: read as {layout}, it would report {wrong[:5]} as findings, but findings are names "
            f"(Pleural Effusion), never coordinates, ids or numbers: {next_step or 'not a file of that layout'}"
        )


def checked_findings(
    rows: Iterable[Row], table: str | os.PathLike[str], layout: str, next_step: str = ""
) -> Iterator[Row]:
    """``rows`` as they come, each finding name (labels and uncertain ones) checked by
    :func:`check_finding_names` the first time it appears: a table names few distinct findings, so
    the check costs a set lookup a row.

    Raises:
        ValueError: At the first row with a finding that is a coordinate, an id or a number.
    """
    checked: set[str] = set()
    for item in rows:
        new = {*item.labels, *item.uncertain} - checked
        if new:
            check_finding_names(new, table, layout, item.key, next_step)
            checked |= new
        yield item
