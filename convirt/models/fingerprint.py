"""What identifies a loaded model's embedding space, as stored beside embeddings and indexes."""

from __future__ import annotations

from typing import Any

from convirt._io import file_sha256
from convirt.models.checkpoint import LoadedModel
from convirt.models.factory import get_model_config, list_models


def model_fingerprint(loaded: LoadedModel) -> dict[str, Any]:
    """The model's name, weights hash and dimension (compared by
    :func:`convirt._embedding_space.check_same_space`); its source (what ``--model`` loads it from again),
    checkpoint path and architecture config (recorded: ``None`` for models whose config open_clip
    or timm holds).

    The weights hash is the SHA-256 of the file the weights came from (checkpoint, state dict,
    folder weights); ``None`` for hub and registry towers, whose name says which weights they are.
    """
    if loaded.config is not None:
        config: dict[str, Any] | None = loaded.config
    else:
        config = get_model_config(loaded.model_name) if loaded.model_name in list_models() else None
    if loaded.weights_sha256 is not None:
        sha: str | None = loaded.weights_sha256
    else:
        sha = file_sha256(loaded.checkpoint) if loaded.checkpoint else None
    return {
        "model_name": loaded.model_name,
        "source": loaded.source or loaded.checkpoint,
        "checkpoint": loaded.checkpoint,
        "checkpoint_sha256": sha,
        "dim": loaded.embed_dim,
        "model_config": config,
    }
