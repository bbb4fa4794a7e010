"""Trunk features: a tower's pooled output before the projection into the joint space.

The probes of ConVIRT, GLoRIA and CXR-CLIP fit on the image encoder's own features (the
projection head removed), and text pretraining on reports (section matching) trains the text
trunk under the pooling the model will use. Both need the features below the projection.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def image_trunk_features(model: Any, images: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` pooled image-trunk features of ``(B, 3, H, W)`` images (no projection).

    A trunk that returns a feature map ``(B, C, H, W)`` or tokens ``(B, N, C)`` is average-pooled.

    Raises:
        ValueError: The model's image tower has no separate trunk (open_clip's own towers).
    """
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None:
        raise ValueError(
            "the model's image tower has no trunk (visual.trunk) to take features from; "
            "use the joint embeddings instead (--features embedding)"
        )
    features = trunk(images)
    if features.ndim == 4:
        features = features.mean(dim=(2, 3))
    elif features.ndim == 3:
        features = features.mean(dim=1)
    return features  # type: ignore[no-any-return]


def text_trunk_features(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` text-trunk features of ``(B, L)`` token ids, pooled by the model's own pooler.

    Raises:
        ValueError: The text tower is not a Hugging Face trunk with a pooler.
    """
    text = getattr(model, "text", None)
    if text is None or not hasattr(text, "transformer") or not hasattr(text, "pooler"):
        raise ValueError(
            "the model's text tower is not a Hugging Face trunk with a pooler (text.transformer, text.pooler)"
        )
    mask = (tokens != text.config.pad_token_id).long()
    return text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)  # type: ignore[no-any-return]


class TrunkEncoder:
    """A model seen through its trunks: ``encode_image`` / ``encode_text`` return trunk features.

    Lets the embedding and probe code, which only call ``encode_*``, work on trunk features.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = image_trunk_features(self.model, images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = text_trunk_features(self.model, tokens)
        return F.normalize(features, dim=-1) if normalize else features
