"""``convirt probe``: linear and kNN probes on frozen image features, folds grouped by patient."""

from __future__ import annotations

import argparse
from pathlib import Path

from convirt.cli.common import add_checkpoint_arguments, add_input_arguments, eval_batches, model_from_args, with_ci


def add_parsers(sub: argparse._SubParsersAction) -> None:
    probe = sub.add_parser(
        "probe", help="linear and kNN probes on frozen image embeddings (1/10/100%% labels, patient-grouped folds)"
    )
    add_checkpoint_arguments(probe)
    add_input_arguments(probe)
    probe.add_argument("--labels", nargs="+", required=True, metavar="NAME", help="label names to probe")
    probe.add_argument(
        "--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0], help="shares of each fold's training labels"
    )
    probe.add_argument("--probes", nargs="+", default=["linear", "knn"], choices=["linear", "knn"])
    probe.add_argument("--folds", type=int, default=5)
    probe.add_argument(
        "--features",
        default="trunk",
        choices=["trunk", "embedding"],
        help="image features probed: the image trunk's pooled output, projection head removed (the "
        "ConVIRT / GLoRIA protocol; default), or the joint embedding",
    )
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

    loaded = model_from_args(args)
    where = parse_where(args.where)
    encoder = TrunkEncoder(loaded.model) if args.features == "trunk" else loaded.model
    embedded = embed_batches(
        encoder, eval_batches(loaded, args.data, args.split, args.batch_size, where=where, table=args)
    )
    about = {
        "data": args.data,
        "split": args.split,
        "where": where,
        "model": str(args.model),
        "features": args.features,
    }
    metrics, outputs = probe_embedded(
        embedded,
        list(args.labels),
        args.fractions,
        args.probes,
        args.folds,
        args.k,
        args.seed,
        args.bootstrap,
        about=about,
    )
    write_json(Path(args.output) / "metrics.json", metrics)
    print(
        f"{metrics['samples']} images, {metrics['patients']} patients, {args.folds} patient-grouped folds, "
        f"{args.features} features ({metrics['dim']}-d); AUROC [95% CI]"
    )
    print(f"{'probe':<8} {'labels':>7} " + " ".join(f"{name:>22}" for name in args.labels))
    for output in outputs:
        cells = " ".join(f"{with_ci(output.metrics['findings'][name], 'auroc'):>22}" for name in args.labels)
        print(f"{output.probe:<8} {output.fraction:>7.0%} {cells}")
