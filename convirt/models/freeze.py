"""Freezing the early layers of pretrained towers (cheaper fine-tuning, fewer weights to move).

open_clip's own ``lock_text_tower`` does not know BERT-family towers, and its image lock counts
groups from the top, so both are written here over timm's and transformers' module layout.
"""

from __future__ import annotations

from typing import Any

from timm.models import group_parameters


def freeze_image_groups(model: Any, groups: int) -> int:
    """Freeze the first ``groups`` coarse groups of a timm image trunk (stem, then one per stage).

    Returns:
        Number of parameters frozen.

    Raises:
        ValueError: The image tower is not a timm trunk.
    """
    if groups <= 0:
        return 0
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None or not hasattr(trunk, "group_matcher"):
        raise ValueError("freeze_image_groups needs a timm image tower (vision_cfg.timm_model_name)")
    frozen = 0
    for index, names in group_parameters(trunk, trunk.group_matcher(coarse=True)).items():
        if index < groups:
            for name in names:
                parameter = trunk.get_parameter(name)
                parameter.requires_grad_(False)
                frozen += parameter.numel()
    return frozen


def freeze_text_layers(model: Any, layers: int) -> int:
    """Freeze the token embeddings and the first ``layers`` layers of a BERT-family text tower.

    Returns:
        Number of parameters frozen.

    Raises:
        ValueError: The text tower is not a Hugging Face encoder with ``embeddings`` and
            ``encoder.layer``, or has fewer layers than asked.
    """
    if layers <= 0:
        return 0
    transformer = getattr(getattr(model, "text", None), "transformer", None)
    blocks = getattr(getattr(transformer, "encoder", None), "layer", None)
    if transformer is None or blocks is None or not hasattr(transformer, "embeddings"):
        raise ValueError("freeze_text_layers needs a BERT-family Hugging Face text tower")
    if layers > len(blocks):
        raise ValueError(f"freeze_text_layers={layers} but the text tower has {len(blocks)} layers")
    frozen = 0
    for module in [transformer.embeddings, *blocks[:layers]]:
        for parameter in module.parameters():
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def lock_tower(model: Any, tower: str) -> int:
    """Freeze a whole pretrained trunk (LiT: "locked-image tuning"); the projection head stays trainable.

    Args:
        model: An open_clip dual encoder: timm / Hugging Face towers (``visual.trunk``,
            ``text.transformer``) or open_clip's own (``visual`` but its ``proj``; the text
            transformer with its token and position embeddings and final norm, not ``text_projection``).
        tower: ``image`` or ``text``.

    Returns:
        Number of parameters frozen.

    Raises:
        ValueError: Unknown tower, or the model has no such trunk.
    """
    if tower not in ("image", "text"):
        raise ValueError(f"unknown tower {tower!r}; known: image, text")
    frozen = 0
    for parameter in _trunk_parameters(model, tower):
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    return frozen


# open_clip's own CLIP: the text trunk's parts that sit on the model itself, beside ``text_projection``.
_NATIVE_TEXT_TRUNK = ("token_embedding", "positional_embedding", "transformer", "ln_final")


def _trunk_parameters(model: Any, tower: str) -> list[Any]:
    trunk: Any = locked_trunk(model, tower)
    if tower == "image" and "trunk" not in dict(trunk.named_children()) and hasattr(trunk, "proj"):
        return [p for name, p in trunk.named_parameters() if name != "proj"]
    if tower == "text" and trunk is getattr(model, "transformer", None):
        return [p for name, p in model.named_parameters() if name.split(".")[0] in _NATIVE_TEXT_TRUNK]
    return list(trunk.parameters())


def locked_trunk(model: Any, tower: str) -> Any:
    """The module holding the trunk :func:`lock_tower` freezes (run in eval mode when locked):
    ``visual.trunk`` / ``text.transformer``, or open_clip's own ``visual`` / ``transformer``."""
    parent: Any = getattr(model, "visual" if tower == "image" else "text", None)
    trunk: Any = getattr(parent, "trunk" if tower == "image" else "transformer", None)
    if trunk is None and tower == "image" and hasattr(parent, "proj"):  # open_clip's VisionTransformer
        trunk = parent
    if trunk is None and tower == "text" and hasattr(model, "text_projection"):  # open_clip's own CLIP
        trunk = getattr(model, "transformer", None)
    if trunk is None:
        raise ValueError(
            f"the model has no pretrained {tower} trunk to lock "
            f"({'visual.trunk' if tower == 'image' else 'text.transformer'}, or open_clip's own towers)"
        )
    return trunk
