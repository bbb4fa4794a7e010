"""``convirt phantom`` and ``convirt shards``."""

from __future__ import annotations

import argparse
import shlex
import sys

from convirt.data.sources import list_sources  # light: the readers import nothing heavy


def add_parsers(sub: argparse._SubParsersAction) -> None:
    phantom = sub.add_parser("phantom", help="write synthetic chest radiographs with reports (the demo data)")
    phantom.add_argument("--output", required=True, help="folder for images/ and rows.csv")
    phantom.add_argument("--num-samples", type=int, default=2000)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--size", type=int, default=256, help="image side in pixels")
    phantom.add_argument("--workers", type=int, default=2, help="image drawing processes")
    phantom.set_defaults(run=run_phantom)

    shards = sub.add_parser("shards", help="convert an archive into WebDataset shards with a manifest")
    shards.add_argument("--source", default="csv", help=f"archive reader: {', '.join(list_sources())}")
    shards.add_argument("--input", required=True, help="archive path (for csv: the CSV file)")
    shards.add_argument("--output", required=True, help="output folder")
    shards.add_argument("--image-size", type=int, default=256, help="short side of stored images")
    shards.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    shards.add_argument("--val-fraction", type=float, default=0.05)
    shards.add_argument("--test-fraction", type=float, default=0.15)
    shards.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    shards.add_argument("--workers", type=int, default=1, help="image decoding processes")
    shards.add_argument("--strict", action="store_true", help="stop at the first unusable row")
    shards.set_defaults(run=run_shards)


def run_phantom(args: argparse.Namespace) -> None:
    from convirt.data.sources.phantom import write_phantom

    path = write_phantom(args.output, args.num_samples, seed=args.seed, size=args.size, workers=args.workers)
    print(f"wrote {args.num_samples} phantom samples: {path}")


def run_shards(args: argparse.Namespace) -> None:
    from convirt.data.sources import read_rows
    from convirt.data.writer import write_shards

    manifest = write_shards(
        read_rows(args.source, args.input), args.output, image_size=args.image_size, shard_size=args.shard_size,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed, workers=args.workers,
        strict=args.strict, command=shlex.join(["convirt", *sys.argv[1:]]),
    )
    counts = ", ".join(f"{split} {info['samples']}" for split, info in manifest["splits"].items())
    dropped = ", ".join(f"{reason} {n}" for reason, n in manifest["dropped"].items()) or "none"
    print(f"wrote {manifest['samples']} samples to {args.output} ({counts}); dropped: {dropped}")
