"""Optimisation: AdamW parameter groups and the learning-rate schedule (shared by both training modules)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` (at most half the run), then cosine decay to 0."""
    total = max(1, total_steps)
    warmup = min(warmup_steps, total // 2)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def parameter_groups(
    model: nn.Module, learning_rate: float, tower_learning_rate: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW groups: pretrained trunks at ``tower_learning_rate``, heads at ``learning_rate``; no
    weight decay on norms, biases and the logit scale / bias. Frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_tower = _in_tower(name)
        no_decay = param.ndim < 2 or "logit_" in name or "norm" in name or name.endswith(".bias")
        groups.setdefault((in_tower, no_decay), []).append(param)
    return [
        {
            "params": params,
            "lr": tower_learning_rate if in_tower else learning_rate,
            "weight_decay": 0.0 if no_decay else weight_decay,
        }
        for (in_tower, no_decay), params in groups.items()
    ]


# The heads of open_clip's towers (timm / Hugging Face / its own ViT and text transformer); the rest of
# a tower is its trunk, which trains at the tower learning rate (adapters inside it too).
_HEADS = ("visual.head.", "visual.proj", "text.proj", "text.pooler", "text.text_projection", "text_projection")
_TOWERS = ("visual.", "text.", "transformer.", "token_embedding", "positional_embedding", "ln_final")


def _in_tower(name: str) -> bool:
    return name.startswith(_TOWERS) and not name.startswith(_HEADS)
