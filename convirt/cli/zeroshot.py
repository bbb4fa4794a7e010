"""``convirt zeroshot``: per-finding probabilities, explanations and AUROC on a labelled split."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convirt.cli.common import add_checkpoint_arguments, add_input_arguments, load_model

if TYPE_CHECKING:
    import numpy as np

    from convirt.zeroshot import ZeroShotOutput




def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("zeroshot", help="zero-shot diagnosis with descriptor prompts, scored on labels")
    add_checkpoint_arguments(parser)
    parser.add_argument("--descriptors", default="phantom", help="shipped set name or YAML path")
    add_input_arguments(parser)
    parser.add_argument("--labels", nargs="+", metavar="NAME",
                        help="the label names to score (default: every label in the data); each must be a "
                             "descriptor finding")
    parser.add_argument("--threshold-split", help="shard split whose Youden's J picks the F1/sensitivity/specificity "
                                                  "threshold (default: Youden's J on the evaluated data itself)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for the 95%% CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--figures", type=int, default=0, metavar="N",
                        help="also draw, for the first N images, the observation bar chart and the Grad-CAM map "
                             "of each finding (figures/KEY.png)")
    parser.add_argument("--output", required=True, help="folder for predictions.csv, explanations.jsonl, "
                                                         "metrics.json, roc.png")
    parser.set_defaults(run=run)

    probe = sub.add_parser("probe", help="linear and kNN probes on frozen image embeddings (1/10/100%% labels, "
                                         "patient-grouped folds)")
    add_checkpoint_arguments(probe)
    add_input_arguments(probe)
    probe.add_argument("--labels", nargs="+", required=True, metavar="NAME", help="label names to probe")
    probe.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0],
                       help="shares of each fold's training labels")
    probe.add_argument("--probes", nargs="+", default=["linear", "knn"], choices=["linear", "knn"])
    probe.add_argument("--folds", type=int, default=5)
    probe.add_argument("--features", default="trunk", choices=["trunk", "embedding"],
                       help="image features probed: the image trunk's pooled output, projection head removed (the "
                            "ConVIRT / GLoRIA protocol; default), or the joint embedding")
    probe.add_argument("-k", type=int, default=10, help="neighbours of the kNN probe")
    probe.add_argument("--bootstrap", type=int, default=1000)
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--output", required=True, help="folder for metrics.json")
    probe.set_defaults(run=run_probe)


def run_probe(args: argparse.Namespace) -> None:
    from convirt.cli.common import eval_batches, write_json
    from convirt.data.inputs import parse_where
    from convirt.embeddings import embed_batches
    from convirt.models.features import TrunkEncoder
    from convirt.zeroshot.probe import run_probes

    loaded = load_model(args)
    where = parse_where(args.where)
    encoder = TrunkEncoder(loaded.model) if args.features == "trunk" else loaded.model
    embedded = embed_batches(encoder, eval_batches(loaded, args.data, args.split, args.batch_size, where=where,
                                                   table=args))
    labels = aligned_labels(embedded.meta, list(args.labels), args.labels)
    if (labels < 0).any():
        raise ValueError("probes need every label decided: use --uncertain zeros or ones, not ignore")
    groups = [str(meta.get("patient_id") or key) for meta, key in zip(embedded.meta, embedded.keys)]
    outputs = run_probes(embedded.embeddings, labels, groups, args.labels, args.fractions, args.probes, args.folds,
                         args.k, args.seed, args.bootstrap)
    result = {"data": args.data, "split": args.split, "where": where, "checkpoint": str(args.checkpoint),
              "samples": len(labels), "skipped_samples": embedded.skipped,
              "patients": len(set(groups)), "folds": args.folds, "seed": args.seed,
              "features": args.features, "dim": int(embedded.embeddings.shape[1]),
              "probes": [{"probe": o.probe, "fraction": o.fraction, **o.metrics} for o in outputs]}
    write_json(Path(args.output) / "metrics.json", result)
    print(f"{len(labels)} images, {len(set(groups))} patients, {args.folds} patient-grouped folds, "
          f"{args.features} features ({embedded.embeddings.shape[1]}-d); AUROC [95% CI]")
    print(f"{'probe':<8} {'labels':>7} " + " ".join(f"{name:>22}" for name in args.labels))
    for output in outputs:
        cells = " ".join(f"{_with_ci(output.metrics['findings'][name], 'auroc'):>22}" for name in args.labels)
        print(f"{output.probe:<8} {output.fraction:>7.0%} {cells}")


def aligned_labels(metas: list[dict], finding_names: list[str], selected: list[str] | None,
                   require_all: bool = True) -> np.ndarray:
    """``(N, F)`` 0/1 labels of the descriptor findings, checked against the data's label names;
    ``-1`` where a finding is uncertain and left out (CheXpert under ``--uncertain ignore``).

    Raises:
        ValueError: A selected label is not a descriptor finding, or a descriptor finding never
            appears in the labels; the message lists both name sets.
    """
    import numpy as np

    from convirt.data.schema import NO_FINDING

    label_sets = [{str(label) for label in meta.get("labels", [])} for meta in metas]
    unsure = [set(meta.get("uncertain", [])) for meta in metas]
    present = set().union(*label_sets, *unsure)
    # "No Finding" is the absence of findings unless the descriptors score it as a class (CheXpert).
    wanted = set(selected) if selected else present - {"", *({NO_FINDING} - set(finding_names))}
    both = f"descriptor findings: {sorted(finding_names)}; labels in the data: {sorted(present) or 'none'}"
    if not_described := sorted(wanted - set(finding_names)):
        raise ValueError(f"labels without a descriptor finding: {not_described} (choose with --labels); {both}")
    if require_all and (missing := sorted(set(finding_names) - present)):
        raise ValueError(f"descriptor findings missing from the labels: {missing}; {both}")
    return np.array([[-1 if name in doubt else int(name in labels) for name in finding_names]
                     for labels, doubt in zip(label_sets, unsure)], dtype=int)


def run(args: argparse.Namespace) -> None:
    import torch

    from convirt.cli.common import eval_batches, write_json
    from convirt.data.inputs import parse_where
    from convirt.embeddings import embed_batches
    from convirt.zeroshot import Method, ZeroShotClassifier, load_descriptors
    from convirt.zeroshot.metrics import evaluate_findings, youden_threshold
    from convirt.zeroshot.plots import plot_roc

    descriptors = load_descriptors(args.descriptors)
    loaded = load_model(args)
    where = parse_where(args.where)
    embedded = embed_batches(loaded.model, eval_batches(loaded, args.data, args.split, args.batch_size, where=where,
                                                            table=args))
    names = descriptors.finding_names
    labels = aligned_labels(embedded.meta, names, args.labels)
    classifiers = {method: ZeroShotClassifier(loaded.model, loaded.tokenizer, descriptors, method)
                   for method in Method}
    thresholds: dict[Method, list[float] | None] = {method: None for method in Method}
    if args.threshold_split:
        tuning = embed_batches(loaded.model, eval_batches(loaded, args.data, args.threshold_split, args.batch_size,
                                                          where=where, table=args), progress=False)
        # A small validation split may lack a finding: its threshold is then NaN, not an error.
        tuning_labels = aligned_labels(tuning.meta, names, args.labels, require_all=False)
        for method, classifier in classifiers.items():
            probs = classifier.predict_features(torch.from_numpy(tuning.embeddings)).probabilities.numpy()
            thresholds[method] = [youden_threshold(tuning_labels[tuning_labels[:, i] >= 0, i],
                                                   probs[tuning_labels[:, i] >= 0, i]) for i in range(len(names))]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"data": args.data, "split": args.split, "where": where, "samples": len(labels),
                               "skipped_samples": embedded.skipped,
                               "descriptors": descriptors.name, "checkpoint": str(args.checkpoint),
                               "positives": {n: int((labels[:, i] == 1).sum()) for i, n in enumerate(names)},
                               "bootstrap": args.bootstrap, "seed": args.seed}
    results = {}
    features = torch.from_numpy(embedded.embeddings)
    for method, classifier in classifiers.items():
        results[method] = classifier.predict_features(features)
        source = f"youden on split {args.threshold_split}" if args.threshold_split else ""
        evaluated = evaluate_findings(labels, results[method].probabilities.numpy(), names, thresholds[method],
                                      source, bootstrap=args.bootstrap, seed=args.seed)
        metrics[method.value] = {**evaluated, "auroc": {n: m["auroc"] for n, m in evaluated["findings"].items()},
                                 "mean_auroc": evaluated["mean"]["auroc"]}
    _write_predictions(out / "predictions.csv", embedded.keys, names, labels,
                       results[Method.DESCRIPTORS].probabilities.numpy())
    _write_explanations(out / "explanations.jsonl", embedded.keys, results[Method.DESCRIPTORS])
    write_json(out / "metrics.json", metrics)
    plot_roc(labels, {m.value: results[m].probabilities.numpy() for m in Method}, names, out / "roc.png")
    if args.figures > 0:
        batches = eval_batches(loaded, args.data, args.split, args.figures, where=where, table=args)
        _draw_figures(next(iter(batches)), classifiers[Method.DESCRIPTORS], out / "figures")
    methods = [method.value for method in Method]
    print(f"AUROC [95% CI], {len(labels)} images")
    print(f"{'finding':<20} {'positives':>9} " + " ".join(f"{m:>22}" for m in methods))
    for i, name in enumerate(names):
        cells = " ".join(f"{_with_ci(metrics[m]['findings'][name], 'auroc'):>22}" for m in methods)
        print(f"{name:<20} {(labels[:, i] == 1).sum():>9} {cells}")
    print(f"{'mean AUROC':<20} {'':>9} " + " ".join(f"{_fmt(metrics[m]['mean_auroc']):>22}" for m in methods))


def _draw_figures(batch: dict[str, Any], classifier: Any, folder: Path) -> None:
    """Per image: observation probabilities beside the Grad-CAM map of each finding."""
    import matplotlib.pyplot as plt

    from convirt.zeroshot.plots import plot_observations, plot_saliency

    folder.mkdir(parents=True, exist_ok=True)
    output = classifier.predict(batch["image"])
    names = output.finding_names
    for row, key in enumerate(batch["key"]):
        probabilities = {name: float(output.probabilities[row, i]) for i, name in enumerate(names)}
        explanation = {name: {obs: float(output.observation_probabilities[row, j])
                              for j, (owner, obs) in enumerate(output.observations) if owner == name}
                       for name in names}
        labels = "; ".join(batch["meta"][row].get("labels", [])) or "no labels"
        plot_observations(probabilities, explanation, folder / f"{key}-observations.png", title=f"{key}: {labels}")
        grey = batch["image"][row][0].numpy()
        figure, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3.3), squeeze=False)
        for axis, name in zip(axes[0], names):
            heatmap = classifier.saliency(batch["image"][row], name).numpy()
            plot_saliency(grey, heatmap, title=f"{name} {probabilities[name]:.2f}", axis=axis)
        figure.tight_layout()
        figure.savefig(folder / f"{key}-saliency.png", dpi=100)
        plt.close("all")


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) and value == value else "n/a"


def _with_ci(values: dict[str, Any], key: str) -> str:
    low, high = values[f"{key}_ci"]
    return f"{_fmt(values[key])} [{_fmt(low)}, {_fmt(high)}]" if low == low else _fmt(values[key])


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
