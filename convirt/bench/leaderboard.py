"""The leaderboard of a bench run: per task, models x protocol headline metrics with CIs, best in bold."""

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
    """Markdown tables, one per task (its name in bold above it): one row per model, one column per
    protocol (headline metric, 95% CI), the best of each column in bold."""
    best = headlines(rows)
    tables = []
    for task in sorted({task for _, task, _ in best}):
        columns = sorted({(protocol, best[m, t, protocol]["metric"]) for (m, t, protocol) in best if t == task})
        lines = [
            f"**{task}**",
            "",
            "| model | " + " | ".join(f"{protocol} {metric}" for protocol, metric in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]
        top = {
            protocol: max(
                (best[m, task, protocol]["value"] for m in models if (m, task, protocol) in best), default=math.nan
            )
            for protocol, _ in columns
        }
        for model in models:
            cells = []
            for protocol, _ in columns:
                row = best.get((model, task, protocol))
                text = format_cell(row)
                best_here = row is not None and row["value"] == top[protocol]
                cells.append(f"**{text}**" if best_here and len(models) > 1 and protocol not in UNRANKED else text)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"


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
