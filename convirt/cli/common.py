"""Pieces shared by the commands. Heavy imports stay inside functions so that `convirt` starts fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from convirt.models.checkpoint import LoadedModel


def eval_batches(
    loaded: LoadedModel,
    data: str,
    split: str,
    batch_size: int,
    skip_keys: set[str] | None = None,
    where: dict[str, str] | None = None,
    num_workers: int = 0,
    split_by_rank: bool | tuple[int, int] = False,
    table: argparse.Namespace | None = None,
    texts_only: bool = False,
) -> Iterable[dict[str, Any]]:
    """:func:`convirt.data.inputs.build_eval_batches` for ``loaded``, the label-table and field options taken from
    ``table``; what was inferred of shards without a manifest is said once, on stderr."""
    from convirt.data.fields import parse_fields
    from convirt.data.foreign import describe_input
    from convirt.data.inputs import build_eval_batches

    fields = parse_fields(getattr(table, "field", None)) if getattr(table, "field", None) else None
    line = describe_input(data, split, fields)
    if line and line not in _SAID:
        _SAID.add(line)
        print(f"convirt: {line}", file=sys.stderr)
    return build_eval_batches(
        data,
        loaded.preprocess_cfg,
        loaded.tokenizer,
        batch_size,
        split=split,
        where=where,
        skip_keys=skip_keys,
        num_workers=num_workers,
        split_by_rank=split_by_rank,
        label_format=getattr(table, "format", "auto"),
        images=getattr(table, "images", None),
        uncertain=getattr(table, "uncertain", "zeros"),
        texts_only=texts_only,
        fields=fields,
    )


_SAID: set[str] = set()  # the inferences already said in this process


def add_checkpoint_arguments(
    parser: argparse.ArgumentParser, required: bool = True, help: str = "the model to load"
) -> None:
    """``--model`` (alias ``--checkpoint``) and ``--text-model``: the model a command loads."""
    from convirt.models.sources import describe_sources

    parser.add_argument(
        "--model",
        "--checkpoint",
        dest="model",
        metavar="SOURCE",
        required=required,
        help=f"{help}: {describe_sources()}",
    )
    parser.add_argument(
        "--text-model",
        metavar="DIR",
        help="the local text-model folder a `convirt fit` checkpoint was trained with, where it has moved "
        "(config and tokenizer are read from it; the weights come from the checkpoint)",
    )


def add_runtime_argument(parser: argparse.ArgumentParser) -> None:
    """``--runtime``: run the model with PyTorch (``--model`` any source) or onnxruntime (an ONNX export)."""
    parser.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnx"],
        help="torch: the model in PyTorch; onnx: --model names a `convirt export --format onnx` folder, run "
        "by onnxruntime (same vectors, checked at export; no saliency maps)",
    )


def model_from_args(args: argparse.Namespace, source: str | None = None) -> LoadedModel:
    """The model named by ``--model`` (or ``source``), with ``--text-model`` if given; an ONNX export
    folder with ``--runtime onnx``."""
    from convirt.models.onnx_runtime import is_onnx_folder, load_onnx_model
    from convirt.models.sources import load_model

    name = source or args.model
    if getattr(args, "runtime", "torch") == "onnx":
        return load_onnx_model(name)
    if is_onnx_folder(name):
        raise ValueError(
            f"{name} is an ONNX export: run it with --runtime onnx (convirt embed, convirt serve), or pass "
            "the checkpoint it was exported from"
        )
    return load_model(name, text_model_path=getattr(args, "text_model", None))


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--split``, ``--where`` and ``--batch-size``: what to read, for any command that reads images."""
    parser.add_argument(
        "--data",
        required=True,
        help="shard folder, shards without a manifest (a folder of .tar, a brace pattern or a URL, as img2dataset "
        "writes them), CSV (image[,text,labels,patient_id,...]) or image folder",
    )
    parser.add_argument(
        "--split",
        default="test",
        help="shard split to read (shard folders; tars named train-/val-/test-; other shards are read whole)",
    )
    parser.add_argument(
        "--field",
        action="append",
        metavar="ROLE=EXT",
        help="shards without a manifest: the extension read as image, text or meta (default: the first present "
        "of jpg/jpeg/png/webp, txt/caption/text, json), e.g. --field image=png --field text=caption (repeatable)",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="keep only samples whose metadata matches, e.g. source=nih-chestxray14 (repeatable)",
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", "csv", "chexpert", "nih"],
        help="label table format (auto: from the header; NIH Data_Entry_2017, CheXpert, generic)",
    )
    parser.add_argument("--images", help="folder the table's image paths are relative to (default: the table's)")
    parser.add_argument(
        "--uncertain",
        default="zeros",
        choices=["zeros", "ones", "ignore"],
        help="CheXpert -1 labels: negative, positive, or left out of that finding's metrics",
    )
    parser.add_argument("--batch-size", type=int, default=64)


def fmt_value(value: object) -> str:
    """A metric to 3 decimals; NaN or a missing value as n/a."""
    return f"{value:.3f}" if isinstance(value, float) and value == value else "n/a"


def with_ci(values: dict[str, Any], key: str) -> str:
    """``values[key]`` with its 95% CI, ``0.812 [0.760, 0.861]``."""
    low, high = values[f"{key}_ci"]
    return f"{fmt_value(values[key])} [{fmt_value(low)}, {fmt_value(high)}]" if low == low else fmt_value(values[key])
