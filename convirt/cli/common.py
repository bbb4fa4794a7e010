"""Pieces shared by the commands. Heavy imports stay inside functions so that `convirt` starts fast."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convirt.models.checkpoint import LoadedModel


def eval_batches(loaded: LoadedModel, shards: str, split: str, batch_size: int,
                 skip_keys: set[str] | None = None) -> Iterable[dict[str, Any]]:
    """Batches of one split, preprocessed as the model expects, each sample once and in order."""
    from convirt.data.stream import build_batches
    from convirt.data.transforms import clean_report, image_transform_for
    from convirt.data.writer import shard_urls
    from convirt.models.factory import get_preprocess_cfg

    transform = image_transform_for(get_preprocess_cfg(loaded.model_name), train=False)
    return build_batches(shard_urls(shards, split), transform, loaded.tokenizer, batch_size,
                         text_transform=clean_report, skip_keys=skip_keys)


def model_fingerprint(loaded: LoadedModel) -> dict[str, Any]:
    """What identifies the embedding space of a model: its name, checkpoint hash and dimension."""
    from convirt.data.writer import file_sha256

    return {"model_name": loaded.model_name, "checkpoint": loaded.checkpoint,
            "checkpoint_sha256": file_sha256(loaded.checkpoint), "dim": loaded.embed_dim}


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write JSON atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
