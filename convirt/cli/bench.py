"""``convirt bench``: a suite of evaluation tasks over any models -> results, leaderboard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from convirt.models.sources import describe_sources

    bench = sub.add_parser("bench", help="run an evaluation suite over any models and write a leaderboard")
    bench.add_argument("--suite", required=True, help="a shipped suite (phantom, ...) or a suite YAML file")
    bench.add_argument(
        "--model", action="append", required=True, metavar="SOURCE", help=f"a model (repeatable): {describe_sources()}"
    )
    bench.add_argument("--output", required=True, help="bench folder (results, cached embeddings, leaderboard)")
    bench.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the seeded protocols (probes)")
    bench.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates of every 95%% CI")
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--accelerator", default="auto", help="where images are embedded: auto, cpu or gpu")
    bench.add_argument(
        "--precision",
        default="float32",
        help="of the embeddings: float32 (the same numbers on every machine, as `convirt zeroshot` gives), "
        "auto (the embedding policy: a reduced precision on a GPU only where it agrees with float32), bfloat16",
    )
    bench.add_argument("--data-root", default=".", help="the folder the suite's data paths are relative to")
    bench.add_argument(
        "--train-shards",
        help="leakage audit: the shard folder the models were trained on (default: each fit checkpoint's own)",
    )
    bench.add_argument(
        "--exclude-leaked",
        action="store_true",
        help="leave test images found in a model's training shards out of its other protocols",
    )
    bench.add_argument(
        "--no-audit",
        dest="audit",
        action="store_false",
        help="skip the leakage audit, even of a checkpoint that records its training shards",
    )
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from functools import partial

    from convirt.bench.runner import run_bench
    from convirt.bench.suite import load_suite
    from convirt.data.foreign import describe_input
    from convirt.embeddings.run import embed_to_folder
    from convirt.training.finetune import FinetuneSettings, finetune_predict
    from convirt.training.predict import encode_on_devices

    suite = load_suite(args.suite, args.data_root)
    for each in suite.tasks:  # what was inferred of shards without a manifest, said once per task
        line = describe_input(each.location, each.split, each.input_options().get("fields")) if each.available else None
        if line:
            print(f"convirt: task {each.name}: {line}", file=sys.stderr)
    # One process on the accelerator (`convirt embed --devices N` embeds at scale into folders of the same format).
    embed = partial(embed_to_folder, encode_all=partial(encode_on_devices, accelerator=args.accelerator, devices=1))

    def finetune(loaded, train, val, test, names, seed, options):  # type: ignore[no-untyped-def]
        settings = FinetuneSettings(**options, accelerator=args.accelerator)
        return finetune_predict(loaded, train, val, test, names, seed, settings)

    result = run_bench(
        suite,
        args.model,
        args.output,
        embed,
        tuple(args.seeds),
        args.bootstrap,
        args.batch_size,
        args.precision,
        args.train_shards,
        args.exclude_leaked,
        finetune,
        args.audit,
    )
    for model, task, protocol, reason in result.skipped:
        print(f"skipped {model} / {task}{' / ' + protocol if protocol else ''}: {reason}")
    print(
        f"{len(result.computed)} results computed, {len(result.embedded)} embedding folders made "
        f"(the rest reused from {args.output})\n"
    )
    print(Path(args.output, "leaderboard.md").read_text(encoding="utf-8"))
