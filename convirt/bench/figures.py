"""Figures of a bench run: per task, the models' headline metrics as bars with their 95% CIs, the
models' zero-shot ROC curves (descriptor scores) per finding, and per model and finding the
reliability diagram of the calibration protocol (before and after, on the held-out patients)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from convirt.bench.leaderboard import UNRANKED, headlines, metric_name
from convirt.zeroshot.plots import plot_roc, pyplot
from convirt.zeroshot.reliability import reliability_diagram

ROC_METHOD = "descriptors"  # the zero-shot method whose curves are drawn (the leaderboard's headline)


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "task"


def plot_task_bars(rows: list[dict[str, Any]], models: list[str], task: str, path: Path) -> Path:
    """One panel per protocol of ``task``: a bar per model (its headline value), CI whiskers."""
    plt = pyplot()
    best = {key: row for key, row in headlines(rows).items() if key[1] == task and key[2] not in UNRANKED}
    protocols = sorted({protocol for _, _, protocol in best})
    columns = min(3, len(protocols))
    lines = math.ceil(len(protocols) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.6 * columns, 3.0 * lines), squeeze=False)
    for i, protocol in enumerate(protocols):
        axis = axes[i // columns][i % columns]
        shown = [(m, best[m, task, protocol]) for m in models if (m, task, protocol) in best]
        values = [row["value"] if row["value"] is not None else np.nan for _, row in shown]
        low = [v - row["ci_low"] if row["ci_low"] is not None else 0 for v, (_, row) in zip(values, shown)]
        high = [row["ci_high"] - v if row["ci_high"] is not None else 0 for v, (_, row) in zip(values, shown)]
        axis.bar(range(len(shown)), values, yerr=[low, high], capsize=3, color="#4c72b0")
        axis.set_xticks(range(len(shown)), [m[:18] for m, _ in shown], rotation=30, ha="right", fontsize=7)
        axis.set_title(metric_name(protocol, shown[0][1]["metric"]), fontsize=8)
    for j in range(len(protocols), lines * columns):
        axes[j // columns][j % columns].axis("off")
    figure.suptitle(task, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_figures(
    rows: list[dict[str, Any]], models: list[str], scores: dict[tuple[str, str, str], dict[str, Any]], folder: Path
) -> list[Path]:
    """Write ``TASK-bars.png`` for every task with results and ``TASK-roc.png`` for every task with
    zero-shot scores (the models that scored the same images, one curve each)."""
    if not any(row["protocol"] not in UNRANKED for row in rows):
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task in sorted({row["task"] for row in rows if row["protocol"] not in UNRANKED}):
        written.append(plot_task_bars(rows, models, task, folder / f"{_file_name(task)}-bars.png"))
        kept = [(m, scores[m, task, "zeroshot"]) for m in models if (m, task, "zeroshot") in scores]
        if kept:
            first = kept[0][1]
            same = [(m, s) for m, s in kept if s["keys"] == first["keys"] and s["findings"] == first["findings"]]
            curves = {m[:24]: np.asarray(s["methods"][ROC_METHOD]) for m, s in same}
            path = folder / f"{_file_name(task)}-roc.png"
            plot_roc(np.asarray(first["labels"]), curves, first["findings"], path)
            written.append(path)
        for model in models:
            if (found := scores.get((model, task, "calibration"))) is not None:
                written += _reliability(found, f"{task}, {model}", folder / _file_name(f"{task}-{model}-reliability"))
    return written


def _reliability(found: dict[str, Any], title: str, stem: Path) -> list[Path]:
    """One reliability diagram per finding of a calibration result: ``STEM-FINDING.png``."""
    labels = np.asarray(found["labels"])
    written = []
    for column, finding in enumerate(found["findings"]):
        known = labels[:, column] >= 0
        if known.any():
            curves = {when: np.asarray(found[when])[known, column] for when in ("before", "after")}
            path = stem.with_name(f"{stem.name}-{_file_name(finding)}.png")
            reliability_diagram(labels[known, column], curves, path, f"{title}: {finding}, {int(known.sum())} held out")
            written.append(path)
    return written
