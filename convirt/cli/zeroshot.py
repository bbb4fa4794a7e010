"""``convirt zeroshot``: per-finding probabilities, explanations and AUROC on a labelled split; ``convirt probe``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from convirt.cli.common import add_checkpoint_arguments, add_input_arguments, eval_batches, load_model


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
    from convirt._io import write_json
    from convirt.data.inputs import parse_where
    from convirt.embeddings import embed_batches
    from convirt.models.features import TrunkEncoder
    from convirt.zeroshot.probe import probe_embedded

    loaded = load_model(args)
    where = parse_where(args.where)
    encoder = TrunkEncoder(loaded.model) if args.features == "trunk" else loaded.model
    embedded = embed_batches(encoder, eval_batches(loaded, args.data, args.split, args.batch_size, where=where,
                                                   table=args))
    about = {"data": args.data, "split": args.split, "where": where, "checkpoint": str(args.checkpoint),
             "features": args.features}
    metrics, outputs = probe_embedded(embedded, list(args.labels), args.fractions, args.probes, args.folds, args.k,
                                      args.seed, args.bootstrap, about=about)
    write_json(Path(args.output) / "metrics.json", metrics)
    print(f"{metrics['samples']} images, {metrics['patients']} patients, {args.folds} patient-grouped folds, "
          f"{args.features} features ({metrics['dim']}-d); AUROC [95% CI]")
    print(f"{'probe':<8} {'labels':>7} " + " ".join(f"{name:>22}" for name in args.labels))
    for output in outputs:
        cells = " ".join(f"{_with_ci(output.metrics['findings'][name], 'auroc'):>22}" for name in args.labels)
        print(f"{output.probe:<8} {output.fraction:>7.0%} {cells}")


def run(args: argparse.Namespace) -> None:
    from convirt.data.inputs import parse_where
    from convirt.embeddings import embed_batches
    from convirt.zeroshot import Method, ZeroShotClassifier, load_descriptors
    from convirt.zeroshot.evaluate import aligned_labels, evaluate_zeroshot, save_zeroshot_folder
    from convirt.zeroshot.plots import plot_explained_batch

    descriptors = load_descriptors(args.descriptors)
    loaded = load_model(args)
    where = parse_where(args.where)
    embedded = embed_batches(loaded.model, eval_batches(loaded, args.data, args.split, args.batch_size, where=where,
                                                        table=args))
    aligned_labels(embedded.meta, descriptors.finding_names, args.labels)  # a mismatch fails before more work
    tuning = embed_batches(loaded.model, eval_batches(loaded, args.data, args.threshold_split, args.batch_size,
                                                      where=where, table=args), progress=False) \
        if args.threshold_split else None
    about = {"data": args.data, "split": args.split, "where": where, "checkpoint": str(args.checkpoint)}
    evaluation = evaluate_zeroshot(loaded.model, loaded.tokenizer, descriptors, embedded, args.labels, tuning,
                                   f"youden on split {args.threshold_split}", args.bootstrap, args.seed, about)
    out = save_zeroshot_folder(evaluation, args.output)
    if args.figures > 0:
        batch = next(iter(eval_batches(loaded, args.data, args.split, args.figures, where=where, table=args)))
        plot_explained_batch(batch, ZeroShotClassifier(loaded.model, loaded.tokenizer, descriptors), out / "figures")
    metrics, labels, names = evaluation.metrics, evaluation.labels, descriptors.finding_names
    methods = [method.value for method in Method]
    print(f"AUROC [95% CI], {len(labels)} images")
    print(f"{'finding':<20} {'positives':>9} " + " ".join(f"{m:>22}" for m in methods))
    for i, name in enumerate(names):
        cells = " ".join(f"{_with_ci(metrics[m]['findings'][name], 'auroc'):>22}" for m in methods)
        print(f"{name:<20} {(labels[:, i] == 1).sum():>9} {cells}")
    print(f"{'mean AUROC':<20} {'':>9} " + " ".join(f"{_fmt(metrics[m]['mean_auroc']):>22}" for m in methods))


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) and value == value else "n/a"


def _with_ci(values: dict[str, Any], key: str) -> str:
    low, high = values[f"{key}_ci"]
    return f"{_fmt(values[key])} [{_fmt(low)}, {_fmt(high)}]" if low == low else _fmt(values[key])
