"""What a clinical reader asks next of zero-shot scores: are they probabilities, at what threshold,
and for whom do they hold. Protocols on a task's cached embeddings, like :mod:`convirt.bench.protocols`:

- ``subgroups``: descriptor AUROC per group of the metadata a task declares, with the gap;
- ``calibration`` and ``operating_points``: fitted and chosen on a patient-grouped validation fold,
  reported on the other patients (:mod:`convirt.zeroshot.validated`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from convirt.bench.rows import NAN, Rows, _row
from convirt.bench.suite import Task
from convirt.embeddings.encode import EmbeddingOutput
from convirt.models.checkpoint import LoadedModel
from convirt.zeroshot import Method, load_descriptors
from convirt.zeroshot.calibration_report import CalibrationReport
from convirt.zeroshot.evaluate import evaluate_zeroshot
from convirt.zeroshot.operating_points import RATES, canonical_rule
from convirt.zeroshot.subgroups import subgroup_columns
from convirt.zeroshot.validated import VALIDATION_FRACTION, validate_or_skip


def subgroups(
    loaded: LoadedModel, task: Task, options: dict, images: EmbeddingOutput, texts: Any, seed: int, bootstrap: int
) -> Rows:
    """Zero-shot (descriptor) AUROC per subgroup of each metadata column the task declares
    (``columns``: of :data:`~convirt.zeroshot.subgroups.COLUMNS`; ``age_band`` cuts ``age`` at
    ``bands``, 40/60/80 by default), with n, positives and CI; groups under ``min_size`` rows or
    ``min_positives`` positives are listed with their n and no value. Per column and finding, the
    gap between the best and the worst subgroup with its bootstrap CI (Bonferroni-adjusted for the
    pairs it was chosen among; ``unknown`` never ranked) comes first (the headline: the first
    column's first finding), then the worst subgroup's AUROC (``group`` names it)."""
    evaluation = _descriptor_scores(loaded, task, images, seed, "subgroup zero-shot diagnosis")
    names = evaluation.outputs[Method.DESCRIPTORS].finding_names
    found = subgroup_columns(
        evaluation.labels,
        evaluation.outputs[Method.DESCRIPTORS].probabilities.numpy(),
        names,
        images.meta,
        list(options.get("columns", ["sex", "age_band", "view"])),
        tuple(options.get("bands", (40, 60, 80))),
        int(options.get("min_size", 30)),
        int(options.get("min_positives", 5)),
        bootstrap,
        seed,
    )
    gaps: Rows = []
    groups_rows: Rows = []
    for column, by_finding in found.items():
        for name, split in by_finding.items():
            n = sum(group.n for group in split.subgroups)
            gaps.append(_row(f"{column}/gap/{name}", split.gap, split.gap_ci, n))
            if (worst := next((g for g in split.subgroups if g.name == split.worst), None)) is not None:
                row = _row(f"{column}/worst/{name}", worst.auroc, worst.ci, worst.n, worst.positives)
                gaps.append({**row, "group": worst.name})  # which group: the row's value is its AUROC
            for group in split.subgroups:
                row = _row(f"{column}/{group.name}/auroc/{name}", group.auroc, group.ci, group.n, group.positives)
                groups_rows.append(row)
    return gaps + groups_rows


def _descriptor_scores(loaded: LoadedModel, task: Task, images: EmbeddingOutput, seed: int, what: str) -> Any:
    loaded.require_text(what)
    if not task.descriptors:
        raise ValueError(f"task {task.name!r} runs {what} but names no descriptor set (descriptors:)")
    return evaluate_zeroshot(
        loaded.model, loaded.tokenizer, load_descriptors(task.descriptors), images, task.labels, bootstrap=0, seed=seed
    )


def _validated(
    loaded: LoadedModel, task: Task, options: dict, images: EmbeddingOutput, seed: int, bootstrap: int, rules: Any
) -> tuple[CalibrationReport, int, dict[str, Any]] | tuple[str, list[str]]:
    """The task's descriptor probabilities calibrated and thresholded on a patient-grouped
    validation fold (``fraction`` of the patients, seeded), reported on the rest; the fold's size;
    and the reported rows' labels and probabilities before and after (for reliability diagrams).
    Why not, where no finding could be calibrated on the fold."""
    evaluation = _descriptor_scores(loaded, task, images, seed, "calibration and operating points")
    names = evaluation.outputs[Method.DESCRIPTORS].finding_names
    probs = evaluation.outputs[Method.DESCRIPTORS].probabilities.numpy()
    patients = [str(m.get("patient_id") or key) for m, key in zip(images.meta, images.keys)]
    validated = validate_or_skip(
        evaluation.labels,
        probs,
        names,
        images.keys,
        patients,
        method=str(options.get("method", "platt")),
        fraction=float(options.get("fraction", VALIDATION_FRACTION)),
        seed=seed,
        bootstrap=bootstrap,
        rules=rules,
    )
    if isinstance(validated, str):
        return validated, list(names)
    test, kept = validated.reported_rows, list(validated.report.findings)
    columns = [names.index(name) for name in kept]
    after = np.stack([validated.calibration.apply(n, probs[test, c]) for n, c in zip(kept, columns)], 1)
    curves = {
        "keys": [images.keys[row] for row in test],
        "findings": kept,
        "labels": evaluation.labels[np.ix_(test, columns)].tolist(),
        "before": probs[np.ix_(test, columns)].tolist(),
        "after": after.tolist(),
        "not_calibrated": validated.skipped,
        "names": list(names),
    }
    return validated.report, validated.calibration.fold.n, curves


def calibration(
    loaded: LoadedModel, task: Task, options: dict, images: EmbeddingOutput, texts: Any, seed: int, bootstrap: int
) -> Rows | dict[str, Any]:
    """Zero-shot (descriptor) probabilities calibrated per finding (``method``: platt, the default,
    or temperature) on a patient-grouped validation fold (``fraction`` of the patients, 0.3),
    reported on the other patients: Brier score and expected calibration error (15 equal-width
    bins, count-weighted) before and after, with CIs. The headline is the mean Brier score after
    calibration (a proper score: a constant guess calibrates to an ECE near 0, not to a low Brier). Keeps
    the reported rows' probabilities before and after, for the reliability diagrams of the figures."""
    result = _validated(loaded, task, options, images, seed, bootstrap, rules=())
    if isinstance(result[0], str):  # the headline, undefined, says why
        return [{**_row("brier_after", NAN, n=len(images.keys)), "reason": result[0]}]
    report, fitted_on, curves = result
    rows = [
        _row(f"{measure}_{when}", value[when], ci[when], report.n)
        for measure, value, ci in (
            ("brier", report.mean_brier, report.mean_brier_ci),
            ("ece", report.mean_ece, report.mean_ece_ci),
        )
        for when in ("after", "before")
    ]
    for name, found in report.findings.items():
        for measure, value, ci in (("ece", found.ece, found.ece_ci), ("brier", found.brier, found.brier_ci)):
            for when in ("before", "after"):
                rows.append(_row(f"{measure}_{when}/{name}", value[when], ci[when], found.n, found.positives))
        for parameter, number in found.parameters.items():
            rows.append(_row(f"{parameter}/{name}", number, n=fitted_on))
    for name, reason in curves["not_calibrated"].items():  # listed, with why, never silently left out
        rows.append({**_row(f"brier_after/{name}", NAN, n=report.n), "reason": reason})
    return {"rows": rows, "scores": curves}


# Rules in the order the protocol reports them: the first, specificity while holding sensitivity at
# 0.90 on validation, is the headline (what a screening reader asks of a model).
OPERATING_RULES = ("sensitivity>=0.90", "sensitivity>=0.95", "specificity>=0.90", "youden")


def operating_points(
    loaded: LoadedModel, task: Task, options: dict, images: EmbeddingOutput, texts: Any, seed: int, bootstrap: int
) -> Rows:
    """Thresholds chosen by named rules (``rules``) on the calibrated probabilities of a
    patient-grouped validation fold, applied unchanged to the other patients and reported there:
    sensitivity, specificity, PPV and NPV with CIs, and the threshold. Per rule, the rate the rule
    does not fix comes first; the headline is the first rule's (specificity at sensitivity >= 0.90)."""
    rules = tuple(canonical_rule(rule) for rule in options.get("rules", OPERATING_RULES))
    result = _validated(loaded, task, options, images, seed, bootstrap, rules)
    if isinstance(result[0], str):  # every key a success would have, undefined, the first saying why
        reason, names = result
        return [
            {**_row(f"{rule}/{rate}/{name}", NAN, n=len(images.keys)), "reason": reason}
            for rule in rules
            for name in names
            for rate in _rates_in_order(rule)
        ]
    report, fitted_on, curves = result
    rows: Rows = []
    for rule in rules:
        for name in curves["names"]:  # every finding, in the set's order: the headline is the same key for all
            found = report.findings.get(name)
            if found is None:  # refused by the fit: listed with why
                reason = curves["not_calibrated"].get(name, "not calibrated")
                rows += [
                    {**_row(f"{rule}/{rate}/{name}", NAN, n=report.n), "reason": reason}
                    for rate in _rates_in_order(rule)
                ]
                continue
            output = next(o for o in found.points if o.point.rule == rule)
            for rate in _rates_in_order(rule):
                rows.append(
                    _row(
                        f"{rule}/{rate}/{name}", output.values[rate], output.intervals[rate], output.n, output.positives
                    )
                )
            rows.append(_row(f"{rule}/threshold/{name}", output.point.threshold, n=fitted_on))
    return rows


def _rates_in_order(rule: str) -> list[str]:
    """The rates a rule reports, the one it does not fix first (specificity under a sensitivity rule)."""
    fixed = rule.partition(">=")[0]
    return sorted(RATES, key=lambda rate: (rate == fixed, RATES.index(rate)))
