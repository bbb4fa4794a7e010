"""A protocol's result row: metric, value, 95% CI, n (and positives where counted), JSON-ready."""

from __future__ import annotations

import math
from typing import Any

NAN = float("nan")
Rows = list[dict[str, Any]]


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _row(
    metric: str, value: float, ci: tuple[float, float] = (NAN, NAN), n: int = 0, positives: int | None = None
) -> dict[str, Any]:
    """One result row; an undefined value or CI bound is ``None`` (JSON null); ``positives`` where counted."""
    row = {"metric": metric, "value": _number(value), "ci_low": _number(ci[0]), "ci_high": _number(ci[1]), "n": int(n)}
    return row if positives is None else {**row, "positives": int(positives)}
