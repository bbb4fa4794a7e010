"""The fine-tuning protocol (BenchX's): a model's image tower and a linear head trained on part of
a task's images at label fractions, early-stopped on a validation part, scored on a test part.

The task's images are split once per seed by patient (StratifiedGroupKFold, 5 folds on the first
finding: one fold test, one validation, three training), and each fraction's training images are a
stratified share of the training part. The training itself is Lightning's, in
:func:`convirt.training.finetune.finetune_predict`, handed in by the caller (``bench`` may not import
``training``); this module chooses the images and turns the probabilities into result rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from convirt.bench.protocols import auroc_rows
from convirt.bench.suite import Task
from convirt.data.foreign import is_foreign_shards
from convirt.data.inputs import is_shard_folder, read_image_rows
from convirt.data.labels import label_matrix
from convirt.data.schema import Row, finding_set
from convirt.models.checkpoint import LoadedModel

# finetune(loaded, train_rows, val_rows, test_rows, finding_names, seed, options) -> (len(test), F) probabilities
Finetune = Callable[..., np.ndarray]
FOLDS = 5
TRAINING_OPTIONS = ("max_epochs", "patience", "batch_size", "tower_lr", "head_lr", "weight_decay")


def task_rows(task: Task, leave_out: set[str] | None = None) -> list[Row]:
    """The rows (image paths and labels) of a task's samples, less ``leave_out`` keys.

    Raises:
        ValueError: The task's data is a shard folder (fine-tuning reads images from files).
    """
    if is_shard_folder(task.data) or is_foreign_shards(task.location):
        raise ValueError(
            f"task {task.name!r}: fine-tuning reads a label table or an image folder, not shards ({task.location})"
        )
    options = {k: v for k, v in task.input_options().items() if k != "split"}
    rows = read_image_rows(task.data, **options)
    return [row for row in rows if not leave_out or row.key not in leave_out]


def patient_parts(labels: np.ndarray, patients: list[str], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the training, validation and test parts: no patient in two of them."""
    splitter = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    fold = np.zeros(len(labels), dtype=int)
    for number, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels[:, 0], patients)):
        fold[held] = number
    return np.flatnonzero(fold >= 2), np.flatnonzero(fold == 1), np.flatnonzero(fold == 0)


def fraction_of(positions: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified ``fraction`` of ``positions`` by the first finding, at least one image of each class."""
    if fraction >= 1:
        return positions
    rng = np.random.default_rng(seed)
    chosen = []
    for value in (0, 1):
        rows = positions[labels[positions, 0] == value]
        if rows.size:
            chosen.append(rng.choice(rows, max(1, round(fraction * rows.size)), replace=False))
    return np.sort(np.concatenate(chosen))


def finetune_protocol(
    finetune: Finetune,
    loaded: LoadedModel,
    task: Task,
    options: dict[str, Any],
    seed: int,
    bootstrap: int,
    leave_out: set[str] | None = None,
) -> list[dict[str, Any]]:
    """Rows ``finetune@FRACTION/mean_auroc`` (with CI) and per finding, on the test part; all labels first."""
    rows = task_rows(task, leave_out)
    names = list(task.labels or sorted(set().union(*(finding_set(r.labels) for r in rows))))
    labels = label_matrix([r.metadata() for r in rows], names)
    train, val, test = patient_parts(labels, [r.patient_id or r.key for r in rows], seed)
    training = {k: options[k] for k in TRAINING_OPTIONS if k in options}
    found: list[dict[str, Any]] = []
    for fraction in sorted((float(f) for f in options.get("fractions", (0.01, 0.1, 1.0))), reverse=True):
        chosen = fraction_of(train, labels, fraction, seed)
        probabilities = finetune(
            loaded, [rows[i] for i in chosen], [rows[i] for i in val], [rows[i] for i in test], names, seed, training
        )
        found += auroc_rows(f"finetune@{fraction:g}/", labels[test], probabilities, names, bootstrap, seed)
    return found
