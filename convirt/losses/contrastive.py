"""Contrastive losses: open_clip's own, chosen by name, with cross-rank gathering as an option."""

from __future__ import annotations

from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

from convirt.losses.convirt import ConVIRTLoss

LOSSES = ("clip", "siglip", "convirt")


def create_loss(name: str = "clip", rank: int = 0, world_size: int = 1, gather_with_grad: bool = True,
                local_loss: bool = False) -> nn.Module:
    """Create a contrastive loss.

    Args:
        name: ``clip`` (symmetric InfoNCE with the model's learnable logit scale), ``siglip``
            (pairwise sigmoid with a learnable bias) or ``convirt`` (lambda-weighted
            bidirectional InfoNCE at a fixed temperature; see :class:`ConVIRTLoss`).
        rank: This process's rank.
        world_size: Number of processes; above 1, features from every rank are gathered so that
            each sample meets the negatives of the whole global batch.
        gather_with_grad: Let gradients flow through the gathered features (exact global loss).
        local_loss: Compute the loss of the local rows only against all columns (less memory).

    Returns:
        A module called as ``loss(image_features, text_features, logit_scale)`` (``clip``) or
        ``loss(image_features, text_features, logit_scale, logit_bias)`` (``siglip``),
        features ``(B, D)`` and L2-normalised.

    Raises:
        ValueError: Unknown name.
    """
    if name == "clip":
        return ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                        rank=rank, world_size=world_size)
    if name == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    if name == "convirt":
        return ConVIRTLoss(rank=rank, world_size=world_size)
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
