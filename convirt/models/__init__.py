"""Dual-encoder models: open_clip-format configs, a registry, pretrained loading, checkpoints."""

from convirt.models.checkpoint import load_checkpoint
from convirt.models.factory import (
    create_model,
    create_tokenizer,
    get_model_config,
    get_preprocess_cfg,
    image_statistics,
    is_open_clip_name,
    list_models,
)
from convirt.models.fingerprint import model_fingerprint

__all__ = [
    "create_model",
    "create_tokenizer",
    "get_model_config",
    "get_preprocess_cfg",
    "image_statistics",
    "is_open_clip_name",
    "list_models",
    "load_checkpoint",
    "model_fingerprint",
]
