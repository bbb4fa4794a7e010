"""The model registry: one open_clip-format JSON per variant in ``configs/``, scanned at import.

A config file holds ``{"model_cfg": ..., "preprocess_cfg": ...}``, the layout of open_clip's
``open_clip_config.json``, so an exported model and a registry entry read the same way.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import open_clip
from open_clip.model import set_model_preprocess_cfg
from open_clip.tokenizer import HFTokenizer
from torch import nn

from convirt.models import poolers  # noqa: F401 (registers the poolers the configs name)
from convirt.models.pretrained import (
    PretrainedUnavailableError,
    load_state_dict_by_position,
    load_timm_pretrained,
    offline_hint,
    resolve_image_weights,
    resolve_text_model,
)

_CONFIG_DIR = Path(__file__).parent / "configs"
OPEN_CLIP = "open_clip:"
_SCHEMAS = ("hf-hub:", "local-dir:", OPEN_CLIP)


def is_open_clip_name(name: str) -> bool:
    """True for a name open_clip resolves itself (``hf-hub:``, ``local-dir:``, ``open_clip:``), not a registry entry."""
    return name.startswith(_SCHEMAS)


def _open_clip_name(name: str) -> tuple[str, str | None]:
    """``open_clip:ARCH[@TAG]`` -> ``(ARCH, TAG)``; the architecture must be one of open_clip's."""
    arch, _, tag = name[len(OPEN_CLIP) :].partition("@")
    if arch not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip architecture {arch!r} in {name!r}; see open_clip.list_models() "
            "(e.g. 'open_clip:ViT-B-32@laion2b_s34b_b79k')"
        )
    return arch, tag or None


def _scan_configs() -> dict[str, dict[str, Any]]:
    configs = {}
    for path in sorted(_CONFIG_DIR.glob("*.json")):
        with open(path, encoding="utf-8") as handle:
            configs[path.stem] = json.load(handle)
    return configs


_MODEL_CONFIGS = _scan_configs()


def list_models() -> list[str]:
    """Names of the model variants shipped with convirt."""
    return sorted(_MODEL_CONFIGS)


def get_model_config(name: str) -> dict[str, Any]:
    """Return a copy of a registry entry (``model_cfg`` and ``preprocess_cfg``).

    Raises:
        ValueError: ``name`` is not in the registry; the message lists the known names.
    """
    if name not in _MODEL_CONFIGS:
        raise ValueError(
            f"unknown model {name!r}; known: {', '.join(list_models())} "
            "(or 'hf-hub:org/repo' / 'local-dir:/path' for an open_clip model)"
        )
    return copy.deepcopy(_MODEL_CONFIGS[name])


# How convirt resizes for evaluation, stated in every registry model's preprocessing, so that an
# exported folder tells open_clip the same (open_clip's own default is bicubic).
EVAL_RESIZE = {"interpolation": "bilinear", "resize_mode": "shortest"}


def get_preprocess_cfg(name: str) -> dict[str, Any]:
    """Image preprocessing of a model, in open_clip's ``preprocess_cfg`` keys: ``size``, ``mean``,
    ``std``, ``interpolation``, ``resize_mode`` (and ``fill_color`` where set)."""
    if name.startswith(OPEN_CLIP):
        arch, tag = _open_clip_name(name)
        vision = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {})
        tagged = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
        return {
            "size": vision.get("image_size", 224),
            "mean": tagged.get("mean", open_clip.OPENAI_DATASET_MEAN),
            "std": tagged.get("std", open_clip.OPENAI_DATASET_STD),
            "interpolation": tagged.get("interpolation", "bicubic"),
            "resize_mode": tagged.get("resize_mode", "shortest"),
        }
    if is_open_clip_name(name):
        return dict(open_clip.get_model_preprocess_cfg(create_model(name)))
    config = get_model_config(name)
    size = config["model_cfg"]["vision_cfg"].get("image_size", 224)
    return {"size": size, **EVAL_RESIZE, **config.get("preprocess_cfg", {})}


def image_statistics(model: Any) -> tuple[list[float], list[float]]:
    """The per-channel ``(mean, std)`` a built model's image tower expects."""
    config = open_clip.get_model_preprocess_cfg(model)
    mean, std = config.get("mean", open_clip.OPENAI_DATASET_MEAN), config.get("std", open_clip.OPENAI_DATASET_STD)
    return list(mean), list(std)


def embed_dim_of(name: str) -> int:
    """The embedding dimension of a registry or ``open_clip:`` model (from its config)."""
    if name.startswith(OPEN_CLIP):
        return int((open_clip.get_model_config(_open_clip_name(name)[0]) or {})["embed_dim"])
    return int(get_model_config(name)["model_cfg"]["embed_dim"])


