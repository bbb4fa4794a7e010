"""Zero-shot classification of images from descriptor prompts, with per-observation explanations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from convirt.embeddings import embed_texts
from convirt.zeroshot.descriptors import DescriptorSet
from convirt.zeroshot.prompts import descriptor_prompts, name_prompts
from convirt.zeroshot.scoring import combine_observations, pair_probabilities


class Method(str, Enum):
    """Scoring methods: Xplainer descriptors, or the finding name (CheXzero-style)."""

    DESCRIPTORS = "descriptors"
    NAMES = "names"


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

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor],
                 descriptors: DescriptorSet, method: Method | str = Method.DESCRIPTORS,
                 device: str | torch.device = "cpu") -> None:
        try:
            self.method = Method(method)
        except ValueError:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(m.value for m in Method)}") from None
        self.descriptors = descriptors
        self.logit_scale = float(model.logit_scale.exp().item())  # type: ignore[operator]
        if self.method is Method.DESCRIPTORS:
            positives, negatives, self.owner = descriptor_prompts(descriptors)
        else:
            positives, negatives = name_prompts(descriptors)
            self.owner = list(range(len(descriptors.findings)))
        self.positive = embed_texts(model, tokenizer, positives, device=device)
        self.negative = embed_texts(model, tokenizer, negatives, device=device)
        self.observations = [(f.name, o) for f in descriptors.findings for o in f.observations]

    def predict_features(self, image_features: torch.Tensor) -> ZeroShotOutput:
        """Score ``(N, D)`` normalised image embeddings."""
        probs = pair_probabilities(image_features.float(), self.positive, self.negative, self.logit_scale)
        names = self.descriptors.finding_names
        if self.method is Method.DESCRIPTORS:
            return ZeroShotOutput(combine_observations(probs, self.owner, len(names)), probs, names,
                                  self.observations)
        return ZeroShotOutput(probs, None, names, [])
