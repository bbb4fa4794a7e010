"""Comparing answers made from float vectors: ids and order exactly where the scores decide them,
scores within a tolerance.

A BLAS product gives other last digits when the batch around a vector changes (measured on a Xeon
with AMX: a search scored in a batch against the same search alone), so two answers to one query
are compared this way, never with ``==`` on floats.
"""

from __future__ import annotations

import math
from typing import Any

TOLERANCE = 1e-4


def assert_hits_match(got: list[dict[str, Any]], expected: list[dict[str, Any]], tol: float = TOLERANCE) -> None:
    """Two ranked hit lists (dicts with ``id`` and ``score``) agree: the same length, scores within
    ``tol`` position by position, and the same ids except where a near tie (within ``tol``) lets two
    swap, or lets one at the cut-off be replaced by another of the same score."""
    assert len(got) == len(expected), f"{len(got)} hits vs {len(expected)}"
    for rank, (a, b) in enumerate(zip(got, expected)):
        assert abs(a["score"] - b["score"]) <= tol, f"rank {rank}: score {a['score']} vs {b['score']}"
        if a["id"] != b["id"]:
            tied = [h["id"] for h in expected if abs(h["score"] - a["score"]) <= tol]
            last = abs(a["score"] - expected[-1]["score"]) <= tol  # a tie at the cut-off
            assert a["id"] in tied or last, f"rank {rank}: id {a['id']} vs {b['id']} with no tie to explain it"
        else:  # the same case: the rest of it agrees too
            assert_answers_match(
                {k: v for k, v in a.items() if k != "score"}, {k: v for k, v in b.items() if k != "score"}, tol
            )


def assert_answers_match(got: Any, expected: Any, tol: float = TOLERANCE) -> None:
    """Two JSON-like answers agree: floats within ``tol``, lists of hits (dicts with ``id`` and ``score``)
    by :func:`assert_hits_match`, everything else exactly."""
    if isinstance(expected, float) or isinstance(got, float):
        assert math.isclose(float(got), float(expected), abs_tol=tol), f"{got} vs {expected}"
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), f"keys {sorted(got)} vs {sorted(expected)}"
        for key in expected:
            assert_answers_match(got[key], expected[key], tol)
    elif (
        isinstance(expected, list)
        and expected
        and all(isinstance(h, dict) and {"id", "score"} <= h.keys() for h in expected)
    ):
        assert_hits_match(got, expected, tol)
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), f"{got} vs {expected}"
        for a, b in zip(got, expected):
            assert_answers_match(a, b, tol)
    else:
        assert got == expected, f"{got!r} vs {expected!r}"
