"""Contrastive losses: open_clip's own, chosen by name, with cross-rank gathering as an option.

Every loss takes one call, open_clip's with two optional extras:
``loss(image_features, text_features, logit_scale, logit_bias=None, *, text_groups=None, negatives=None)``
(features ``(B, D)`` and L2-normalised); a loss that has no use for an extra refuses it by name.
"""

from __future__ import annotations

import torch
from open_clip.loss import SigLipLoss as OpenSigLipLoss
from torch import nn

from convirt.losses.convirt import ConVIRTLoss
from convirt.losses.text_negatives import TextNegativesClipLoss, no_groups, no_negatives

LOSSES = ("clip", "siglip", "convirt")


class SigLipLoss(OpenSigLipLoss):
    """open_clip's pairwise sigmoid loss (learnable scale and bias), under the one call of every loss."""

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,  # type: ignore[override]
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
        *,
        text_groups: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        no_groups("siglip", text_groups)
        no_negatives("siglip", negatives)
        return super().forward(image_features, text_features, logit_scale, logit_bias)  # type: ignore[no-any-return]


def create_loss(
    name: str = "clip", rank: int = 0, world_size: int = 1, gather_with_grad: bool = True, local_loss: bool = False
) -> nn.Module:
    """Create a contrastive loss.

    Args:
        name: ``clip`` (symmetric InfoNCE with the model's learnable logit scale; text-only
            ``negatives`` widen its image->text softmax), ``siglip`` (pairwise sigmoid with a
            learnable bias) or ``convirt`` (lambda-weighted bidirectional InfoNCE at a fixed
            temperature, ``text_groups`` as soft positives; see :class:`ConVIRTLoss`).
        rank: This process's rank.
        world_size: Number of processes; above 1, features from every rank are gathered so that
            each sample meets the negatives of the whole global batch.
        gather_with_grad: Let gradients flow through the gathered features (exact global loss).
        local_loss: Compute the loss of the local rows only against all columns (less memory).

    Returns:
        A module called as ``loss(image_features, text_features, logit_scale, logit_bias=None, *,
        text_groups=None, negatives=None)``.

    Raises:
        ValueError: Unknown name.
    """
    if name == "clip":
        return TextNegativesClipLoss(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=True,
            rank=rank,
            world_size=world_size,
        )
    if name == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    if name == "convirt":
        return ConVIRTLoss(rank=rank, world_size=world_size)
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
