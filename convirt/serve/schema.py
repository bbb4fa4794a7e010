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
    """One descriptor of a finding and the probability that the image shows it."""

    observation: str
    probability: float


class Finding(BaseModel):
    """A finding's probability from its descriptors (with the observations behind it, most likely
    first), the share of the nearest labelled cases that carry it, and its saliency map on request
    (a PNG data URL, the image's size)."""

    finding: str
    probability: float
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


class Info(BaseModel):
    """What the service runs."""

    model: dict[str, Any]
    index: IndexSummary
    descriptors: str | None
    findings: list[str]
    knn_k: int
