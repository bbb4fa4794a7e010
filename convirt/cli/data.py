"""``convirt phantom`` and ``convirt shards``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from convirt.data.reports import TextMode
from convirt.data.sources import list_sources  # light: readers are imported on use


def add_parsers(sub: argparse._SubParsersAction) -> None:
    phantom = sub.add_parser("phantom", help="write synthetic chest radiographs with reports (the demo data)")
    phantom.add_argument("--output", required=True, help="folder for images/ and rows.csv")
    phantom.add_argument("--num-samples", type=int, default=2000)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--size", type=int, default=256, help="image side in pixels")
    phantom.add_argument("--workers", type=int, default=2, help="image drawing processes")
    phantom.set_defaults(run=run_phantom)

    shards = sub.add_parser(
        "shards", help="convert an archive into WebDataset shards with a manifest (`shards merge`: join parts)"
    )
    shards.add_argument("--source", default="csv", choices=list_sources(), help="archive reader")
    # --input and --output are checked in run_shards: argparse would ask for them after `shards merge` too
    shards.add_argument(
        "--input", help="archive path: the CSV/JSONL file, NLMCXR_reports.tgz, the archive's root folder (required)"
    )
    shards.add_argument("--output", help="output folder (rerun the same command to resume) (required)")
    shards.add_argument("--images", help="image folder where the archive keeps it apart (openi: the PNG folder)")
    shards.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=NAME",
        help="csv/jsonl: the column holding FIELD (image, text, patient_id, study_id, view, "
        "labels, source, split); repeatable",
    )
    shards.add_argument(
        "--uncertain",
        choices=("zeros", "ones", "ignore"),
        help="mimic-cxr: CheXpert -1 labels as negative (default), positive, or left out",
    )
    shards.add_argument(
        "--text",
        default="auto",
        choices=[mode.value for mode in TextMode],
        help="report text kept: auto (findings+impression, else the free text), findings, "
        "impression, both, longest, imaging (findings+impression, else the free text's "
        "sentences about the radiograph: for case notes)",
    )
    shards.add_argument(
        "--views",
        type=lambda text: text.split(","),
        metavar="VIEW[,VIEW...]",
        help="keep only these projections, e.g. PA,AP, or 'frontal' for every frontal view "
        "(rows of other views or none are dropped and counted)",
    )
    shards.add_argument("--image-size", type=int, default=512, help="short side of stored images")
    shards.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    shards.add_argument("--val-fraction", type=float, default=0.05)
    shards.add_argument("--test-fraction", type=float, default=0.15)
    shards.add_argument("--seed", type=int, default=0, help="seed of the patient split")
    shards.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="image decoding processes")
    shards.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicate images")
    shards.add_argument("--strict", action="store_true", help="stop at the first unusable row")
    shards.add_argument(
        "--part",
        metavar="I/N",
        help="convert only part I of N (by patient; 1 <= I <= N), into its own --output; "
        "then `convirt shards merge` the N folders (SLURM: --array=1-N, "
        "--part $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)",
    )
    shards.set_defaults(run=run_shards)
    merge = shards.add_subparsers(dest="shards_command", metavar="{merge}").add_parser(
        "merge", help="join the N folders of `convirt shards --part I/N` into one shard folder"
    )
    merge.add_argument("parts", nargs="+", metavar="PART_DIR", help="the part folders (every I of one N)")
    merge.add_argument("--output", required=True, help="the merged folder (new or empty)")


def run_phantom(args: argparse.Namespace) -> None:
    from convirt.data.sources.phantom import write_phantom

    path = write_phantom(args.output, args.num_samples, seed=args.seed, size=args.size, workers=args.workers)
    print(f"wrote {args.num_samples} phantom samples: {path}")


def _columns(pairs: list[str]) -> dict[str, str]:
    columns = {}
    for pair in pairs:
        field, sep, name = pair.partition("=")
        if not sep or not field or not name:
            raise ValueError(f"--column expects FIELD=NAME, got {pair!r}")
        columns[field] = name
    return columns


def run_shards(args: argparse.Namespace) -> None:
    from convirt.data.parts import merge_parts, parse_part
    from convirt.data.sources import is_text_only, read_rows
    from convirt.data.writer import write_shards

    if args.shards_command == "merge":
        _print_summary(
            merge_parts(args.parts, args.output, command=shlex.join(["convirt", *sys.argv[1:]])), args.output
        )
        return
    for name in ("input", "output"):
        if getattr(args, name) is None:
            raise ValueError(f"convirt shards needs --{name} (see `convirt shards --help`)")
    part = parse_part(args.part) if args.part is not None else None  # before any work
    options = {"images": args.images, "columns": _columns(args.column), "uncertain": args.uncertain}
    read_rows(args.source, args.input, **options)  # checks the input now, before any work
    manifest = write_shards(
        lambda: read_rows(args.source, args.input, **options),
        args.output,
        image_size=args.image_size,
        shard_size=args.shard_size,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        workers=args.workers,
        strict=args.strict,
        command=shlex.join(["convirt", *sys.argv[1:]]),
        text=args.text,
        text_only=is_text_only(args.source, options),
        drop_duplicates=not args.keep_duplicates,
        source=args.source,
        views=args.views,
        part=part,
    )
    _print_summary(manifest, args.output)


def _print_summary(manifest: dict[str, Any], output: str) -> None:
    counts = ", ".join(f"{split} {info['samples']}" for split, info in manifest["splits"].items())
    dropped = ", ".join(f"{reason} {n}" for reason, n in manifest["dropped"].items()) or "none"
    sections = ", ".join(f"{name} {n}" for name, n in manifest["sections"].items()) or "none"
    kind = "text-only samples" if manifest["text_only"] else "samples"
    print(f"read {manifest['rows_read']} rows; reports with each section: {sections}")
    part = f" (part {manifest['part']['number']}/{manifest['part']['total']})" if "part" in manifest else ""
    print(f"wrote {manifest['samples']} {kind}{part} to {output} ({counts}); dropped: {dropped}")
