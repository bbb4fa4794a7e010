"""A diagnosis's two opinions per finding (descriptors and the kNN vote), and its saliency maps.

Saliency needs a backward pass per finding. It runs on the explainer's own copy of the model, one map
at a time, so that a diagnosis with maps never holds the query model that every search shares (the
price: the image tower's weights twice in memory).
"""

from __future__ import annotations

import base64
import copy
import io
import threading
from typing import Any

import numpy as np
import torch
from PIL import Image

from convirt.retrieval import knn_scores
from convirt.zeroshot import ZeroShotClassifier


def explained_findings(
    classifier: ZeroShotClassifier, vector: np.ndarray, neighbours: list[dict[str, Any]], labels: np.ndarray
) -> dict[str, Any]:
    """Per finding, the descriptor probability with its observations (most likely first) and the
    share of ``neighbours`` (cases with ``id`` and ``score``) whose ``labels`` row carries it."""
    scored = classifier.predict_features(torch.from_numpy(vector[None]))
    ids = np.array([[n["id"] for n in neighbours]])
    sims = np.array([[n["score"] for n in neighbours]], dtype=np.float32)
    votes = knn_scores(ids, sims, labels, len(neighbours))[0]
    observations = scored.observation_probabilities
    findings = []
    for f, name in enumerate(scored.finding_names):
        explained: list[dict[str, Any]] = [
            {"observation": obs, "probability": float(observations[0, j])}
            for j, (owner, obs) in enumerate(scored.observations)
            if owner == name and observations is not None
        ]
        findings.append(
            {
                "finding": name,
                "probability": float(scored.probabilities[0, f]),
                "observations": sorted(explained, key=lambda o: -o["probability"]),
                "knn_vote": float(votes[f]),
            }
        )
    return {"findings": findings, "neighbours": neighbours, "knn_k": len(neighbours)}


class Explainer:
    """Saliency maps of a classifier's findings, drawn on a copy of its model (one map at a time)."""

    def __init__(self, classifier: ZeroShotClassifier) -> None:
        self.classifier = copy.copy(classifier)  # its prompt embeddings shared, its model its own
        self.classifier.model = copy.deepcopy(classifier.model)
        self._lock = threading.Lock()

    def png(self, pixels: torch.Tensor, finding: str) -> str:
        """The saliency map of ``finding`` on one preprocessed ``(3, H, W)`` image, as a PNG data URL."""
        with self._lock, torch.enable_grad():
            heat = self.classifier.saliency(pixels, finding).numpy()
        buffer = io.BytesIO()
        Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def add_maps(self, diagnosis: dict[str, Any], pixels: torch.Tensor) -> None:
        """Each finding of ``diagnosis`` with its ``saliency_png``."""
        for entry in diagnosis["findings"]:
            entry["saliency_png"] = self.png(pixels, entry["finding"])
