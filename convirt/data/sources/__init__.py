"""Archive readers: each turns one archive layout into :class:`convirt.data.schema.Row` objects.

A reader is ``read(path, **options) -> Iterator[Row]``; it checks its input when called and
yields rows lazily, in a deterministic order (the shard writer reads an archive once per split).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from convirt.data.schema import Row, checked_findings


class _Reader(NamedTuple):
    module: str  # imported on use
    function: str
    options: frozenset[str]  # the options it accepts
    findings: str  # where its findings come from, as the finding check names it ({labels}: the column)


_READERS: dict[str, _Reader] = {
    "csv": _Reader("convirt.data.sources.csv", "read_csv_rows", frozenset({"columns"}), "column {labels}, ;-separated"),
    "jsonl": _Reader("convirt.data.sources.csv", "read_jsonl_rows", frozenset({"columns"}), "field {labels}"),
    "openi": _Reader("convirt.data.sources.openi", "read_openi_rows", frozenset({"images"}), "the MeSH major terms"),
    "mimic-cxr": _Reader(
        "convirt.data.sources.mimic_cxr",
        "read_mimic_cxr_rows",
        frozenset({"images", "uncertain"}),
        "the CheXpert label file's finding columns",
    ),
    "chexpert-plus": _Reader(
        "convirt.data.sources.chexpert_plus",
        "read_chexpert_plus_rows",
        frozenset({"images"}),
        "no column (it reports none)",
    ),
    "padchest": _Reader("convirt.data.sources.padchest", "read_padchest_rows", frozenset({"images"}), "column Labels"),
    "covid-collection": _Reader(
        "convirt.data.sources.covid_collection", "read_covid_collection_rows", frozenset(), "column finding"
    ),
    "phantom": _Reader("convirt.data.sources.phantom", "read_phantom_rows", frozenset(), "column labels"),
}


def list_sources() -> list[str]:
    """Names accepted by ``convirt shards --source``."""
    return sorted(_READERS)


def get_reader(source: str) -> Callable[..., Iterator[Row]]:
    """The reader function of a source.

    Raises:
        ValueError: Unknown source; the message lists the known ones.
    """
    if source not in _READERS:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(list_sources())}")
    found = _READERS[source]
    reader: Callable[..., Iterator[Row]] = getattr(importlib.import_module(found.module), found.function)
    return reader


def read_rows(source: str, path: str, **options: Any) -> Iterator[Row]:
    """Read the rows of an archive with the reader named ``source``.

    Options a source does not take (``images`` for ``csv``, ``columns`` for ``openi``) are an
    error, not silently ignored. The rows' findings go through one check
    (:func:`convirt.data.schema.checked_findings`), whatever the source: a row whose findings
    are coordinates, ids or numbers ends the read with the file, the column and the values.

    Raises:
        ValueError: Unknown source, or an option the source does not accept; while the rows are
            read, a finding that is a coordinate, an id or a number.
    """
    reader = get_reader(source)
    accepted = _READERS[source].options
    given = {name: value for name, value in options.items() if value not in (None, {}, "")}
    unknown = sorted(set(given) - accepted)
    if unknown:
        flag = {"columns": "--column", "images": "--images", "uncertain": "--uncertain"}
        raise ValueError(
            f"source {source!r} does not take {', '.join(flag.get(u, u) for u in unknown)}"
            f" (it takes: {', '.join(flag.get(a, a) for a in sorted(accepted)) or 'no options'})"
        )
    rows = reader(path, **given)
    labels = (given.get("columns") or {}).get("labels", "labels")
    layout = f"the {source} source (findings from {_READERS[source].findings.format(labels=repr(labels))})"
    next_step = (
        f"put finding names in {labels!r}, or name the column that holds them with --column labels=NAME"
        if source in ("csv", "jsonl")
        else "not a file of that layout"
    )
    return checked_findings(rows, path, layout, next_step)


def is_text_only(source: str, options: Mapping[str, Any]) -> bool:
    """Whether a source's rows come without images (Open-i reports without the PNG folder)."""
    return source == "openi" and not options.get("images")
