"""Evaluation protocols on cached embeddings: each returns result rows (metric, value, 95% CI, n).

Every protocol reads a task's embeddings, never the images again: zero-shot (descriptors, finding
names, template ensemble), kNN diagnosis and image-to-image search (the query's own patient left
out), linear probes at label fractions (patient-grouped folds) and image<->text recall where the
samples have reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from convirt.bench.clinical_protocols import calibration, operating_points, subgroups
from convirt.bench.rows import Rows, _row
from convirt.bench.suite import Task
from convirt.data.labels import label_matrix
from convirt.data.schema import finding_set
from convirt.data.stream import text_group
from convirt.embeddings.encode import EmbeddingOutput
from convirt.models.checkpoint import LoadedModel
from convirt.retrieval import build_index, image_text_recall, knn_scores, search
from convirt.retrieval.metrics import per_query_retrieval, same_patient_exclusions
from convirt.zeroshot import Method, load_descriptors
from convirt.zeroshot.evaluate import evaluate_zeroshot
from convirt.zeroshot.metrics import evaluate_findings, mean_auroc_ci, mean_ci
from convirt.zeroshot.probe import probe_embedded
from convirt.zeroshot.robustness import score_phrasings


def auroc_rows(
    prefix: str, labels: np.ndarray, scores: np.ndarray, names: list[str], bootstrap: int, seed: int
) -> Rows:
    """Mean AUROC (headline, with its CI) and each finding's, for ``(N, F)`` labels and scores."""
    evaluated = evaluate_findings(labels, scores, names, bootstrap=bootstrap, seed=seed)
    rows = [
        _row(
            f"{prefix}mean_auroc",
            evaluated["mean"]["auroc"],
            mean_auroc_ci(labels, scores, bootstrap, seed),
            len(labels),
        )
    ]
    for name, values in evaluated["findings"].items():
        rows.append(_row(f"{prefix}auroc/{name}", values["auroc"], tuple(values["auroc_ci"]), len(labels)))  # type: ignore[arg-type]
    return rows


def finding_names(task: Task, images: EmbeddingOutput) -> list[str]:
    """The findings a task scores: its ``labels``, else its descriptor set's, else every label in the data."""
    if task.labels:
        return list(task.labels)
    if task.descriptors:
        return load_descriptors(task.descriptors).finding_names
    return sorted(set().union(*(finding_set(m.get("labels", [])) for m in images.meta)))


def zeroshot(
    loaded: LoadedModel, task: Task, options: dict, images: EmbeddingOutput, texts: Any, seed: int, bootstrap: int
) -> dict[str, Any]:
    loaded.require_text("zero-shot diagnosis")
    if not task.descriptors:
        raise ValueError(f"task {task.name!r} runs zeroshot but names no descriptor set (descriptors:)")
    descriptors = load_descriptors(task.descriptors)
    evaluation = evaluate_zeroshot(
        loaded.model, loaded.tokenizer, descriptors, images, task.labels, bootstrap=bootstrap, seed=seed
    )
    names = evaluation.outputs[Method.DESCRIPTORS].finding_names
    rows: Rows = []
    scores = {}
    for method in Method:
        scores[method.value] = evaluation.outputs[method].probabilities.numpy()
        rows += auroc_rows(f"{method.value}/", evaluation.labels, scores[method.value], names, bootstrap, seed)
    # The per-image scores go with the result, for ROC curves (:mod:`convirt.bench.figures`).
    curves = {"keys": images.keys, "findings": names, "labels": evaluation.labels.tolist()}
    return {"rows": rows, "scores": {**curves, "methods": {m: v.tolist() for m, v in scores.items()}}}


def reports(
    loaded: LoadedModel, task: Task, options: dict, images: Any, texts: EmbeddingOutput, seed: int, bootstrap: int
) -> Rows:
    """Zero-shot diagnosis of the reports themselves: each report's embedding scored against the
    descriptor prompts as an image's would be (a text tower that cannot tell a normal report from
    a pneumonia report in the joint space cannot guide an image there either). Needs no image."""
    loaded.require_text("report zero-shot")
    if not task.descriptors:
        raise ValueError(f"task {task.name!r} runs reports but names no descriptor set (descriptors:)")
    evaluation = evaluate_zeroshot(
        loaded.model,
        loaded.tokenizer,
        load_descriptors(task.descriptors),
        texts,
        task.labels,
        bootstrap=bootstrap,
        seed=seed,
    )
    names = evaluation.outputs[Method.DESCRIPTORS].finding_names
    rows: Rows = []
    for method in Method:
        scores = evaluation.outputs[method].probabilities.numpy()
        rows += auroc_rows(f"{method.value}/", evaluation.labels, scores, names, bootstrap, seed)
    return rows


def prompts(
    loaded: LoadedModel, task: Task, options: dict, images: EmbeddingOutput, texts: Any, seed: int, bootstrap: int
) -> Rows:
    """Prompt robustness: every phrasing of each finding scored alone; the mean AUROC over all
    (finding, phrasing) pairs with its CI, then the mean over findings of the worst and the best."""
    loaded.require_text("prompt robustness")
    if not task.descriptors:
        raise ValueError(f"task {task.name!r} runs prompts but names no descriptor set (descriptors:)")
    descriptors = load_descriptors(task.descriptors)
    names = finding_names(task, images)
    labels = label_matrix(images.meta, names, mark_uncertain=True)
    scored = score_phrasings(loaded.model, loaded.tokenizer, descriptors, images.embeddings, labels, names)
    columns = np.concatenate([np.repeat(labels[:, [f]], s.shape[1], axis=1) for f, s in enumerate(scored.scores)], 1)
    every = np.concatenate(scored.scores, axis=1)
    summary = scored.summary()
    n = len(images.keys)
    rows = [
        _row(
            "mean_auroc",
            float(np.nanmean(np.concatenate(scored.aurocs))),
            mean_auroc_ci(columns, every, bootstrap, seed),
            n,
        )
    ]
    for metric, key in (("worst_auroc", "min"), ("best_auroc", "max")):
        rows.append(_row(metric, float(np.nanmean([summary[name][key] for name in names])), n=n))
    for name in names:
        for key in ("mean", "min", "max"):
            rows.append(_row(f"auroc_{key}/{name}", summary[name][key], n=n))
    return rows


