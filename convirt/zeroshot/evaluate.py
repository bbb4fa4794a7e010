"""Zero-shot diagnosis of a labelled set: labels aligned to the descriptors, thresholds, metrics, the output folder.

`convirt zeroshot` writes a folder with ``predictions.csv`` (per-image probabilities of the
descriptor method beside the labels), ``explanations.jsonl`` (per image, each finding's
probability and its observations'), ``metrics.json`` (every method's AUROC, AUPRC, F1,
sensitivity and specificity with bootstrap CIs) and ``roc.png``; :func:`load_zeroshot_folder`
reads them back.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convirt._io import atomic_path, write_json, write_lines
from convirt.data.labels import has_labels, label_matrix, missing_labels
from convirt.data.schema import NO_FINDING
from convirt.embeddings.encode import EmbeddingOutput
from convirt.zeroshot.calibration import Calibration
from convirt.zeroshot.calibration_report import format_calibration
from convirt.zeroshot.classifier import Method, ZeroShotClassifier, ZeroShotOutput
from convirt.zeroshot.descriptors import DescriptorSet
from convirt.zeroshot.metrics import evaluate_findings, youden_threshold
from convirt.zeroshot.operating_points import RULES
from convirt.zeroshot.subgroups import format_subgroups, present_columns, subgroup_columns
from convirt.zeroshot.validated import VALIDATION_FRACTION, LabelledRows, save_validated, validate_or_skip

PREDICTIONS, EXPLANATIONS, METRICS, ROC = "predictions.csv", "explanations.jsonl", "metrics.json", "roc.png"


def aligned_labels(
    metas: list[dict[str, Any]], finding_names: list[str], selected: list[str] | None, require_all: bool = True
) -> np.ndarray:
    """``(N, F)`` 0/1 labels of the descriptor findings, checked against the data's label names;
    ``-1`` where a finding is uncertain and left out (CheXpert under ``--uncertain ignore``).

    Raises:
        ValueError: No sample has labels in its metadata (the message says how to give them), a selected
            label is not a descriptor finding, or a descriptor finding never appears in the labels; the
            message lists both name sets.
    """
    if metas and not has_labels(metas):
        raise ValueError(missing_labels("zero-shot evaluation"))
    present = set().union(
        *({str(label) for label in meta.get("labels", [])} for meta in metas),
        *(set(meta.get("uncertain", [])) for meta in metas),
    )
    # "No Finding" is the absence of findings unless the descriptors score it as a class (CheXpert).
    wanted = set(selected) if selected else present - {"", *({NO_FINDING} - set(finding_names))}
    both = f"descriptor findings: {sorted(finding_names)}; labels in the data: {sorted(present) or 'none'}"
    if not_described := sorted(wanted - set(finding_names)):
        raise ValueError(f"labels without a descriptor finding: {not_described} (choose with --labels); {both}")
    if require_all and (missing := sorted(set(finding_names) - present)):
        raise ValueError(f"descriptor findings missing from the labels: {missing}; {both}")
    return label_matrix(metas, finding_names, mark_uncertain=True)


def youden_thresholds(classifier: ZeroShotClassifier, tuning: EmbeddingOutput, labels: np.ndarray) -> list[float]:
    """Per finding, the probability threshold maximising Youden's J on ``tuning`` (NaN where a
    finding has one class there), leaving out its uncertain (-1) labels."""
    probs = classifier.predict_features(torch.from_numpy(tuning.embeddings)).probabilities.numpy()
    return [youden_threshold(labels[labels[:, i] >= 0, i], probs[labels[:, i] >= 0, i]) for i in range(labels.shape[1])]


def _patient(meta: dict[str, Any], key: str) -> str:
    return str(meta.get("patient_id") or key)


def labelled_rows(
    model: Any, tokenizer: Any, descriptors: DescriptorSet, embedded: EmbeddingOutput, selected: list[str] | None
) -> LabelledRows:
    """A split's descriptor probabilities and labels (its findings need not all be present), keys
    and patients: a validation split to calibrate on (:func:`convirt.zeroshot.validated.validate`)."""
    names = descriptors.only(selected).finding_names if selected else descriptors.finding_names
    labels = aligned_labels(embedded.meta, names, selected, require_all=False)
    classifier = ZeroShotClassifier(model, tokenizer, descriptors.only(selected) if selected else descriptors)
    probs = classifier.predict_features(torch.from_numpy(embedded.embeddings)).probabilities.numpy()
    patients = list(map(_patient, embedded.meta, embedded.keys))
    return LabelledRows(labels, probs, list(embedded.keys), patients)


def format_aurocs(evaluation: ZeroShotEvaluationOutput) -> str:
    """The AUROC table `convirt zeroshot` prints: per finding and method, with 95% CIs."""
    metrics, labels = evaluation.metrics, evaluation.labels
    names = evaluation.outputs[Method.DESCRIPTORS].finding_names
    methods = [method.value for method in Method]

    def number(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) and value == value else "n/a"

    def cell(values: dict[str, Any]) -> str:
        low, high = values["auroc_ci"]
        return f"{number(values['auroc'])} [{number(low)}, {number(high)}]" if low == low else number(values["auroc"])

    lines = [
        f"AUROC [95% CI], {len(labels)} images",
        f"{'finding':<20} {'positives':>9} " + " ".join(f"{m:>22}" for m in methods),
    ]
    for i, name in enumerate(names):
        cells = " ".join(f"{cell(metrics[m]['findings'][name]):>22}" for m in methods)
        lines.append(f"{name:<20} {(labels[:, i] == 1).sum():>9} {cells}")
    means = " ".join(f"{number(metrics[m]['mean_auroc']):>22}" for m in methods)
    return "\n".join([*lines, f"{'mean AUROC':<20} {'':>9} {means}"])


@dataclass
class ZeroShotEvaluationOutput:
    """A zero-shot evaluation.

    Attributes:
        metrics: What ``metrics.json`` holds: counts, then per method the findings' metrics,
            ``auroc`` per finding and ``mean_auroc``.
        keys: The images' keys, length ``N``.
        labels: ``(N, F)`` labels (-1: uncertain, left out).
        outputs: Per method, the classifier's output (probabilities ``(N, F)``; observations for
            the descriptor method).
    """

    metrics: dict[str, Any]
    keys: list[str]
    labels: np.ndarray
    outputs: dict[Method, ZeroShotOutput] = field(default_factory=dict)


def evaluate_zeroshot(
    model: Any,
    tokenizer: Any,
    descriptors: DescriptorSet,
    embedded: EmbeddingOutput,
    selected: list[str] | None = None,
    tuning: EmbeddingOutput | None = None,
    tuning_source: str = "",
    bootstrap: int = 1000,
    seed: int = 0,
    about: dict[str, Any] | None = None,
) -> ZeroShotEvaluationOutput:
    """Score every method on embedded images and compute their metrics against the labels.

    Args:
        model, tokenizer: The dual encoder the images were embedded with, and its tokenizer.
        descriptors: The findings and their observations.
        embedded: The images' embeddings, keys and metadata (labels).
        selected: Label names to score (default: every label in the data; each must be a finding).
        tuning: Embedded images (none of them evaluated) whose Youden's J picks each finding's
            threshold for F1, sensitivity and specificity (default: none, and those are NaN);
            ``tuning_source`` says where they come from.
        bootstrap, seed: Replicates and seed of the CIs.
        about: Written first in the metrics (data, split, checkpoint, ...).

    Raises:
        ValueError: Labels and descriptor findings do not match (see :func:`aligned_labels`), or
            an image or a patient is both in ``tuning`` and evaluated.
    """
    if selected:  # only the selected labels are scored: the other findings of the set need no labels
        descriptors = descriptors.only(selected)
    names = descriptors.finding_names
    labels = aligned_labels(embedded.meta, names, selected)
    classifiers = {method: ZeroShotClassifier(model, tokenizer, descriptors, method) for method in Method}
    thresholds: dict[Method, list[float] | None] = {method: None for method in Method}
    if tuning is not None:
        if shared := len(set(tuning.keys) & set(embedded.keys)):
            raise ValueError(
                f"{shared} images of the threshold split are also evaluated: a threshold is chosen on other"
                " images than those it is reported on (name another split)"
            )
        if shared := len(
            set(map(_patient, tuning.meta, tuning.keys)) & set(map(_patient, embedded.meta, embedded.keys))
        ):
            raise ValueError(
                f"{shared} patients of the threshold split are also evaluated: a threshold is chosen on other"
                " patients than those it is reported on (name a split made by patient)"
            )
        # A small validation split may lack a finding: its threshold is then NaN, not an error.
        tuning_labels = aligned_labels(tuning.meta, names, selected, require_all=False)
        thresholds = {method: youden_thresholds(c, tuning, tuning_labels) for method, c in classifiers.items()}
    metrics: dict[str, Any] = {
        **(about or {}),
        "samples": len(labels),
        "skipped_samples": embedded.skipped,
        "descriptors": descriptors.name,
        "positives": {n: int((labels[:, i] == 1).sum()) for i, n in enumerate(names)},
        "bootstrap": bootstrap,
        "seed": seed,
    }
    features = torch.from_numpy(embedded.embeddings)
    result = ZeroShotEvaluationOutput(metrics, list(embedded.keys), labels)
    for method, classifier in classifiers.items():
        result.outputs[method] = classifier.predict_features(features)
        evaluated = evaluate_findings(
            labels,
            result.outputs[method].probabilities.numpy(),
            names,
            thresholds[method],
            tuning_source if tuning is not None else "",
            bootstrap=bootstrap,
            seed=seed,
        )
        metrics[method.value] = {
            **evaluated,
            "auroc": {n: m["auroc"] for n, m in evaluated["findings"].items()},
            "mean_auroc": evaluated["mean"]["auroc"],
        }
    return result


def save_zeroshot_folder(evaluation: ZeroShotEvaluationOutput, output: str | os.PathLike[str]) -> Path:
    """Write ``predictions.csv``, ``explanations.jsonl``, ``metrics.json`` and ``roc.png`` into ``output``."""
    from convirt.zeroshot.plots import plot_roc

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    descriptor = evaluation.outputs[Method.DESCRIPTORS]
    names = descriptor.finding_names
    with atomic_path(out / PREDICTIONS) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", *[f"p_{n}" for n in names], *[f"label_{n}" for n in names]])
        for key, p, y in zip(evaluation.keys, descriptor.probabilities.numpy(), evaluation.labels):
            writer.writerow([key, *[f"{v:.5f}" for v in p], *y.tolist()])
    write_lines(out / EXPLANATIONS, [json.dumps(record) for record in _explanations(evaluation.keys, descriptor)])
    write_json(out / METRICS, evaluation.metrics)
    plot_roc(
        evaluation.labels, {m.value: o.probabilities.numpy() for m, o in evaluation.outputs.items()}, names, out / ROC
    )
    return out


def assess_and_save(
    evaluation: ZeroShotEvaluationOutput,
    embedded: EmbeddingOutput,
    output: str | os.PathLike[str],
    calibration: Calibration | None = None,
    validation: LabelledRows | None = None,
    method: str = "platt",
    fraction: float = VALIDATION_FRACTION,
    seed: int = 0,
    bootstrap: int = 1000,
    rules: Sequence[str] = RULES,
    scores_from: dict[str, Any] | None = None,
    subgroups: Sequence[str] | None = None,
) -> str:
    """What `convirt zeroshot` reports beside the AUROCs, written with the folder
    (:func:`save_zeroshot_folder`): the descriptor probabilities' calibration and operating points
    (:func:`~convirt.zeroshot.validated.validate_or_skip`: fitted on ``validation`` or on a
    patient-grouped fold of these images, or ``calibration`` applied; ``calibration.json`` and
    ``reliability/`` when fitted here) and the AUROC per subgroup of ``subgroups`` (default: those
    of sex, age band and view with two groups or more), both in ``metrics.json``. Returns the
    text tables of all three.

    Raises:
        ValueError: See :func:`~convirt.zeroshot.validated.validate_or_skip`; an unknown column.
    """
    descriptor = evaluation.outputs[Method.DESCRIPTORS]
    probs, names, labels = descriptor.probabilities.numpy(), descriptor.finding_names, evaluation.labels
    patients = [str(m.get("patient_id") or key) for m, key in zip(embedded.meta, embedded.keys)]
    calibrated = validate_or_skip(
        *(labels, probs, names, evaluation.keys, patients, calibration, method, fraction, seed, bootstrap, rules),
        *(scores_from, validation),
    )
    columns = present_columns(embedded.meta) if subgroups is None else list(subgroups)
    found = subgroup_columns(labels, probs, names, embedded.meta, columns, bootstrap=bootstrap, seed=seed)
    evaluation.metrics["subgroups"] = {c: {f: split.to_dict() for f, split in by.items()} for c, by in found.items()}
    evaluation.metrics["calibration"] = {"skipped": calibrated} if isinstance(calibrated, str) else None
    out = save_zeroshot_folder(evaluation, output)
    if not isinstance(calibrated, str):
        evaluation.metrics["calibration"] = save_validated(calibrated, labels, probs, names, evaluation.keys, out)
        write_json(out / METRICS, evaluation.metrics)
    text = [format_aurocs(evaluation)]
    if isinstance(calibrated, str):
        text.append(f"no calibration: {calibrated}")
    else:
        text.append(format_calibration(evaluation.metrics["calibration"]))
    return "\n\n".join([*text, format_subgroups(found)] if found else text)


def _explanations(keys: list[str], output: ZeroShotOutput) -> list[dict[str, Any]]:
    obs_probs, observations = output.observation_probabilities, output.observations
    probs, names = output.probabilities, output.finding_names
    assert obs_probs is not None, "explanations come from the descriptor method"
    return [
        {
            "key": key,
            "findings": {
                name: {
                    "probability": round(float(probs[row, i]), 5),
                    "observations": {
                        obs: round(float(obs_probs[row, j]), 5)
                        for j, (owner, obs) in enumerate(observations)
                        if owner == name
                    },
                }
                for i, name in enumerate(names)
            },
        }
        for row, key in enumerate(keys)
    ]


@dataclass
class ZeroShotFolderOutput:
    """A folder written by `convirt zeroshot`, read back.

    Attributes:
        metrics: ``metrics.json``.
        keys: The images' keys, in order.
        probabilities: ``(N, F)`` of the descriptor method, by finding name order of ``findings``.
        labels: ``(N, F)`` labels (-1: uncertain).
        findings: The finding names.
        explanations: Per image, each finding's probability and its observations'.
    """

    metrics: dict[str, Any]
    keys: list[str]
    probabilities: np.ndarray
    labels: np.ndarray
    findings: list[str]
    explanations: list[dict[str, Any]]


def load_zeroshot_folder(folder: str | os.PathLike[str]) -> ZeroShotFolderOutput:
    """Read the predictions, labels, explanations and metrics of a `convirt zeroshot` folder.

    Raises:
        FileNotFoundError: A file of the folder is missing.
    """
    out = Path(folder)
    for name in (PREDICTIONS, EXPLANATIONS, METRICS):
        if not (out / name).is_file():
            raise FileNotFoundError(f"no {name} in {out}: run `convirt zeroshot --output {out}` first")
    with open(out / PREDICTIONS, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    findings = [column[2:] for column in header[1:] if column.startswith("p_")]
    width = len(findings)
    return ZeroShotFolderOutput(
        metrics=json.loads((out / METRICS).read_text(encoding="utf-8")),
        keys=[row[0] for row in body],
        probabilities=np.array([[float(v) for v in row[1 : 1 + width]] for row in body]).reshape(len(body), width),
        labels=np.array([[int(v) for v in row[1 + width :]] for row in body], dtype=int).reshape(len(body), width),
        findings=findings,
        explanations=[json.loads(line) for line in (out / EXPLANATIONS).read_text(encoding="utf-8").splitlines()],
    )
