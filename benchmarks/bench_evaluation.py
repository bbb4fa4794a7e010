"""Calibration, operating points and subgroups on nih-pneumonia for the six models of the shared bench.

The models are `bench_shared.py`'s (random init, the pretrained towers untrained, the covid-pairs
recipe at seeds 0, 1 and 2, the demo model), made or reused the same way. One `convirt bench` runs
the shared suite's nih-pneumonia task with its zero-shot, ``calibration``, ``operating_points``
and ``subgroups`` protocols as the suite declares them (fitted and chosen on 30% of the patients,
seeded, reported on the other 70%; subgroups by sex, age band and view). Writes the
``bench-evaluation`` section of BENCHMARKS.md. `python benchmarks/bench_evaluation.py`: about 30 min
on 2 idle CPU cores when the recipe checkpoints must be trained, a few minutes when they are there.
`--quick` checks the script end to end (1-epoch trainings, one recipe seed, 50 replicates) and writes
its section to `--output` as given (use a scratch file).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml
from _markdown import commit, machine_line, trained_precisions, write_section
from _process import convirt
from _recipe import ROOT
from bench_shared import shared_models

from convirt.bench.leaderboard import format_cell
from convirt.bench.runner import model_label
from convirt.bench.suite import SUITES

SECTION = "bench-evaluation"
TASK = "nih-pneumonia"
PROTOCOLS = ("zeroshot", "calibration", "operating_points", "subgroups")
RULES = ("sensitivity>=0.90", "sensitivity>=0.95", "specificity>=0.90", "youden")
FINDING = "Pneumonia"


def suite(work: Path, method: str | None = None) -> Path:
    """The shared suite's nih-pneumonia task with only the protocols measured here, as declared
    there; with ``method``, only its calibration by that method instead."""
    spec = yaml.safe_load((SUITES / "shared.yaml").read_text(encoding="utf-8"))
    task = next(t for t in spec["tasks"] if t["name"] == TASK)
    if method is None:
        task["protocols"] = {name: task["protocols"][name] for name in PROTOCOLS}
    else:
        task["protocols"] = {"calibration": {**task["protocols"]["calibration"], "method": method}}
    spec["tasks"] = [task]
    path = work / f"nih-evaluation{'-' + method if method else ''}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def cell(rows: dict[str, dict], metric: str) -> str:
    return format_cell(rows.get(metric))


def _keyed(rows: list[dict], names: dict[str, str]) -> dict[str, dict[str, dict]]:
    by_model: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_model.setdefault(names.get(row["model"], row["model"]), {})[f"{row['protocol']}:{row['metric']}"] = row
    return by_model


def band_order(group: str) -> tuple[float, str]:
    """Age bands in age order (``<40`` first, ``>=80`` last); other groups by name."""
    if group.startswith("<"):
        return (float("-inf"), group)
    if group.startswith(">="):
        return (float("inf"), group)
    head = group.split("-")[0]
    return (float(head), group) if head.replace(".", "").isdigit() else (0.0, group)


def tables(rows: list[dict], temperature_rows: list[dict], names: dict[str, str], options: dict) -> list[str]:
    by_model, by_temperature = _keyed(rows, names), _keyed(temperature_rows, names)
    models = list(dict.fromkeys(names.values()))
    lines = [
        "Calibration of the descriptor probability per finding, fitted on the validation patients: Platt scaling "
        "(the default: slope a and intercept b on the logit) and temperature scaling (one T, no intercept). Brier "
        "score and expected calibration error (15 equal-width bins on [0, 1], count-weighted) on the test patients, "
        "before and after; lower is better. n/a after: the fit was refused (scores falling as the finding becomes "
        "likelier, or a temperature at the search bound), so nothing is calibrated.",
        "",
        "| model | zero-shot AUROC (all images) | Brier before | Brier after, Platt | Brier after, temperature "
        "| ECE before | ECE after, Platt | ECE after, temperature | Platt a, b | T |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for model in models:
        found, warm = by_model.get(model, {}), by_temperature.get(model, {})
        slope, intercept = found.get(f"calibration:a/{FINDING}"), found.get(f"calibration:b/{FINDING}")
        platt = "n/a" if slope is None else f"{slope['value']:.2f}, {intercept['value']:.2f}"
        cells = [
            cell(found, "zeroshot:descriptors/mean_auroc"),
            cell(found, f"calibration:brier_before/{FINDING}"),
            cell(found, f"calibration:brier_after/{FINDING}"),
            cell(warm, f"calibration:brier_after/{FINDING}"),
            cell(found, f"calibration:ece_before/{FINDING}"),
            cell(found, f"calibration:ece_after/{FINDING}"),
            cell(warm, f"calibration:ece_after/{FINDING}"),
            platt,
            cell(warm, f"calibration:temperature/{FINDING}"),
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    for label, keyed in (("Platt", by_model), ("temperature", by_temperature)):
        for model in models:
            refused = [
                row["reason"]
                for key, row in keyed.get(model, {}).items()
                if key.startswith("calibration:") and row.get("reason")
            ]
            if refused:
                lines += ["", f"{model}, {label}: not calibrated: {refused[0]}"]
    lines += [
        "",
        "Operating points: each rule's threshold chosen on the validation patients' calibrated probabilities, "
        "applied unchanged to the test patients and reported there (95% CIs resample positives and negatives "
        "separately). A sensitivity rule met on validation need not hold on test: that gap is what this shows.",
        "",
        "| model | rule | threshold | sensitivity | specificity | PPV | NPV |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model in models:
        found = by_model.get(model, {})
        for rule in RULES:
            threshold = found.get(f"operating_points:{rule}/threshold/{FINDING}")
            value = "n/a" if threshold is None or threshold["value"] is None else f"{threshold['value']:.3f}"
            rates = [
                cell(found, f"operating_points:{rule}/{rate}/{FINDING}")
                for rate in ("sensitivity", "specificity", "ppv", "npv")
            ]
            lines.append(f"| {model} | {rule} | {value} | " + " | ".join(rates) + " |")
    minimum, positives = options.get("min_size", 30), options.get("min_positives", 5)
    lines += [
        "",
        f"Subgroups: zero-shot (descriptor) AUROC per group, n images / positives under each; groups under "
        f"{minimum} images or {positives} positives (or negatives) are listed without a value. All the task's "
        "images (nothing is fitted). Gap: best minus worst scored group; its interval is a normal one with the "
        "bootstrap standard error (each replicate resamples both groups within each class) at 95% "
        "Bonferroni-adjusted for the pairs the two were chosen among (95% for two scored groups, 98.3% for "
        "three), so that alike groups rarely give an interval excluding 0. Bootstraps resample images, not "
        "patients.",
    ]
    for column in options.get("columns", ["sex", "age_band", "view"]):
        groups = sorted(
            {
                key.split("/")[1]
                for found in by_model.values()
                for key in found
                if key.startswith(f"subgroups:{column}/")
            }
            - {"gap", "worst"},
            key=band_order,
        )
        lines += [
            "",
            f"**by {column}**",
            "",
            "| model | " + " | ".join(groups) + " | gap (worst group) |",
            "|---|" + "---:|" * (len(groups) + 1),
        ]
        for model in models:
            found = by_model.get(model, {})
            cells = []
            for group in groups:
                row = found.get(f"subgroups:{column}/{group}/auroc/{FINDING}")
                counts = "" if row is None else f" ({row['n']}/{row.get('positives', '?')})"
                cells.append(format_cell(row) + counts)
            worst = found.get(f"subgroups:{column}/worst/{FINDING}")
            named = f" ({worst['group']})" if worst is not None and worst.get("group") else ""
            cells.append(cell(found, f"subgroups:{column}/gap/{FINDING}") + named)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    found = shared_models(__doc__)
    if found is None:
        return
    args, models, bootstrap = found
    work = Path(args.work)
    out = work / "evaluation"
    # Results are recomputed every run; the embeddings (keyed by the weights and the data) are reused.
    for stale in ("results", "results.jsonl"):
        shutil.rmtree(out / stale, ignore_errors=True) if (out / stale).is_dir() else (out / stale).unlink(
            missing_ok=True
        )
    path = suite(work)
    command = ["bench", "--suite", str(path), "--data-root", str(ROOT), "--output", str(out), "--no-audit"]
    for source in models.values():
        command += ["--model", source]
    start = time.perf_counter()
    convirt(*command, "--bootstrap", str(bootstrap))
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    # The same calibration by temperature scaling, in the same folder: the embeddings are cached there.
    again = ["bench", "--suite", str(suite(work, "temperature")), "--data-root", str(ROOT), "--output", str(out)]
    for source in models.values():
        again += ["--model", source]
    convirt(*again, "--no-audit", "--bootstrap", str(bootstrap))
    temperature_rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    names = {model_label(source): name for name, source in models.items()}
    options = yaml.safe_load(path.read_text(encoding="utf-8"))["tasks"][0]["protocols"]["subgroups"]
    n = next((r["n"] for r in rows if r["protocol"] == "zeroshot"), 0)
    trained = [Path(s) for s in models.values() if s.endswith(".ckpt")]
    lines = [
        f"## Evaluation a clinician can trust: calibration, operating points and subgroups on {TASK}",
        "",
        f"{machine_line('float32 embeddings')}; models trained with precision {trained_precisions(trained)}; "
        f"commit {commit()}"
        + (" (a --quick check: 1-epoch trainings, 50 replicates; not a result)" if args.quick else ""),
        "",
        f"Command: `python benchmarks/bench_evaluation.py` (one `convirt bench` of the shared suite's {TASK} task "
        f"with the protocols {', '.join(PROTOCOLS)} as the suite declares them, {bootstrap} bootstrap replicates; "
        f"{seconds / 60:.1f} min for the six models; then the calibration alone by temperature scaling). {n} NIH "
        "images; the validation side is 30% of the patients (seeded, patient-grouped), the test side the other "
        "70%: calibration and operating points are fitted and chosen on the validation side and reported on the "
        "test side only; the zero-shot AUROC and the subgroups (nothing fitted) are on all images.",
        "",
        *tables(rows, temperature_rows, names, options),
    ]
    write_section(Path(args.output), SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
