"""Archive readers: each turns one archive layout into :class:`convirt.data.schema.Row` objects.

A reader is ``read(path, **options) -> Iterator[Row]``; it checks its input when called and
yields rows lazily, in a deterministic order (the shard writer reads an archive once per split).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from convirt.data.schema import Row

# name -> (module, function, options it accepts). Modules are imported on use.
_READERS: dict[str, tuple[str, str, frozenset[str]]] = {
    "csv": ("convirt.data.sources.csv", "read_csv_rows", frozenset({"columns"})),
    "jsonl": ("convirt.data.sources.csv", "read_jsonl_rows", frozenset({"columns"})),
    "openi": ("convirt.data.sources.openi", "read_openi_rows", frozenset({"images"})),
    "mimic-cxr": ("convirt.data.sources.mimic_cxr", "read_mimic_cxr_rows", frozenset({"images", "uncertain"})),
    "chexpert-plus": ("convirt.data.sources.chexpert_plus", "read_chexpert_plus_rows", frozenset({"images"})),
    "padchest": ("convirt.data.sources.padchest", "read_padchest_rows", frozenset({"images"})),
    "covid-collection": ("convirt.data.sources.covid_collection", "read_covid_collection_rows", frozenset()),
    "phantom": ("convirt.data.sources.phantom", "read_phantom_rows", frozenset()),
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
    module, function, _ = _READERS[source]
    reader: Callable[..., Iterator[Row]] = getattr(importlib.import_module(module), function)
    return reader


def read_rows(source: str, path: str, **options: Any) -> Iterator[Row]:
    """Read the rows of an archive with the reader named ``source``.

    Options a source does not take (``images`` for ``csv``, ``columns`` for ``openi``) are an
    error, not silently ignored.

    Raises:
        ValueError: Unknown source, or an option the source does not accept.
    """
    reader = get_reader(source)
    accepted = _READERS[source][2]
    given = {name: value for name, value in options.items() if value not in (None, {}, "")}
    unknown = sorted(set(given) - accepted)
    if unknown:
        flag = {"columns": "--column", "images": "--images", "uncertain": "--uncertain"}
        raise ValueError(
            f"source {source!r} does not take {', '.join(flag.get(u, u) for u in unknown)}"
            f" (it takes: {', '.join(flag.get(a, a) for a in sorted(accepted)) or 'no options'})"
        )
    return reader(path, **given)


def is_text_only(source: str, options: Mapping[str, Any]) -> bool:
    """Whether a source's rows come without images (Open-i reports without the PNG folder)."""
    return source == "openi" and not options.get("images")
