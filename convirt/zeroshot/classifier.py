"""Zero-shot classification of images from descriptor prompts, with per-observation explanations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from torch import nn

from convirt.data.stream import pad_id_of
from convirt.embeddings.encode import Encoder, embed_texts
from convirt.zeroshot.descriptors import DescriptorSet
from convirt.zeroshot.prompts import descriptor_prompts, ensemble_prompts, name_prompts
from convirt.zeroshot.scoring import class_embeddings, combine_observations, pair_probabilities


class Method(str, Enum):
    """Scoring methods: Xplainer descriptors, the finding name (CheXzero-style), or template ensembles."""

    DESCRIPTORS = "descriptors"
    NAMES = "names"
    ENSEMBLE = "ensemble"


@dataclass
class ZeroShotOutput:
    """Probabilities per finding and, for the descriptor method, per observation.

    Attributes:
        probabilities: ``(N, F)`` finding probabilities.
        observation_probabilities: ``(N, K)`` per-observation probabilities (the explanation),
            or ``None`` for the name method.
        finding_names: Length ``F``.
        observations: Length ``K``: ``(finding, observation)`` pairs.
    """

    probabilities: torch.Tensor
    observation_probabilities: torch.Tensor | None
    finding_names: list[str]
    observations: list[tuple[str, str]]


class ZeroShotClassifier:
    """Scores image embeddings against a descriptor set's prompts.

    Prompt embeddings are computed once, at construction.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        descriptors: DescriptorSet,
        method: Method | str = Method.DESCRIPTORS,
        device: str | torch.device = "cpu",
    ) -> None:
        try:
            self.method = Method(method)
        except ValueError:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(m.value for m in Method)}") from None
        self.descriptors = descriptors
        self.logit_scale = float(model.logit_scale.exp().item())  # type: ignore[operator]
        self.model, self.device = model, device
        count = len(descriptors.findings)
        if self.method is Method.DESCRIPTORS:
            positives, negatives, self.owner = descriptor_prompts(descriptors)
        elif self.method is Method.NAMES:
            positives, negatives = name_prompts(descriptors)
            self.owner = list(range(count))
        else:
            positives, positive_owner, negatives, negative_owner = ensemble_prompts(descriptors)
            self.owner = list(range(count))
        self.encoder = Encoder(model, pad_id=pad_id_of(tokenizer))
        self.positive = embed_texts(self.encoder, tokenizer, positives)
        self.negative = embed_texts(self.encoder, tokenizer, negatives)
        if self.method is Method.ENSEMBLE:
            self.positive = class_embeddings(self.positive, positive_owner, count)
            self.negative = class_embeddings(self.negative, negative_owner, count)
        self.observations = [(f.name, o) for f in descriptors.findings for o in f.observations]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 64) -> ZeroShotOutput:
        """Score ``(N, 3, H, W)`` preprocessed images (embedded in batches the one way: :class:`Encoder`)."""
        if images.ndim != 4:
            raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
        features = np.concatenate(
            [self.encoder.images(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        )
        return self.predict_features(torch.from_numpy(features))

    def saliency(self, image: torch.Tensor, finding: str) -> torch.Tensor:
        """``(H, W)`` saliency map in ``[0, 1]`` of one preprocessed ``(3, H, W)`` image for a finding.

        The score explained is the finding's zero-shot logit: similarity to its positive prompts
        minus similarity to its negative ones (averaged over observations for descriptors).
        CNN towers: Grad-CAM on the last convolution; ViT towers: the patch-similarity map.
        """
        from convirt.zeroshot.saliency import gradcam, is_vit_tower, patch_similarity

        names = self.descriptors.finding_names
        if finding not in names:
            raise ValueError(f"unknown finding {finding!r}; known: {', '.join(names)}")
        index = names.index(finding)
        rows = [j for j, owner in enumerate(self.owner) if owner == index]
        direction = (self.positive[rows] - self.negative[rows]).mean(dim=0)
        if is_vit_tower(self.model):
            return patch_similarity(self.model, image.to(self.device), direction.to(self.device)).cpu()
        return gradcam(self.model, image.to(self.device), direction.to(self.device)).cpu()

    def predict_features(self, image_features: torch.Tensor) -> ZeroShotOutput:
        """Score ``(N, D)`` normalised image embeddings."""
        probs = pair_probabilities(image_features.float(), self.positive, self.negative, self.logit_scale)
        names = self.descriptors.finding_names
        if self.method is Method.DESCRIPTORS:
            return ZeroShotOutput(combine_observations(probs, self.owner, len(names)), probs, names, self.observations)
        return ZeroShotOutput(probs, None, names, [])
