"""``convirt export``: a checkpoint as an open_clip ``local-dir:`` folder."""

from __future__ import annotations

import argparse

from convirt.cli.common import add_checkpoint_arguments


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="write a checkpoint as an open_clip folder (load with local-dir:)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--output", required=True, help="folder to write (replaced if it exists)")
    parser.add_argument(
        "--bench",
        action="append",
        default=[],
        metavar="DIR",
        help="a `convirt bench` output folder: its results for these weights go into the model card (repeatable)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from convirt.cli.common import model_from_args
    from convirt.models import list_models, model_fingerprint
    from convirt.models.export import export_open_clip

    loaded = model_from_args(args)
    if loaded.model_name not in list_models():
        raise ValueError(
            f"{args.model} is a {loaded.model_name} model, which loads as it is (--model takes it); "
            "export writes models of convirt's registry (`convirt fit` checkpoints, registry names)"
        )
    folder = export_open_clip(
        loaded.model, loaded.model_name, loaded.tokenizer, args.output, provenance=model_fingerprint(loaded)
    )
    from convirt._io import write_text
    from convirt.bench.card import bench_rows, model_card

    rows = bench_rows(loaded, args.bench)
    write_text(folder / "README.md", model_card(loaded, folder, rows))
    print(
        f"exported {loaded.model_name} -> {folder} (model card README.md, {len(rows)} bench result rows)\n"
        f"load with: open_clip.create_model_and_transforms('local-dir:{folder}')"
    )
