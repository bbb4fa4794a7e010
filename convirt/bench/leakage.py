"""The leakage audit: copies of a task's test images in a model's training shards.

Both sides are signed once (pixel digest and thumbnail, :mod:`convirt.data.signatures`) and
cached by their data hash; the model's embeddings of both join the candidates. Found copies are
counted (exact, near) and, with ``exclude``, left out of that model's other protocols on the task.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from convirt.bench.cache import data_sha256
from convirt.bench.suite import Task
from convirt.data.signatures import Signatures, read_signatures
from convirt.embeddings.encode import EmbeddingOutput
from convirt.retrieval.duplicates import NEAR_THRESHOLD, find_duplicates


def training_task(shards: str | Path) -> Task:
    """The training split of a shard folder, as a task (so that it is embedded and cached like one)."""
    return Task(name="training-shards", data=Path(shards), split="train")


def cached_signatures(task: Task, cache: Path) -> Signatures:
    """A task's pixel signatures, read from ``cache`` or signed and stored there."""
    path = cache / f"{data_sha256(task)[:16]}-v2.npz"  # v2: with details
    if not path.is_file():
        signed = read_signatures(task.location, **task.input_options())
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        signed.save(partial)
        partial.replace(path)
    return Signatures.load(path)


def _aligned(embedded: EmbeddingOutput, keys: list[str]) -> np.ndarray:
    position = {key: row for row, key in enumerate(embedded.keys)}
    return embedded.embeddings[[position[key] for key in keys]]


def audit(
    test: Signatures,
    train: Signatures,
    test_embedded: EmbeddingOutput | None = None,
    train_embedded: EmbeddingOutput | None = None,
    threshold: float = NEAR_THRESHOLD,
) -> dict[str, Any]:
    """Counts and pairs of the test images found in the training images.

    Returns:
        ``rows`` (result rows: ``leaked``, ``exact``, ``near``, each with ``n`` test images) and
        ``pairs`` (``test_key``, ``train_key``, ``kind``, ``correlation``).
    """
    both = test_embedded is not None and train_embedded is not None
    found = find_duplicates(
        test.digests,
        test.thumbnails,
        train.digests,
        train.thumbnails,
        _aligned(test_embedded, test.keys) if both and test_embedded else None,
        _aligned(train_embedded, train.keys) if both and train_embedded else None,
        threshold=threshold,
        test_details=test.details,
        train_details=train.details,
    )
    n = len(test.keys)
    counts = {kind: sum(1 for d in found if d.kind == kind) for kind in ("exact", "near")}
    rows = [
        {"metric": metric, "value": float(value), "ci_low": None, "ci_high": None, "n": n}
        for metric, value in (("leaked", len(found)), ("exact", counts["exact"]), ("near", counts["near"]))
    ]
    pairs = [
        {"test_key": test.keys[d.test], "train_key": train.keys[d.train], "kind": d.kind, "correlation": d.correlation}
        for d in found
    ]
    return {"rows": rows, "pairs": pairs}


def without(embedded: EmbeddingOutput, keys: set[str]) -> EmbeddingOutput:
    """``embedded`` less the samples whose key is in ``keys``."""
    kept = [row for row, key in enumerate(embedded.keys) if key not in keys]
    return replace(
        embedded,
        embeddings=embedded.embeddings[kept],
        keys=[embedded.keys[row] for row in kept],
        meta=[embedded.meta[row] for row in kept],
        texts=[embedded.texts[row] for row in kept] if embedded.texts else [],
    )
