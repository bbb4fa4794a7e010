"""Per-finding metrics that say why a value is missing instead of failing."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve, or ``None`` when the labels hold a single class."""
    labels = np.asarray(labels).astype(int)
    if labels.min(initial=0) == labels.max(initial=0) or len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def per_finding_auroc(labels: np.ndarray, scores: np.ndarray, names: list[str]) -> dict[str, float | None]:
    """AUROC of each finding column of ``(N, F)`` labels and scores."""
    if labels.shape != scores.shape or labels.shape[1] != len(names):
        raise ValueError(f"labels {labels.shape}, scores {scores.shape} and {len(names)} names do not match")
    return {name: auroc(labels[:, i], scores[:, i]) for i, name in enumerate(names)}


def mean_defined(values: dict[str, float | None]) -> float | None:
    """Mean over the defined values; ``None`` if none is."""
    defined = [v for v in values.values() if v is not None]
    return float(np.mean(defined)) if defined else None
