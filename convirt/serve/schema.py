"""The API's response bodies, typed: the OpenAPI page documents them, and FastAPI writes them to
JSON in pydantic's compiled serializer instead of walking dictionaries in Python."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Case(BaseModel):
    """An archive case: its index id, a salted hash of its key (``ref``), the metadata a reader may
    see (never the patient id or a file path; ``key`` and ``study_id`` only when the operator turned
    them on), its report and the URL of its image when it has one."""

    id: int
    ref: str
    key: str | None = None
    labels: list[str] = Field(default_factory=list)
    view: str | None = None
    source: str | None = None
    study_id: str | None = None
    report: str = ""
    image_url: str | None = None


class Neighbour(Case):
    """A case found by a search, with its cosine similarity to the query."""

    score: float


class Search(BaseModel):
    """The nearest archive cases, most similar first."""

    cases: list[Neighbour]


class Observation(BaseModel):
    """One descriptor of a finding and its raw score (a sigmoid of prompt similarities, never calibrated)."""

    observation: str
    score: float


class OperatingPointMark(BaseModel):
    """Whether a finding passes an operating point of the calibration file: ``passes`` is
    ``probability >= threshold``, the threshold chosen by ``rule`` on the calibrated probabilities of
    the validation fold (``youden``, ``sensitivity>=0.90``, ...)."""

    rule: str
    threshold: float
    passes: bool


class Finding(BaseModel):
    """A finding's opinion from its descriptors, with the observations behind it (highest score first),
    the share of the nearest labelled cases that carry it, and its saliency map on request (a PNG data
    URL, the image's size).

    ``score`` is the descriptors' raw output in [0, 1], always present: it orders images but is no
    probability. ``probability`` is the score calibrated by the service's calibration file, present only
    when that file calibrates this finding (else null). ``operating_point`` says whether the probability
    passes the chosen rule's threshold (null without a calibrated probability or when the file has no
    point of that rule for this finding)."""

    finding: str
    score: float
    probability: float | None = None
    operating_point: OperatingPointMark | None = None
    observations: list[Observation]
    knn_vote: float
    saliency_png: str | None = None


class Diagnosis(BaseModel):
    """Two independent opinions per finding (descriptors and kNN vote) and the neighbours behind the vote."""

    findings: list[Finding]
    neighbours: list[Neighbour]
    knn_k: int


class IndexSummary(BaseModel):
    """The index the service searches."""

    factory: str
    count: int
    dim: int


class CalibrationSummary(BaseModel):
    """The calibration file the service applies: its method (``temperature`` or ``platt``), the findings
    it calibrates, the images of the validation fold it was fitted on and that fold's fingerprint (first 12
    characters), and the operating-point rule findings are marked by (null: the file carries none)."""

    method: str
    findings: list[str]
    fitted_on: int
    fold: str
    operating_point: str | None


class Info(BaseModel):
    """What the service runs; ``calibration`` is null when it shows raw scores only."""

    model: dict[str, Any]
    index: IndexSummary
    descriptors: str | None
    findings: list[str]
    knn_k: int
    calibration: CalibrationSummary | None = None
