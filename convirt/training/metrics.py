"""Metrics logged during training: in-batch image<->text recall of paired features."""

from __future__ import annotations

import torch


def retrieval_recalls(images: torch.Tensor, texts: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """R@k of paired ``(N, D)`` image and text features: is the partner among the top ``k``?"""
    similarity = images @ texts.T
    target = torch.arange(len(images), device=images.device)
    out = {}
    for direction, scores in (("i2t", similarity), ("t2i", similarity.T)):
        # rank of the partner = how many candidates score strictly higher
        rank = (scores > scores[target, target].unsqueeze(1)).sum(dim=1)
        for k in ks:
            out[f"{direction}_R@{k}"] = float((rank < k).float().mean())
    return out
