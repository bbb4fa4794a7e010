"""The one precision policy of embeddings: float32 unless a reduced precision is shown to agree.

Vectors that are compared (an index and its queries, a cache and a rerun, two commands) must come
from the same numerics. Training may run in bf16 for speed; embedding may not drift: measured on a
Xeon with AMX, bf16 autocast gave the demo's 467 test vectors at cosine 0.67-0.99 (median 0.93) to
float32. So:

- on a CPU (and on Apple MPS) embeddings are computed in float32;
- on a CUDA device the reduced precision it computes natively (bf16 from compute capability 8.0,
  else fp16) is tried on the first batch beside float32, and kept only when every vector of that
  batch agrees with its float32 twin to cosine :data:`AGREEMENT` or more; else float32, saying so.

The outcome (:class:`EmbeddingPrecision`: dtype, device kind, the measured agreement) is written in
the embedding folder's and the index's info, and two sets of vectors made at different precisions
are used together only where the reduced one was shown to agree (:mod:`convirt._embedding_space`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convirt._embedding_space import canonical_precision

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_precision(value: str | None) -> str | None:
    """``float32``, ``bfloat16`` or ``float16`` for a precision name (Lightning's ``bf16-mixed`` too);
    ``None`` for ``auto`` / ``None`` (the policy chooses).

    Raises:
        ValueError: An unknown name.
    """
    if value is None or str(value).lower() == "auto":
        return None
    return canonical_precision(value)


@dataclass(frozen=True)
class EmbeddingPrecision:
    """The precision vectors were made at.

    Attributes:
        dtype: ``float32``, ``bfloat16`` or ``float16`` (the autocast dtype; vectors are stored as float32).
        device: The device kind: ``cpu``, ``cuda``, ``mps``.
        agreement: Least cosine of a checked batch's vectors to float32 (``None``: float32 itself, or
            not measured).
        reason: Why this precision, in words.
    """

    dtype: str
    device: str
    agreement: float | None = None
    reason: str = ""

    @property
    def reduced(self) -> bool:
        return self.dtype != "float32"

    def as_info(self) -> dict[str, Any]:
        """The fields written in an embedding folder's or index's info."""
        return {"precision": self.dtype, "device": self.device, "precision_agreement": self.agreement}

    def describe(self) -> str:
        """``float32 on cpu`` (with the measured agreement of a reduced precision)."""
        measured = f", least cosine to float32 {self.agreement:.5f}" if self.agreement is not None else ""
        return f"{self.dtype} on {self.device}{measured}"


def planned_precision(device: torch.device | str, requested: str | None = None) -> EmbeddingPrecision:
    """The precision to try on ``device``: ``requested`` when given, else the policy's candidate
    (float32 on CPUs and MPS; bf16 on CUDA from compute capability 8.0, else fp16). A reduced
    candidate is confirmed or dropped on the first batch (:func:`agreement`)."""
    kind = torch.device(device).type
    dtype = parse_precision(requested)
    if dtype is not None:
        return EmbeddingPrecision(dtype, kind, None, "requested")
    if kind == "cuda":
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        native = "bfloat16" if (major, minor) >= (8, 0) else "float16"
        return EmbeddingPrecision(
            native, kind, None, f"compute capability {major}.{minor}; kept only if the first batch agrees with float32"
        )
    return EmbeddingPrecision("float32", kind, None, f"float32 on {kind}: the same vectors on every machine")


def agreement(reduced: torch.Tensor, full: torch.Tensor) -> float:
    """Least cosine between the rows of two ``(B, D)`` feature batches (computed in float64)."""
    a = torch.nn.functional.normalize(reduced.double(), dim=-1)
    b = torch.nn.functional.normalize(full.double(), dim=-1)
    return float((a * b).sum(dim=-1).min())
