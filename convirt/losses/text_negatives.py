"""CLIP loss with extra text-only negatives for the image->text direction.

Image-report archives of one disease hold few normal studies, so nothing in their pairs tells
the image side that "normal chest radiograph" is far from an abnormal film. Report archives
without images (Open-i ships 3,955 reports, over a third of them normal) can: their texts join
each image's candidates as negatives. open_clip's ClipLoss has no such option, so it is written
here; without negatives it equals ClipLoss (tested).
"""

from __future__ import annotations

import torch
import torch.distributed.nn
import torch.nn.functional as F
from open_clip.loss import gather_features
from torch import nn


class TextNegativesClipLoss(nn.Module):
    """Symmetric InfoNCE at the model's logit scale; ``negatives`` widen the image->text softmax.

    Args:
        rank: This process's rank.
        world_size: Processes; above 1, the image and text features and the negatives of all
            ranks are gathered (with gradients) and each rank scores its own rows against every
            pair's text and every rank's negatives: the loss and, once DDP averages them, the
            gradients of one process over the global batch and all its negatives (tested).
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                negatives: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of ``(B, D)`` normalised features and ``(K, D)`` normalised negative texts (or none)."""
        batch = image_features.shape[0]
        if self.world_size > 1:
            all_images, all_texts = gather_features(image_features, text_features, local_loss=True,
                                                    gather_with_grad=True, rank=self.rank,
                                                    world_size=self.world_size)
            if negatives is not None:
                negatives = torch.cat(torch.distributed.nn.all_gather(negatives))
        else:
            all_images, all_texts = image_features, text_features
        columns = all_texts if negatives is None else torch.cat([all_texts, negatives])
        rows = torch.arange(batch, device=image_features.device) + self.rank * batch
        image_to_text = logit_scale * image_features @ columns.T
        text_to_image = logit_scale * text_features @ all_images.T
        return (F.cross_entropy(image_to_text, rows) + F.cross_entropy(text_to_image, rows)) / 2
