"""Prompt robustness: how much a zero-shot AUROC depends on the wording of its prompt.

MedCLIP scores 0.45 accuracy with one phrasing and far more with another; a model a reader can
trust should not hinge on the sentence. Each finding is scored with every phrasing of
:func:`convirt.zeroshot.prompts.phrasing_pairs` on its own (image similarity to the positive
sentence minus that to the negative one: the two-class softmax's order), and the spread of the
per-phrasing AUROCs is reported: mean, worst and best.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convirt.embeddings.encode import as_encoder, embed_texts
from convirt.zeroshot.descriptors import DescriptorSet
from convirt.zeroshot.metrics import NAN, auroc
from convirt.zeroshot.prompts import phrasing_pairs


@dataclass
class PhrasingScores:
    """Per finding, its phrasings and one score column per phrasing.

    Attributes:
        phrasings: ``phrasings[f]``: the (positive, negative) sentences of finding ``f``.
        scores: ``scores[f]``: ``(N, P_f)`` scores of the images, one column per phrasing.
        aurocs: ``aurocs[f]``: ``(P_f,)`` AUROC of each phrasing (NaN where a class is missing).
    """

    finding_names: list[str]
    phrasings: list[list[tuple[str, str]]]
    scores: list[np.ndarray]
    aurocs: list[np.ndarray]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per finding: mean, min and max AUROC over its phrasings, and their count."""
        return {
            name: {
                "mean": float(np.nanmean(values)) if not np.isnan(values).all() else NAN,
                "min": float(np.nanmin(values)) if not np.isnan(values).all() else NAN,
                "max": float(np.nanmax(values)) if not np.isnan(values).all() else NAN,
                "phrasings": len(values),
            }
            for name, values in zip(self.finding_names, self.aurocs)
        }


@torch.no_grad()
def score_phrasings(
    model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    descriptors: DescriptorSet,
    image_embeddings: np.ndarray,
    labels: np.ndarray,
    finding_names: Sequence[str] | None = None,
) -> PhrasingScores:
    """Score normalised ``(N, D)`` image embeddings with every phrasing of each finding.

    Args:
        labels: ``(N, F)`` labels of ``finding_names`` (-1: left out of that finding).
        finding_names: The findings, in the columns' order (default: the descriptor set's).

    Raises:
        ValueError: A name is not a finding of the descriptor set, or labels and names disagree.
    """
    names = list(finding_names or descriptors.finding_names)
    by_name = {finding.name: finding for finding in descriptors.findings}
    if missing := [name for name in names if name not in by_name]:
        raise ValueError(f"{missing} are not findings of descriptor set {descriptors.name!r}")
    if labels.shape != (len(image_embeddings), len(names)):
        raise ValueError(f"labels {labels.shape} do not match {len(image_embeddings)} images x {len(names)} findings")
    images = torch.as_tensor(image_embeddings, dtype=torch.float32)
    encoder = as_encoder(model, tokenizer)  # one encoder: every phrasing at one precision
    result = PhrasingScores(names, [], [], [])
    for column, name in enumerate(names):
        pairs = phrasing_pairs(by_name[name])
        positives = embed_texts(encoder, tokenizer, [p for p, _ in pairs])
        negatives = embed_texts(encoder, tokenizer, [n for _, n in pairs])
        scores = (images @ positives.T - images @ negatives.T).numpy()
        y = labels[:, column]
        kept = y >= 0
        aurocs = np.array([auroc(y[kept], scores[kept, j]) for j in range(len(pairs))])
        result.phrasings.append(pairs)
        result.scores.append(scores)
        result.aurocs.append(aurocs)
    return result
