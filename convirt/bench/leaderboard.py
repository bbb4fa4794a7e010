"""The leaderboard of a bench run: models x (task, protocol) headline metrics with CIs, best in bold."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from convirt._io import write_text

# Protocols that count rather than score (the leakage audit's copies): shown, never marked best.
UNRANKED = {"leakage"}


def format_cell(row: dict[str, Any] | None) -> str:
    """A result row's value with its 95% CI, ``0.953 [0.943, 0.961]``; a count as ``3 of 467``; ``n/a``
    when undefined."""
    if row is None or row["value"] is None:
        return "n/a"
    if row.get("protocol") in UNRANKED:  # counts (the leakage audit's copies)
        return f"{int(row['value'])} of {row['n']}"
    ci = (
        f" [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
        if row["ci_low"] is not None and row["ci_high"] is not None
        else ""
    )
    return f"{row['value']:.3f}{ci}"


def headlines(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``(model, task, protocol) -> row`` of each protocol's headline metric (its first row), first seed."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        found.setdefault((row["model"], row["task"], row["protocol"]), row)
    return found


def leaderboard_markdown(rows: list[dict[str, Any]], models: list[str]) -> str:
    """A Markdown table: one row per model, one column per task and protocol (headline metric, 95% CI)."""
    best = headlines(rows)
    columns = sorted({(task, protocol, best[m, task, protocol]["metric"]) for (m, task, protocol) in best})
    lines = [
        "| model | " + " | ".join(f"{task}: {protocol} {metric}" for task, protocol, metric in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    top = {
        (task, protocol): max(
            (best[m, task, protocol]["value"] for m in models if (m, task, protocol) in best), default=math.nan
        )
        for task, protocol, _ in columns
    }
    for model in models:
        cells = []
        for task, protocol, _ in columns:
            row = best.get((model, task, protocol))
            text = format_cell(row)
            cells.append(
                f"**{text}**"
                if row is not None
                and len(models) > 1
                and protocol not in UNRANKED
                and row["value"] == top[task, protocol]
                else text
            )
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(rows: list[dict[str, Any]], models: list[str], output: str | Path) -> Path:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` (every headline row) into ``output``."""
    out = Path(output)
    write_text(out / "leaderboard.md", leaderboard_markdown(rows, models))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "task", "protocol", "metric", "value", "ci_low", "ci_high", "n"])
    for (model, task, protocol), row in sorted(headlines(rows).items()):
        writer.writerow([model, task, protocol, row["metric"], row["value"], row["ci_low"], row["ci_high"], row["n"]])
    write_text(out / "leaderboard.csv", buffer.getvalue())
    return out / "leaderboard.md"
