"""The shard schema: the one place that names the keys of a sample.

A sample in a shard is a dict of ``__key__`` plus one field per extension, as webdataset
expects: ``jpg`` (8-bit grayscale JPEG bytes), ``txt`` (the report text, UTF-8) and ``json``
(metadata: patient, study, view, labels, source).
"""

from __future__ import annotations

from collections.abc import Iterable
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
