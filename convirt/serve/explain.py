"""A diagnosis's two opinions per finding (descriptors and the kNN vote), and its saliency maps.

The descriptors' opinion is a raw score, and a calibrated probability where a calibration covers the finding
(:mod:`convirt.serve.calibrated`).

Saliency needs a backward pass per finding. It runs on the explainer's own copy of the model, in the
explainer's own thread, one diagnosis at a time: a diagnosis with maps never holds the query model
or the worker threads that every search shares (the price: the image tower's weights twice in
memory). At most ``max_waiting`` diagnoses wait for their maps; one more is refused
(:class:`SaliencyBusy`, a 503 in the API) rather than queued without bound. A model without gradients
(an ONNX export run by onnxruntime) draws none: asking is refused (:class:`SaliencyUnavailable`; the
API answers 409 before it diagnoses), and the diagnosis without maps stays available.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from convirt.retrieval import knn_scores
from convirt.serve.calibrated import ServedCalibration, calibrated_fields
from convirt.zeroshot import ZeroShotClassifier


def explained_findings(
    classifier: ZeroShotClassifier,
    vector: np.ndarray,
    neighbours: list[dict[str, Any]],
    labels: np.ndarray,
    calibrated: ServedCalibration | None = None,
) -> dict[str, Any]:
    """Per finding, the descriptor score with its observations' scores (highest first), the calibrated probability
    and operating point where ``calibrated`` covers the finding (else ``None``), and the share of ``neighbours``
    (cases with ``id`` and ``score``) whose ``labels`` row carries it."""
    scored = classifier.predict_features(torch.from_numpy(vector[None]))
    ids = np.array([[n["id"] for n in neighbours]])
    sims = np.array([[n["score"] for n in neighbours]], dtype=np.float32)
    votes = knn_scores(ids, sims, labels, len(neighbours))[0]
    observations = scored.observation_probabilities
    findings = []
    for f, name in enumerate(scored.finding_names):
        explained: list[dict[str, Any]] = [
            {"observation": obs, "score": float(observations[0, j])}
            for j, (owner, obs) in enumerate(scored.observations)
            if owner == name and observations is not None
        ]
        score = float(scored.probabilities[0, f])
        findings.append(
            {
                "finding": name,
                "score": score,
                **calibrated_fields(calibrated, name, score),
                "observations": sorted(explained, key=lambda o: -o["score"]),
                "knn_vote": float(votes[f]),
            }
        )
    return {"findings": findings, "neighbours": neighbours, "knn_k": len(neighbours)}


class SaliencyBusy(RuntimeError):
    """Too many diagnoses wait for their saliency maps: try again shortly."""


class SaliencyUnavailable(ValueError):
    """The model cannot draw saliency maps (a 409 in the API): it runs without gradients (onnxruntime)."""


def saliency_refusal(model: Any) -> str | None:
    """Why ``model`` draws no saliency maps (they need a backward pass through a torch module), or ``None``."""
    if isinstance(model, torch.nn.Module):
        return None
    runtime = getattr(model, "runtime", type(model).__name__)
    return (
        f"no saliency maps: this service runs its model with the {runtime} runtime, which computes no gradients "
        "(ask without saliency, or start the service with --runtime torch)"
    )


class Explainer:
    """Saliency maps of a classifier's findings, drawn on a copy of its model in a thread of its own.

    Args:
        classifier: The classifier whose findings are explained.
        max_waiting: Diagnoses that may wait for their maps behind the one being drawn.
    """

    def __init__(self, classifier: ZeroShotClassifier, max_waiting: int = 4) -> None:
        self.classifier = copy.copy(classifier)  # its prompt embeddings shared, its model its own
        self.classifier.model = copy.deepcopy(classifier.model)
        self.max_waiting = max_waiting
        self.refusal = saliency_refusal(classifier.model)
        self.pending = 0  # diagnoses waiting for or drawing their maps (counted in the event loop)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="convirt-saliency")

    def png(self, pixels: torch.Tensor, finding: str) -> str:
        """The saliency map of ``finding`` on one preprocessed ``(3, H, W)`` image, as a PNG data URL."""
        with torch.enable_grad():
            heat = self.classifier.saliency(pixels, finding).numpy()
        buffer = io.BytesIO()
        Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")

    def _add(self, diagnosis: dict[str, Any], pixels: Callable[[], torch.Tensor]) -> None:
        image = pixels()
        for entry in diagnosis["findings"]:
            entry["saliency_png"] = self.png(image, entry["finding"])

    def add_maps(self, diagnosis: dict[str, Any], pixels: Callable[[], torch.Tensor]) -> None:
        """Each finding of ``diagnosis`` with its ``saliency_png`` on the image ``pixels()`` makes
        (read and preprocessed in the explainer's thread).

        Raises:
            SaliencyUnavailable: The model computes no gradients.
        """
        if self.refusal:
            raise SaliencyUnavailable(self.refusal)
        self._thread.submit(self._add, diagnosis, pixels).result()

    async def add_maps_async(self, diagnosis: dict[str, Any], pixels: Callable[[], torch.Tensor]) -> None:
        """:meth:`add_maps`, awaited; a caller that goes away before its turn is dropped.

        Raises:
            SaliencyBusy: ``max_waiting`` diagnoses already wait behind the one being drawn.
            SaliencyUnavailable: The model computes no gradients.
        """
        if self.refusal:
            raise SaliencyUnavailable(self.refusal)
        if self.pending > self.max_waiting:
            raise SaliencyBusy(f"saliency maps are being drawn for {self.pending} requests: try again shortly")
        self.pending += 1
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._add, diagnosis, pixels)
        finally:
            self.pending -= 1
