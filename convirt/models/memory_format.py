"""Channels-last memory for convolutional image towers.

oneDNN (CPU) and cuDNN (GPU) run convolutions faster on NHWC tensors (`benchmarks/run.py` measures
the demo step both ways on each machine). Weights and outputs are the same up to float
rounding; a state dict saved from such a model loads into a plain one and back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def is_convolutional(model: Any) -> bool:
    """The image tower is a CNN: more than one 2-d convolution (a ViT has one, its patch embedding)."""
    visual = getattr(model, "visual", None)
    return isinstance(visual, nn.Module) and sum(isinstance(m, nn.Conv2d) for m in visual.modules()) > 1


def to_channels_last(model: Any) -> bool:
    """Store a convolutional image tower's weights channels-last; returns whether it did."""
    if not is_convolutional(model):
        return False
    model.visual.to(memory_format=torch.channels_last)
    return True


def channels_last_images(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` images laid out channels-last (the same values)."""
    return images.contiguous(memory_format=torch.channels_last) if images.ndim == 4 else images
