"""The leaderboard of a bench run: per task, models x protocol headline metrics with CIs, best in bold.

Columns are named for people ("linear probe, 100% labels: mean AUROC", "image→text recall@5");
the CSV keeps the machine keys (``protocol``, ``metric``) beside each name.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any

from convirt._io import write_text

# Protocols that count rather than score (the leakage audit's copies): shown, never marked best.
UNRANKED = {"leakage"}
# Their headlines are a calibration's Brier score and a gap between subgroups: the smallest is best.
LOWER_IS_BETTER = {"subgroups", "calibration"}
# Shown, never bolded alone: a model at chance has no gap between subgroups either.
NOT_BOLDED = {"subgroups"}

# The words people read for the parts of a metric key (convirt.bench.protocols writes the keys:
# ``descriptors/mean_auroc``, ``k10/mean_auroc``, ``linear@0.1/mean_auroc``, ``map_at_5`` ...).
PROTOCOL_NAMES = {
    "zeroshot": "zero-shot",
    "reports": "zero-shot on reports",
    "prompts": "prompt robustness",
    "knn": "kNN diagnosis",
    "retrieval": "image retrieval",
    "leakage": "leakage",
    "calibration": "calibration",
}
QUALIFIER_NAMES = {"descriptors": "descriptors", "names": "finding names", "ensemble": "template ensemble"}
DIRECTION_NAMES = {"image_to_text": "image→text", "text_to_image": "text→image"}
PROBE_NAMES = {"linear": "linear probe", "knn": "kNN probe", "finetune": "fine-tuning"}
MEASURE_NAMES = {
    "mean_auroc": "mean AUROC",
    "worst_auroc": "mean worst-phrasing AUROC",
    "best_auroc": "mean best-phrasing AUROC",
    "map": "mAP",
    "precision": "precision",
    "recall": "recall",
    "leaked": "test images in training",
    "exact": "exact copies in training",
    "near": "near copies in training",
    "ece_after": "mean ECE after",
    "ece_before": "mean ECE before",
    "brier_after": "mean Brier score after",
    "brier_before": "mean Brier score before",
}
RATE_NAMES = {
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "threshold": "threshold",
}


def _percent(fraction: str) -> str | None:
    try:
        return f"{float(fraction) * 100:.6g}%"
    except ValueError:
        return None


def _measure(key: str) -> str | None:
    """``mean_auroc`` -> ``mean AUROC``, ``map_at_5`` -> ``mAP@5``; None for a key not known."""
    if found := re.fullmatch(r"(\w+?)_at_(\d+)", key):
        name = MEASURE_NAMES.get(found[1])
        return f"{name}@{found[2]}" if name else None
    return MEASURE_NAMES.get(key)


def metric_name(protocol: str, metric: str) -> str:
    """The name people read for a protocol's metric key: ``probe``, ``linear@1/mean_auroc`` ->
    ``linear probe, 100% labels: mean AUROC``; ``image_text``, ``image_to_text/recall_at_5`` ->
    ``image→text recall@5``. A key of another shape reads as ``protocol metric``."""
    if (named := _per_finding_name(protocol, metric)) is not None:
        return named
    qualifier, _, key = metric.rpartition("/")
    measure = _measure(key)
    method, at, fraction = qualifier.partition("@")
    what = PROTOCOL_NAMES.get(protocol)
    if measure is not None:
        if qualifier in DIRECTION_NAMES:
            return f"{DIRECTION_NAMES[qualifier]} {measure}"
        if at and method in PROBE_NAMES and (percent := _percent(fraction)):
            return f"{PROBE_NAMES[method]}, {percent} labels: {measure}"
        if what and re.fullmatch(r"k\d+", qualifier):
            return f"{what} (k={qualifier[1:]}): {measure}"
        if what and qualifier in QUALIFIER_NAMES:
            return f"{what} ({QUALIFIER_NAMES[qualifier]}): {measure}"
        if what and not qualifier:
            return f"{what}: {measure}"
    return f"{protocol} {metric}"


def _per_finding_name(protocol: str, metric: str) -> str | None:
    """Names of the per-finding keys of the evaluation protocols (``sex/gap/Pneumonia``,
    ``sensitivity>=0.90/specificity/Pneumonia``); None for any other key."""
    # The finding comes last and may hold a '/' itself (Nodule/Mass): split off the parts before it.
    parts = metric.split("/", 2)
    if protocol == "operating_points" and len(parts) == 3 and parts[1] in RATE_NAMES:
        what = "threshold chosen on validation" if parts[1] == "threshold" else f"{RATE_NAMES[parts[1]]} on test"
        return f"{parts[0]} (chosen on validation): {what} ({parts[2]})"
    if protocol == "subgroups" and len(parts) == 3 and parts[1] == "worst":
        return f"subgroups by {parts[0]}: worst group's AUROC ({parts[2]})"
    if protocol == "subgroups" and len(parts) == 3 and parts[1] == "gap":
        return f"subgroups by {parts[0]}: AUROC gap, best - worst ({parts[2]})"
    column, group, rest = (metric.split("/", 2) + ["", ""])[:3]
    if protocol == "subgroups" and rest.startswith("auroc/"):
        return f"subgroup {column} {group}: AUROC ({rest[len('auroc/') :]})"
    return None


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
            "| model | " + " | ".join(metric_name(protocol, metric) for protocol, metric in columns) + " |",
            "|---|" + "---:|" * len(columns),
        ]

        def cell_row(model: str, protocol: str, metric: str, task: str = task) -> dict[str, Any] | None:
            row = best.get((model, task, protocol))
            return row if row is not None and row["metric"] == metric else None  # another key: its own column

        top = {
            column: (min if column[0] in LOWER_IS_BETTER else max)(
                (
                    row["value"]
                    for m in models
                    if (row := cell_row(m, *column)) is not None and row["value"] is not None
                ),
                default=math.nan,
            )
            for column in columns
        }
        for model in models:
            cells = []
            for protocol, metric in columns:
                row = cell_row(model, protocol, metric)
                text = format_cell(row)
                best_here = row is not None and row["value"] == top[protocol, metric]
                bold = best_here and len(models) > 1 and protocol not in UNRANKED | NOT_BOLDED
                cells.append(f"**{text}**" if bold else text)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"


def write_leaderboard(rows: list[dict[str, Any]], models: list[str], output: str | Path) -> Path:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` (every headline row: the keys, the values, and
    last the column's name in ``leaderboard.md``) into ``output``."""
    out = Path(output)
    write_text(out / "leaderboard.md", leaderboard_markdown(rows, models))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "task", "protocol", "metric", "value", "ci_low", "ci_high", "n", "name"])
    for (model, task, protocol), row in sorted(headlines(rows).items()):
        values = [row["metric"], row["value"], row["ci_low"], row["ci_high"], row["n"]]
        writer.writerow([model, task, protocol, *values, metric_name(protocol, row["metric"])])
    write_text(out / "leaderboard.csv", buffer.getvalue())
    return out / "leaderboard.md"
