"""Archive readers: each turns one archive layout into :class:`convirt.data.schema.Row` objects."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from convirt.data.schema import Row
from convirt.data.sources.csv import read_csv_rows

SOURCES: dict[str, Callable[..., Iterator[Row]]] = {
    "csv": read_csv_rows,
}


def list_sources() -> list[str]:
    """Names accepted by ``convirt shards --source``."""
    return sorted(SOURCES)


def read_rows(source: str, path: str) -> Iterator[Row]:
    """Read the rows of an archive with the reader named ``source``.

    Raises:
        ValueError: Unknown source; the message lists the known ones.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(list_sources())}")
    return SOURCES[source](path)