def _neighbours(images: EmbeddingOutput, depth: int) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """Exact neighbours of every image among the others, and per image the ids left out (itself, its patient)."""
    index, _ = build_index(images.embeddings, "Flat")
    patients = [str(m.get("patient_id") or key) for m, key in zip(images.meta, images.keys)]
    exclude = [own | {row} for row, own in enumerate(same_patient_exclusions(patients, patients))]
    widest = max(len(e) for e in exclude)
    similarities, ids = search(index, images.embeddings, min(depth + widest, len(images.keys)))
    return similarities, ids, exclude


def knn(
    loaded: LoadedModel, task: Task, options: dict, images: EmbeddingOutput, texts: Any, seed: int, bootstrap: int
) -> Rows:
    k = int(options.get("k", 10))
    names = finding_names(task, images)
    similarities, ids, exclude = _neighbours(images, k)
    labels = label_matrix(images.meta, names, mark_uncertain=True)
    scores = knn_scores(ids, similarities, np.clip(labels, 0, None), k, exclude)  # an uncertain neighbour votes no
    return auroc_rows(f"k{k}/", labels, scores, names, bootstrap, seed)


def retrieval(
    loaded: LoadedModel, task: Task, options: dict, images: EmbeddingOutput, texts: Any, seed: int, bootstrap: int
) -> Rows:
    k = int(options.get("k", 5))
    _, ids, exclude = _neighbours(images, k)
    # Relevant: the same findings, among the task's labels where it names them (NIH co-labels aside).
    named = set(task.labels or ())
    sets = [finding_set(m.get("labels", [])) for m in images.meta]
    sets = [frozenset(s & named) for s in sets] if named else sets
    per = per_query_retrieval(ids, sets, sets, k, exclude)
    rows = []
    for metric, values in (("map", per["average_precision"]), ("precision", per["precision"])):
        counted = int((~np.isnan(values)).sum())  # mAP counts the queries that have a relevant item
        rows.append(_row(f"{metric}_at_{k}", np.nanmean(values), mean_ci(values, bootstrap, seed), counted))
    return rows


def probe(
    loaded: LoadedModel, task: Task, options: dict, images: EmbeddingOutput, texts: Any, seed: int, bootstrap: int
) -> Rows:
    fractions = [float(f) for f in options.get("fractions", (0.01, 0.1, 1.0))]
    probes = tuple(options.get("probes", ("linear", "knn")))
    names = finding_names(task, images)
    _, outputs = probe_embedded(images, names, fractions, probes, seed=seed, bootstrap=bootstrap)
    labels = label_matrix(images.meta, names)
    rows: Rows = []
    for output in sorted(outputs, key=lambda o: (probes.index(o.probe), -o.fraction)):
        scored = np.nan_to_num(output.probabilities, nan=0.5)  # an unfittable fold scores as chance, as in probe
        rows += auroc_rows(f"{output.probe}@{output.fraction:g}/", labels, scored, names, bootstrap, seed)
    return rows


def image_text(
    loaded: LoadedModel,
    task: Task,
    options: dict,
    images: EmbeddingOutput,
    texts: EmbeddingOutput,
    seed: int,
    bootstrap: int,
) -> Rows:
    loaded.require_text("image<->text recall")
    result = image_text_recall(
        images.embeddings,
        [text_group(t) for t in images.texts],
        texts.embeddings,
        [text_group(t) for t in texts.texts],
        per_query=True,
    )
    rows: Rows = []
    for way in ("image_to_text", "text_to_image"):
        hits = result["per_query"][way]
        for key in sorted(hits, key=lambda key: key != "recall_at_5"):
            found = hits[key].astype(float)
            rows.append(_row(f"{way}/{key}", found.mean(), mean_ci(found, bootstrap, seed), len(found)))
    return rows


# A protocol returns its rows, or a dict of them (``rows``) and what else its result file keeps (``scores``).
Protocol = Callable[..., Rows | dict[str, Any]]
PROTOCOL_FUNCTIONS: dict[str, Protocol] = {
    "zeroshot": zeroshot,
    "prompts": prompts,
    "knn": knn,
    "retrieval": retrieval,
    "probe": probe,
    "image_text": image_text,
    "reports": reports,
    "subgroups": subgroups,
    "calibration": calibration,
    "operating_points": operating_points,
}
NEEDS_TEXTS = {"image_text", "reports"}  # protocols that read the task's report embeddings
NEEDS_TEXT_TOWER = {
    "zeroshot",
    "prompts",
    "image_text",
    "reports",
    "subgroups",
    "calibration",
    "operating_points",
}  # refused on an image-only encoder
NEEDS_LABELS = set(PROTOCOL_FUNCTIONS) - {"image_text"}  # refused on samples without labels
TEXT_ONLY = {"reports"}  # protocols that read no image (a task of text-only shards, such as Open-i's reports)
# The first row of each protocol is its headline, the one the leaderboard shows: zero-shot's descriptor
# mean AUROC over phrasings, kNN's mean AUROC, mAP@k, the linear probe's mean AUROC with all labels,
# image->text R@5.
