"""Comparing model fingerprints: do two sets of vectors live in the same embedding space?

Infrastructure, because both the embedding folder (``embeddings/``, resuming a run) and the index
folder (``retrieval/``, querying an index) check it, and neither may import ``models/`` (which
makes a fingerprint: :func:`convirt.models.fingerprint.model_fingerprint`) or the other.
"""

from __future__ import annotations

from typing import Any

# The fingerprint keys that must agree for two embedding spaces to be the same.
FINGERPRINT_KEYS = ("model_name", "checkpoint_sha256", "dim")


def check_fingerprint(expected: dict[str, Any], actual: dict[str, Any], what: str = "index") -> None:
    """Raise when two model fingerprints name different embedding spaces.

    Only keys present in both are compared, so a fingerprint without a checkpoint hash (a model
    created from the registry) still meets one with it by name and dimension.

    Raises:
        ValueError: A key differs; the message names both values.
    """
    for key in FINGERPRINT_KEYS:
        if key in expected and key in actual and expected[key] != actual[key]:
            raise ValueError(
                f"the {what} was built with another model: {key} {expected[key]!r} "
                f"(from {expected.get('checkpoint', '?')}) vs {actual[key]!r} (from {actual.get('checkpoint', '?')})"
            )
