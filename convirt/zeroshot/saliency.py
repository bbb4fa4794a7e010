"""Where the model looks: Grad-CAM of an image-text score on the image tower's last convolution.

The score is the image embedding's similarity to a direction in text space, typically a
finding's positive prompt minus its negative prompt (the logit behind the zero-shot
probability). Written here because the Grad-CAM packages hook a classifier's class logit, not a
dual encoder's similarity; it needs only ``encode_image`` and the module tree.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def last_conv_layer(model: nn.Module) -> nn.Module:
    """The last ``Conv2d`` of the image tower (``model.visual`` where it exists).

    Raises:
        ValueError: The tower has no convolution after its input (a ViT: its patch
            embedding is the only one), so Grad-CAM does not apply.
    """
    tower = getattr(model, "visual", model)
    convs = [m for m in tower.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) < 2:
        raise ValueError("the image tower has no convolutional feature map (a ViT?); Grad-CAM needs a CNN tower")
    return convs[-1]


def gradcam(model: Any, image: torch.Tensor, direction: torch.Tensor, layer: nn.Module | None = None) -> torch.Tensor:
    """Grad-CAM map of ``<encode_image(image), direction>`` for one preprocessed image.

    Args:
        model: Has ``encode_image(images, normalize=True)``.
        image: ``(3, H, W)`` or ``(1, 3, H, W)``.
        direction: ``(D,)`` text-space direction (e.g. positive minus negative prompt embedding).
        layer: Convolution whose activations are weighted (default: :func:`last_conv_layer`).

    Returns:
        ``(H, W)`` map in ``[0, 1]`` (all zeros when no region raises the score).
    """
    batch = image.unsqueeze(0) if image.ndim == 3 else image
    if batch.ndim != 4 or batch.shape[0] != 1:
        raise ValueError(f"one image, (3, H, W) or (1, 3, H, W); got {tuple(image.shape)}")
    layer = layer or last_conv_layer(model)
    saved: dict[str, torch.Tensor] = {}

    def keep(_: nn.Module, __: Any, output: torch.Tensor) -> None:
        output.retain_grad()
        saved["activation"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            inputs = batch.detach().requires_grad_(True)  # gradients flow even through frozen layers
            score = (model.encode_image(inputs, normalize=True)[0].float() * direction.float()).sum()
            score.backward()
    finally:
        handle.remove()
        if isinstance(model, nn.Module):
            model.zero_grad(set_to_none=True)
    activation = saved["activation"]
    assert activation.grad is not None
    weights = activation.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=batch.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    top = cam.max()
    return cam / top if top > 0 else cam


def is_vit_tower(model: Any) -> bool:
    """Whether the image tower is a timm vision transformer (patch tokens, no conv feature map)."""
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    return trunk is not None and hasattr(trunk, "patch_embed") and hasattr(trunk, "forward_features")


@torch.no_grad()
def patch_similarity(model: Any, image: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Patch-similarity map of a ViT tower: each patch token, projected like the pooled one,
    scored against ``direction``; ``(H, W)`` in ``[0, 1]`` (positive part, scaled by its maximum).

    Raises:
        ValueError: The image tower is not a timm ViT.
    """
    if not is_vit_tower(model):
        raise ValueError("patch similarity needs a timm ViT image tower")
    batch = image.unsqueeze(0) if image.ndim == 3 else image
    trunk, head = model.visual.trunk, model.visual.head
    tokens = trunk.forward_features(batch)[0, getattr(trunk, "num_prefix_tokens", 1) :]
    height, width = trunk.patch_embed.grid_size
    projected = F.normalize(head(tokens).float(), dim=-1)
    scores = (projected @ direction.float()).reshape(1, 1, height, width)
    heat = F.interpolate(F.relu(scores), size=batch.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    top = heat.max()
    return heat / top if top > 0 else heat
