"""CLIP loss with extra text-only negatives for the image->text direction.

Image-report archives of one disease hold few normal studies, so nothing in their pairs tells
the image side that "normal chest radiograph" is far from an abnormal film. Report archives
without images (Open-i ships 3,955 reports, over a third of them normal) can: their texts join
each image's candidates as negatives. open_clip's ClipLoss has no such option, so it is added
here; without negatives the loss is open_clip's own (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss as OpenClipLoss

from convirt.losses.gather import gather_pairs, gather_rows


def no_groups(name: str, text_groups: torch.Tensor | None) -> None:
    """Refuse repeated-report groups for a loss that has no use for them."""
    if text_groups is not None:
        raise ValueError(f"repeated reports as positives (text groups) need loss 'convirt', not {name!r}")


def no_negatives(name: str, negatives: torch.Tensor | None) -> None:
    """Refuse text-only negatives for a loss that has no use for them."""
    if negatives is not None:
        raise ValueError(f"text-only negatives (data.negative_texts) need model.loss 'clip', got {name!r}")


class TextNegativesClipLoss(OpenClipLoss):
    """open_clip's symmetric InfoNCE at the model's logit scale; ``negatives`` widen the image->text softmax.

    Args:
        rank, world_size, local_loss, gather_with_grad, cache_labels: As open_clip's ``ClipLoss``.
            With negatives and ``world_size`` above 1, the image and text features and the
            negatives of all ranks are gathered (with gradients) and each rank scores its own
            rows against every pair's text and every rank's negatives: the loss and, once DDP
            averages them, the gradients of one process over the global batch and all its
            negatives (tested).
    """

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
        """Loss of ``(B, D)`` normalised features and ``(K, D)`` normalised negative texts (or none).

        ``logit_bias`` is not used (CLIP has none); it is there for the one call of every loss.
        """
        no_groups("clip", text_groups)
        if negatives is None:
            return super().forward(image_features, text_features, logit_scale)  # type: ignore[no-any-return]
        all_images, all_texts, rows = gather_pairs(image_features, text_features, self.rank, self.world_size)
        columns = torch.cat([all_texts, gather_rows(negatives, self.world_size)])
        image_to_text = logit_scale * image_features @ columns.T
        text_to_image = logit_scale * text_features @ all_images.T
        return (F.cross_entropy(image_to_text, rows) + F.cross_entropy(text_to_image, rows)) / 2
