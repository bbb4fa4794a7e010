"""``convirt zeroshot``: per-finding probabilities, explanations and AUROC on a labelled split."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

from convirt.cli.common import add_input_arguments

if TYPE_CHECKING:
    import numpy as np

    from convirt.zeroshot import ZeroShotOutput




def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("zeroshot", help="zero-shot diagnosis with descriptor prompts, scored on labels")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--descriptors", default="phantom", help="shipped set name or YAML path")
    add_input_arguments(parser)
    parser.add_argument("--output", required=True, help="folder for predictions.csv, explanations.jsonl, "
                                                         "metrics.json")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from convirt.cli.common import eval_batches, write_json
    from convirt.data.inputs import parse_where
    from convirt.data.schema import finding_set
    from convirt.embeddings import embed_batches
    from convirt.models import load_checkpoint
    from convirt.zeroshot import Method, ZeroShotClassifier, load_descriptors
    from convirt.zeroshot.metrics import mean_defined, per_finding_auroc

    descriptors = load_descriptors(args.descriptors)
    loaded = load_checkpoint(args.checkpoint)
    embedded = embed_batches(loaded.model, eval_batches(loaded, args.data, args.split, args.batch_size,
                                                            where=parse_where(args.where)))
    names = descriptors.finding_names
    label_sets = [finding_set(meta.get("labels", [])) for meta in embedded.meta]
    present = set().union(*label_sets)
    if not present & set(names):
        raise ValueError(f"no descriptor finding appears in the labels of {args.data} ({args.split}); "
                         f"descriptor findings: {sorted(names)}; labels: {sorted(present) or 'none'}")
    labels = np.array([[name in s for name in names] for s in label_sets], dtype=int)
    features = torch.from_numpy(embedded.embeddings)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, object] = {"split": args.split, "samples": len(label_sets), "descriptors": descriptors.name,
                                  "positives": {n: int(labels[:, i].sum()) for i, n in enumerate(names)}}
    results = {}
    for method in Method:
        output = ZeroShotClassifier(loaded.model, loaded.tokenizer, descriptors, method).predict_features(features)
        results[method] = output
        per_finding = per_finding_auroc(labels, output.probabilities.numpy(), names)
        metrics[method.value] = {"auroc": per_finding, "mean_auroc": mean_defined(per_finding)}
    _write_predictions(out / "predictions.csv", embedded.keys, names, labels,
                       results[Method.DESCRIPTORS].probabilities.numpy())
    _write_explanations(out / "explanations.jsonl", embedded.keys, results[Method.DESCRIPTORS])
    write_json(out / "metrics.json", metrics)
    methods = [method.value for method in Method]
    print(f"{'finding':<20} {'positives':>9} " + " ".join(f"{m:>12}" for m in methods))
    for i, name in enumerate(names):
        cells = " ".join(f"{_fmt(metrics[m]['auroc'][name]):>12}" for m in methods)  # type: ignore[index]
        print(f"{name:<20} {labels[:, i].sum():>9} {cells}")
    print(f"{'mean AUROC':<20} {'':>9} " + " ".join(f"{_fmt(metrics[m]['mean_auroc']):>12}"  # type: ignore[index]
                                                  for m in methods))


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


def _write_predictions(path: Path, keys: list[str], names: list[str], labels: np.ndarray, probs: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", *[f"p_{n}" for n in names], *[f"label_{n}" for n in names]])
        for key, p, y in zip(keys, probs, labels):
            writer.writerow([key, *[f"{v:.5f}" for v in p], *y.tolist()])


def _write_explanations(path: Path, keys: list[str], output: ZeroShotOutput) -> None:
    obs_probs, observations = output.observation_probabilities, output.observations
    probs, names = output.probabilities, output.finding_names
    assert obs_probs is not None, "explanations come from the descriptor method"
    with open(path, "w", encoding="utf-8") as handle:
        for row, key in enumerate(keys):
            record = {
                "key": key,
                "findings": {
                    name: {
                        "probability": round(float(probs[row, i]), 5),
                        "observations": {obs: round(float(obs_probs[row, j]), 5)
                                         for j, (owner, obs) in enumerate(observations) if owner == name},
                    }
                    for i, name in enumerate(names)
                },
            }
            handle.write(json.dumps(record) + "\n")
