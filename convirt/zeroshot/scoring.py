"""Zero-shot scores as pure tensor functions (no model): testable on hand-made embeddings."""

from __future__ import annotations

import torch


def pair_probabilities(
    image_features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """Probability of the positive prompt against its negative, per image and prompt pair.

    Args:
        image_features: ``(N, D)`` normalised image embeddings.
        positive: ``(K, D)`` normalised embeddings of the positive prompts.
        negative: ``(K, D)`` normalised embeddings of the matching negative prompts.
        logit_scale: Multiplier of the cosine similarities (the model's temperature).

    Returns:
        ``(N, K)`` probabilities: softmax over each (positive, negative) pair.
    """
    if positive.shape != negative.shape:
        raise ValueError(f"positive {tuple(positive.shape)} and negative {tuple(negative.shape)} prompts differ")
    logits = logit_scale * (image_features @ positive.T - image_features @ negative.T)
    return torch.sigmoid(logits)


def combine_observations(observation_probs: torch.Tensor, owner: list[int], num_findings: int) -> torch.Tensor:
    """Finding probability as the geometric mean of its observations' probabilities (Xplainer).

    Args:
        observation_probs: ``(N, K)`` per-observation probabilities.
        owner: Length ``K``: the finding index of each observation.
        num_findings: Number of findings ``F``.

    Returns:
        ``(N, F)`` finding probabilities.
    """
    owner_t = torch.as_tensor(owner, device=observation_probs.device)
    log_probs = torch.log(observation_probs.clamp_min(1e-12))
    totals = torch.zeros(
        observation_probs.shape[0], num_findings, device=observation_probs.device, dtype=log_probs.dtype
    )
    totals.index_add_(1, owner_t, log_probs)
    counts = torch.bincount(owner_t, minlength=num_findings).clamp_min(1).to(log_probs.dtype)
    return torch.exp(totals / counts)


def class_embeddings(embeddings: torch.Tensor, owner: list[int], num_classes: int) -> torch.Tensor:
    """Mean of normalised ``(K, D)`` prompt embeddings per class, re-normalised: ``(C, D)``.

    Raises:
        ValueError: A class has no prompt.
    """
    owner_t = torch.as_tensor(owner, device=embeddings.device)
    counts = torch.bincount(owner_t, minlength=num_classes)
    if bool((counts == 0).any()):
        raise ValueError(f"classes without prompts: {(counts == 0).nonzero().flatten().tolist()}")
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, owner_t, embeddings)
    return torch.nn.functional.normalize(sums, dim=1)
