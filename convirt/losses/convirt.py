"""The ConVIRT loss (Zhang et al., 2020): asymmetric bidirectional InfoNCE with a fixed temperature.

open_clip's ClipLoss is symmetric with a learnable scale; ConVIRT weights the image->text and
text->image terms by lambda and keeps tau fixed, so it is written here. It also offers soft
targets for repeated reports: archives repeat "No acute cardiopulmonary process." thousands of
times, and treating those copies as negatives of each other punishes the model for being right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convirt.losses.gather import gather_pairs, gather_rows
from convirt.losses.text_negatives import no_negatives


class ConVIRTLoss(nn.Module):
    """``lambda * L(image->text) + (1 - lambda) * L(text->image)`` at temperature ``tau``.

    Args:
        weight: lambda, the weight of the image->text term (paper: 0.75).
        temperature: tau (paper: 0.1).
        rank: This process's rank.
        world_size: Processes; above 1, features of all ranks are gathered (with gradients) and
            each rank scores its own rows against every column.
    """

    def __init__(self, weight: float = 0.75, temperature: float = 0.1, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight (lambda) must be in [0, 1], got {weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.weight, self.temperature = weight, temperature
        self.rank, self.world_size = rank, world_size

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor | None = None,
        logit_bias: torch.Tensor | None = None,
        *,
        text_groups: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of ``(B, D)`` normalised features.

        Args:
            image_features: ``(B, D)``.
            text_features: ``(B, D)``.
            logit_scale, logit_bias: Ignored (ConVIRT's temperature is fixed); accepted for the
                one call of every loss.
            text_groups: ``(B,)`` int64 ids, equal for texts that are the same after
                normalisation; such pairs become positives of each other (soft targets).
            negatives: Not supported (an error when given).
        """
        no_negatives("convirt", negatives)
        all_images, all_texts, rows = gather_pairs(image_features, text_features, self.rank, self.world_size)
        groups = gather_rows(text_groups, self.world_size, with_grad=False) if text_groups is not None else None
        image_to_text = image_features @ all_texts.T / self.temperature  # (B, world*B)
        text_to_image = text_features @ all_images.T / self.temperature
        if groups is None:
            targets: torch.Tensor = rows
            loss_i2t = F.cross_entropy(image_to_text, targets)
            loss_t2i = F.cross_entropy(text_to_image, targets)
        else:
            local = groups[rows]
            soft = (local[:, None] == groups[None, :]).float()
            soft = soft / soft.sum(dim=1, keepdim=True)
            loss_i2t = -(soft * F.log_softmax(image_to_text, dim=1)).sum(dim=1).mean()
            loss_t2i = -(soft * F.log_softmax(text_to_image, dim=1)).sum(dim=1).mean()
        return self.weight * loss_i2t + (1 - self.weight) * loss_t2i
