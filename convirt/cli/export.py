"""``convirt export``: a checkpoint as an open_clip ``local-dir:`` folder, or as ONNX graphs (``--format onnx``)."""

from __future__ import annotations

import argparse
from typing import Any

from convirt.cli.common import add_checkpoint_arguments


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export", help="write a checkpoint as an open_clip folder (load with local-dir:) or as ONNX graphs"
    )
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--output", required=True, help="folder to write (an earlier export there is replaced; other files refused)"
    )
    parser.add_argument(
        "--format",
        default="open_clip",
        choices=["open_clip", "onnx"],
        help="open_clip: weights and config (load with local-dir:); onnx: image.onnx and text.onnx with their "
        "tokenizer and preprocessing, checked against PyTorch (run with `--runtime onnx` of embed and serve)",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="onnx only: int8 weights in the image tower (onnxruntime dynamic quantization); its vectors differ "
        "from PyTorch's, so the folder fingerprints as a model of its own (re-embed and re-index with it)",
    )
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

    if args.quantize and args.format != "onnx":
        raise ValueError("--quantize applies to --format onnx")
    from convirt._io import check_output_folder

    # The folder is replaced whole: only an earlier export (its convirt.json) may be.
    check_output_folder(args.output, [args.model], lambda folder: (folder / "convirt.json").is_file())
    loaded = model_from_args(args)
    if loaded.adapter:  # folded into plain open_clip weights: the export loads where peft is not installed
        from convirt.models.adapters import merge_adapters

        merge_adapters(loaded.model)
    if args.format == "onnx":
        return _export_onnx(args, loaded, model_fingerprint(loaded))
    if loaded.model_name not in list_models() and loaded.config is None:
        raise ValueError(
            f"{args.model} is a {loaded.model_name} model, which loads as it is (--model takes it); "
            "export writes models of convirt's registry (`convirt fit` checkpoints, registry names)"
        )
    folder = export_open_clip(
        loaded.model,
        loaded.model_name,
        loaded.tokenizer,
        args.output,
        provenance=model_fingerprint(loaded),
        config=loaded.config,
    )
    from convirt._io import write_text
    from convirt.bench.card import bench_rows, model_card

    rows = bench_rows(loaded, args.bench)
    write_text(folder / "README.md", model_card(loaded, folder, rows))
    print(
        f"exported {loaded.model_name} -> {folder} (model card README.md, {len(rows)} bench result rows)\n"
        f"load with: open_clip.create_model_and_transforms('local-dir:{folder}')"
    )


def _export_onnx(args: argparse.Namespace, loaded: Any, provenance: dict[str, Any]) -> None:
    from convirt.models.onnx_export import MIN_COSINE, export_onnx

    made = export_onnx(loaded, args.output, provenance=provenance, quantize=args.quantize)
    towers = ", ".join(f"{tower} {cosine:.6f}" for tower, cosine in made.least_cosine.items())
    print(
        f"exported {loaded.model_name} as ONNX (opset {made.opset}) -> {made.folder}: {', '.join(made.files)}\n"
        f"onnxruntime against PyTorch, least cosine (at least {MIN_COSINE} required): {towers}\n"
        f"run with: convirt serve --runtime onnx --model {made.folder} --index INDEX (or convirt embed --runtime onnx)"
    )
