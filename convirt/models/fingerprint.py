"""What identifies a loaded model's embedding space, as stored beside embeddings and indexes."""

from __future__ import annotations

from typing import Any

from convirt._io import file_sha256
from convirt.models.checkpoint import LoadedModel
from convirt.models.factory import get_model_config, is_open_clip_name


def model_fingerprint(loaded: LoadedModel) -> dict[str, Any]:
    """The model's name, checkpoint hash and dimension (compared by
    :func:`convirt._fingerprint.check_fingerprint`), its checkpoint path and its architecture
    config (recorded: ``None`` for open_clip's own names, whose config open_clip holds)."""
    config = None if is_open_clip_name(loaded.model_name) else get_model_config(loaded.model_name)
    return {
        "model_name": loaded.model_name,
        "checkpoint": loaded.checkpoint,
        "checkpoint_sha256": file_sha256(loaded.checkpoint),
        "dim": loaded.embed_dim,
        "model_config": config,
    }
