"""Figures: ROC curves per finding, and a bar chart of one image's observation probabilities."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def pyplot():  # type: ignore[no-untyped-def]  # matplotlib, drawing to files outside notebooks
    import matplotlib
    import matplotlib.pyplot as plt

    if "inline" not in str(matplotlib.get_backend()).lower():
        plt.switch_backend("Agg")  # files only, no window; notebooks keep their inline figures

    return plt


def plot_roc(
    labels: np.ndarray, scores: dict[str, np.ndarray], names: Sequence[str], path: str | os.PathLike[str]
) -> None:
    """One ROC panel per finding of ``(N, F)`` labels, a curve per method's ``(N, F)`` scores.

    A finding with one class only gets an empty panel that says so.
    """
    plt = pyplot()
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for i, name in enumerate(names):
        axis = axes[i // columns][i % columns]
        kept = labels[:, i] >= 0  # -1: uncertain, left out
        y = labels[kept, i]
        if 0 < y.sum() < len(y):
            for method, values in scores.items():
                fpr, tpr, _ = roc_curve(y, values[kept, i])
                axis.plot(fpr, tpr, label=f"{method} {roc_auc_score(y, values[kept, i]):.2f}")
            axis.legend(fontsize=7, loc="lower right")
        else:
            axis.text(0.5, 0.5, "one class only:\nno ROC", ha="center", va="center")
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.5, linestyle="--")
        axis.set_title(f"{name} ({int(y.sum())}+)", fontsize=9)
        axis.set_xlabel("1 - specificity", fontsize=8)
        axis.set_ylabel("sensitivity", fontsize=8)
    for j in range(len(names), rows * columns):
        axes[j // columns][j % columns].axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_observations(
    finding_probabilities: dict[str, float],
    observations: dict[str, dict[str, float]],
    path: str | os.PathLike[str] | None = None,
    title: str = "",
) -> object:
    """Bar chart of one image: each finding's probability and, under it, its observations'.

    Args:
        finding_probabilities: ``{finding: probability}``.
        observations: ``{finding: {observation: probability}}`` (the explanation).
        path: Save here when given.
        title: Figure title (e.g. the image key).

    Returns:
        The matplotlib figure.
    """
    plt = pyplot()
    labels, values, colours = [], [], []
    for finding, probability in finding_probabilities.items():
        labels.append(finding)
        values.append(probability)
        colours.append("tab:red")
        for observation, value in observations.get(finding, {}).items():
            labels.append(f"    {observation}")
            values.append(value)
            colours.append("tab:blue")
    figure, axis = plt.subplots(figsize=(7, 0.28 * len(labels) + 0.8))
    positions = np.arange(len(labels))[::-1]
    axis.barh(positions, values, color=colours)
    axis.set_yticks(positions, labels, fontsize=8)
    axis.set_xlim(0, 1)
    axis.axvline(0.5, color="grey", linewidth=0.5, linestyle="--")
    axis.set_xlabel("probability (red: finding; blue: its observations)")
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=110)
    return figure


def plot_saliency(
    image: np.ndarray,
    heatmap: np.ndarray,
    path: str | os.PathLike[str] | None = None,
    title: str = "",
    axis: object | None = None,
) -> object:
    """The radiograph in grey with the ``[0, 1]`` saliency map overlaid (same ``(H, W)``).

    Draws on ``axis`` when given; otherwise makes a figure (saved to ``path`` when given).
    Returns the figure (or the axis).
    """
    plt = pyplot()
    figure = None
    if axis is None:
        figure, axis = plt.subplots(figsize=(4, 4))
    axis.imshow(np.asarray(image), cmap="gray")  # type: ignore[attr-defined,union-attr]
    axis.imshow(np.asarray(heatmap), cmap="jet", alpha=0.35, vmin=0, vmax=1)  # type: ignore[attr-defined,union-attr]
    axis.set_title(title, fontsize=9)  # type: ignore[attr-defined,union-attr]
    axis.axis("off")  # type: ignore[attr-defined,union-attr]
    if figure is not None:
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=110)
        return figure
    return axis


def plot_explained_batch(batch: dict[str, Any], classifier: Any, folder: str | os.PathLike[str]) -> None:
    """Per image of a batch dict: ``KEY-observations.png`` (:func:`plot_observations`) and
    ``KEY-saliency.png`` (the Grad-CAM map of each finding, :func:`plot_saliency`) in ``folder``.

    Args:
        batch: ``image`` ``(B, 3, H, W)`` preprocessed, ``key`` and ``meta`` (labels for the title).
        classifier: A descriptor-method :class:`convirt.zeroshot.ZeroShotClassifier`.
        folder: Made if missing.
    """
    plt = pyplot()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    output = classifier.predict(batch["image"])
    names = output.finding_names
    for row, key in enumerate(batch["key"]):
        probabilities = {name: float(output.probabilities[row, i]) for i, name in enumerate(names)}
        explanation = {
            name: {
                obs: float(output.observation_probabilities[row, j])
                for j, (owner, obs) in enumerate(output.observations)
                if owner == name
            }
            for name in names
        }
        labels = "; ".join(batch["meta"][row].get("labels", [])) or "no labels"
        plot_observations(probabilities, explanation, out / f"{key}-observations.png", title=f"{key}: {labels}")
        grey = batch["image"][row][0].numpy()
        figure, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3.3), squeeze=False)
        for axis, name in zip(axes[0], names):
            heatmap = classifier.saliency(batch["image"][row], name).numpy()
            plot_saliency(grey, heatmap, title=f"{name} {probabilities[name]:.2f}", axis=axis)
        figure.tight_layout()
        figure.savefig(out / f"{key}-saliency.png", dpi=100)
        plt.close("all")
