"""Data: archive rows -> WebDataset shards -> streaming batches.

The public calls are importable from here (``from convirt.data import write_shards``). They are
loaded on first use (PEP 562), so importing one light module such as ``convirt.data.schema``
does not import the image, shard and streaming stack with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_image_rows": "inputs",
    "read_split_file": "inputs",
    "build_eval_batches": "inputs",
    "build_input_batches": "inputs",
    "parse_where": "inputs",
    "read_label_rows": "labels",
    "label_matrix": "labels",
    "chexpert_labels": "labels",
    "write_shards": "writer",
    "assign_split": "writer",
    "read_manifest": "shards",
    "shard_urls": "shards",
    "require_images": "shards",
    "open_foreign_shards": "foreign",
    "is_foreign_shards": "foreign",
    "parse_fields": "fields",
    "Fields": "fields",
    "build_batches": "stream",
    "decode_grayscale": "stream",
    "image_transform_for": "transforms",
    "build_image_transform": "transforms",
    "load_grayscale": "images",
    "load_dicom": "images",
    "RefusedImageError": "images",
    "read_signatures": "signatures",
    "Signatures": "signatures",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'convirt.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"convirt.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