def create_model(
    name: str,
    pretrained: bool = True,
    text_model_path: str | None = None,
    image_weights_path: str | None = None,
    pretrained_image: bool | None = None,
    vision: dict[str, Any] | None = None,
) -> nn.Module:
    """Create a dual encoder with ``encode_image`` / ``encode_text`` and its own ``logit_scale``.

    Args:
        name: A registry name (see :func:`list_models`); an open_clip ``hf-hub:`` /
            ``local-dir:`` name, which loads the whole model with its weights; or
            ``open_clip:ARCH[@TAG]``, one of open_clip's own architectures with, when
            ``pretrained``, the weights of that tag (e.g. ``open_clip:ViT-B-32@openai``).
        pretrained: Load pretrained tower weights (ignored for ``hf-hub:`` / ``local-dir:``).
        text_model_path: Local Hugging Face model folder that replaces the config's text model.
        image_weights_path: Local state-dict file for the image tower.
        pretrained_image: Load the image tower's weights (default: ``pretrained``); ``False``
            with ``pretrained`` loads the text tower's only (text-only training).

    Raises:
        ValueError: Unknown name.
        PretrainedUnavailableError: Weights could not be loaded; the message says how to load
            them from a local path.
    """
    if name.startswith(OPEN_CLIP):
        arch, tag = _open_clip_name(name)
        try:
            return open_clip.create_model(arch, pretrained=tag if pretrained else None)
        except (OSError, RuntimeError) as error:
            raise PretrainedUnavailableError(f"{offline_hint(name)} ({error})") from error
    if is_open_clip_name(name):
        try:
            return open_clip.create_model(name)
        except (OSError, RuntimeError) as error:
            raise PretrainedUnavailableError(f"{offline_hint(name)} ({error})") from error

    config = get_model_config(name)
    model_cfg = config["model_cfg"]
    text_cfg, vision_cfg = model_cfg["text_cfg"], model_cfg["vision_cfg"]
    vision_cfg.update(vision or {})
    is_hf_text = "hf_model_name" in text_cfg
    if is_hf_text:
        text_name = text_model_path or resolve_text_model(text_cfg["hf_model_name"])
        text_cfg["hf_model_name"] = text_name
        text_cfg["hf_tokenizer_name"] = text_model_path or resolve_text_model(
            text_cfg.get("hf_tokenizer_name", text_cfg["hf_model_name"])
        )
        text_cfg["hf_model_pretrained"] = pretrained
    timm_name = vision_cfg.get("timm_model_name")
    if timm_name:
        # Image weights are loaded below, so that a failure names the image tower.
        vision_cfg["timm_model_pretrained"] = False
    model_class = open_clip.CustomTextCLIP if (is_hf_text or model_cfg.pop("custom_text", False)) else open_clip.CLIP
    try:
        model = model_class(**model_cfg)
    except (OSError, RuntimeError) as error:
        source = text_cfg.get("hf_model_name", name)
        raise PretrainedUnavailableError(f"{offline_hint(source)} ({error})") from error
    if (pretrained if pretrained_image is None else pretrained_image) and timm_name:
        image_weights = image_weights_path or resolve_image_weights(timm_name)
        if image_weights is not None:
            load_state_dict_by_position(model.visual.trunk, image_weights)
        else:
            load_timm_pretrained(model.visual.trunk, timm_name)
    set_model_preprocess_cfg(model, {**open_clip.get_model_preprocess_cfg(model), **get_preprocess_cfg(name)})
    return model


def create_tokenizer(name: str, text_model_path: str | None = None) -> Any:
    """Return the tokenizer of a model: a callable from a list of texts to a ``(N, L)`` long tensor."""
    if name.startswith(OPEN_CLIP):
        return open_clip.get_tokenizer(_open_clip_name(name)[0])
    if is_open_clip_name(name):
        return open_clip.get_tokenizer(name)
    text_cfg = get_model_config(name)["model_cfg"]["text_cfg"]
    context_length = int(text_cfg.get("context_length", 77))
    if "hf_tokenizer_name" not in text_cfg:
        return open_clip.get_tokenizer("ViT-B-32", context_length=context_length)
    tokenizer_name = text_model_path or resolve_text_model(text_cfg["hf_tokenizer_name"])
    try:
        return HFTokenizer(tokenizer_name, context_length=context_length)
    except OSError as error:
        raise PretrainedUnavailableError(f"{offline_hint(tokenizer_name)} ({error})") from error
