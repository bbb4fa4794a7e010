"""``convirt report``: the demo's results table and ``metrics.json`` from the stage outputs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from convirt._hardware import cpu_info
from convirt._io import write_json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="merge zero-shot and retrieval metrics into one table and JSON")
    parser.add_argument(
        "--zeroshot", required=True, help="the output folder of `convirt zeroshot` (or its metrics.json)"
    )
    parser.add_argument("--retrieval", required=True, help="JSON of `convirt index eval --output`")
    parser.add_argument(
        "--checkpoint", help="the evaluated checkpoint: its training precision and machine are recorded too"
    )
    parser.add_argument("--timings", help="stage wall times, one 'stage<TAB>seconds' line each (the demo writes one)")
    parser.add_argument("--output", required=True, help="metrics.json to write")
    parser.set_defaults(run=run)


def _load(path: str) -> dict:
    if Path(path).is_dir():  # an output folder: the metrics.json its command wrote
        path = str(Path(path) / "metrics.json")
    if not Path(path).is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_timings(path: str) -> dict[str, float]:
    """Stage wall times from ``stage<TAB>seconds`` lines (a stage named twice adds up)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"timings file not found: {path}")
    stages: dict[str, float] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        name, _, seconds = line.rpartition("\t")
        try:
            stages[name] = stages.get(name, 0.0) + float(seconds)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'stage<TAB>seconds', got {line!r}") from None
    return stages


def run(args: argparse.Namespace) -> None:
    zeroshot, retrieval = _load(args.zeroshot), _load(args.retrieval)
    metrics = {
        "zeroshot": {
            "mean_auroc": zeroshot["descriptors"]["mean_auroc"],
            "per_finding_auroc": zeroshot["descriptors"]["auroc"],
            "names_mean_auroc": zeroshot["names"]["mean_auroc"],
            "names_per_finding_auroc": zeroshot["names"]["auroc"],
            "samples": zeroshot["samples"],
            "positives": zeroshot["positives"],
        },
        "retrieval": retrieval,
        "machine": cpu_info().as_dict(),
    }
    if args.checkpoint:
        from convirt.models.checkpoint import read_run

        metrics["training"] = read_run(args.checkpoint)
    if args.timings:
        metrics["stage_seconds"] = read_timings(args.timings)
    write_json(args.output, metrics)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "n/a"
    print("\n| finding | positives | AUROC (descriptors) | AUROC (finding name) |\n|---|---|---|---|")
    for name, value in zeroshot["descriptors"]["auroc"].items():
        print(f"| {name} | {zeroshot['positives'][name]} | {fmt(value)} | {fmt(zeroshot['names']['auroc'][name])} |")
    summary = metrics["zeroshot"]
    print(f"| **mean** | | **{fmt(summary['mean_auroc'])}** | {fmt(summary['names_mean_auroc'])} |")
    excluded = "same patient excluded" if retrieval.get("same_patient_excluded", True) else "self excluded"
    for key in [k for k in retrieval if k.startswith(("precision_at_", "map_at_", "recall_at_"))]:
        print(
            f"\nretrieval {key.replace('_', ' ')} (finding set equal, {excluded}): {fmt(retrieval[key])} "
            f"over {retrieval['queries']} queries",
            end="",
        )
    print()
    for direction, values in retrieval.get("image_text", {}).items():
        if isinstance(values, dict):
            cells = "  ".join(f"R@{name.rsplit('_', 1)[1]} {fmt(v)}" for name, v in values.items())
            print(f"{direction.replace('_', ' ')}: {cells}")
    training = metrics.get("training") or {}
    machine = metrics["machine"]
    print(
        f"\nmachine: {machine['model']} (capability {machine['capability']}, native bf16: "
        f"{'yes' if machine['native_bf16'] else 'no'}); trained with precision {training.get('precision', 'n/a')}"
    )
    if "stage_seconds" in metrics:
        stages = metrics["stage_seconds"]
        print("wall time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items()))
    print(f"\nwrote {args.output}")
