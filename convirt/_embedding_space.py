"""Do two sets of vectors live in the same embedding space? Same model, and comparable numerics.

Infrastructure, because the embedding folder (``embeddings/``, resuming a run), the index folder
(``retrieval/``, querying an index) and the service all check it, and none of them may import
``models/`` (which makes a model's fingerprint: :func:`convirt.models.fingerprint.model_fingerprint`)
or each other. The precision names and the agreement threshold live here for the same reason; the
policy that chooses a precision is :mod:`convirt.embeddings.precision`.
"""

from __future__ import annotations

from typing import Any

# The fingerprint keys that must agree for two embedding spaces to be the same.
FINGERPRINT_KEYS = ("model_name", "checkpoint_sha256", "dim")
# Least cosine of every checked vector to its float32 twin for a reduced precision to count as agreeing.
AGREEMENT = 0.999
PRECISIONS = ("float32", "bfloat16", "float16")
# What users and older folders call them (Lightning's names, short names).
_ALIASES = {
    **{name: "float32" for name in ("32", "32-true", "fp32", "float32")},
    **{name: "bfloat16" for name in ("bf16", "bf16-mixed", "bf16-true", "bfloat16")},
    **{name: "float16" for name in ("16", "16-mixed", "16-true", "fp16", "float16")},
}


def canonical_precision(value: object) -> str:
    """``float32``, ``bfloat16`` or ``float16`` for a precision name (Lightning's ``bf16-mixed`` too).

    Raises:
        ValueError: An unknown name.
    """
    name = _ALIASES.get(str(value).lower())
    if name is None:
        raise ValueError(
            f"unknown precision {value!r}; known: {', '.join(PRECISIONS)} (or 32-true, bf16-mixed, 16-mixed)"
        )
    return name


def shown_to_agree(info: dict[str, Any]) -> bool:
    """The vectors an info dict describes are float32, or were measured to agree with float32."""
    if canonical_precision(info["precision"]) == "float32":
        return True
    agreement = info.get("precision_agreement")
    return agreement is not None and float(agreement) >= AGREEMENT


def _describe(info: dict[str, Any]) -> str:
    where = f" on {info['device']}" if info.get("device") else ""
    agreement = info.get("precision_agreement")
    measured = f", least cosine to float32 {float(agreement):.4f}" if agreement is not None else ""
    return f"{info['precision']}{where}{measured}"


def check_same_space(expected: dict[str, Any], actual: dict[str, Any], what: str = "index") -> None:
    """Raise when two fingerprints name different embedding spaces.

    The model keys (:data:`FINGERPRINT_KEYS`) must agree where both have them, so a fingerprint
    without a checkpoint hash (a model created from the registry) still meets one with it by name and
    dimension. Where both record a ``precision``, vectors of two precisions are used together only
    when each reduced one was shown to agree with float32 (``precision_agreement`` >= :data:`AGREEMENT`).

    Raises:
        ValueError: A key differs, or the precisions differ without a shown agreement; the message
            names both values.
    """
    for key in FINGERPRINT_KEYS:
        if key in expected and key in actual and expected[key] != actual[key]:
            raise ValueError(
                f"the {what} was built with another model: {key} {expected[key]!r} "
                f"(from {expected.get('checkpoint', '?')}) vs {actual[key]!r} (from {actual.get('checkpoint', '?')})"
            )
    if expected.get("precision") is None or actual.get("precision") is None:
        return  # made before the precision was recorded
    if canonical_precision(expected["precision"]) == canonical_precision(actual["precision"]):
        return
    if not (shown_to_agree(expected) and shown_to_agree(actual)):
        raise ValueError(
            f"the {what} holds vectors made at {_describe(expected)}; these are made at {_describe(actual)}, "
            "and the reduced precision was not shown to agree with float32: remake the vectors at one "
            "precision (`convirt embed --precision float32`)"
        )
