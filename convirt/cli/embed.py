"""``convirt embed``: image (or report text) embeddings of shards, a CSV or an image folder, in resumable parts."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from convirt.cli.common import (
    add_checkpoint_arguments,
    add_input_arguments,
    add_runtime_argument,
    eval_batches,
    model_from_args,
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", help="embed the images (or report texts) of shards, a CSV or an image folder")
    add_checkpoint_arguments(embed)
    add_runtime_argument(embed)
    add_input_arguments(embed)
    embed.add_argument("--output", required=True)
    embed.add_argument("--texts", action="store_true", help="embed the report texts instead of the images")
    embed.add_argument("--chunk-size", type=int, default=4096, help="vectors per part file (resume granularity)")
    embed.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    embed.add_argument("--devices", default="1", help="processes per node (DDP ranks; each writes its own parts)")
    embed.add_argument(
        "--num-nodes", type=int, default=1, help="nodes, each launched by torchrun or srun with --devices ranks"
    )
    embed.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    embed.add_argument(
        "--precision",
        default="auto",
        help="auto (float32 on CPUs; on a GPU bf16 or fp16 only where the first batch agrees with float32 "
        "to cosine 0.999), or float32, bfloat16, float16 as asked",
    )
    embed.add_argument("--workers", type=int, default=0, help="data-loading processes per rank")
    embed.set_defaults(run=run_embed)


def run_embed(args: argparse.Namespace) -> None:
    from functools import partial

    from convirt.data.inputs import parse_where
    from convirt.data.stream import pad_id_of
    from convirt.embeddings.encode import Encoder
    from convirt.embeddings.run import embed_to_folder
    from convirt.models import model_fingerprint
    from convirt.training.launch import require_launcher
    from convirt.training.predict import encode_on_devices, launched_rank

    onnx = args.runtime == "onnx"
    require_launcher(args.num_nodes, args.devices, "--num-nodes")
    ranks = args.num_nodes > 1 or str(args.devices) not in ("1",)
    if onnx and (ranks or args.precision not in ("auto", "float32", "32", "32-true")):
        raise ValueError("--runtime onnx embeds in this process in float32: leave --devices and --precision out")
    loaded = model_from_args(args)
    if args.texts:
        loaded.require_text("`convirt embed --texts`")
    modality = "text" if args.texts else "image"
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    # Each rank reads its share of the shards, cut by the rank Lightning finds (torchrun, srun, its own).
    share = launched_rank(args.accelerator, devices, args.num_nodes) if ranks else False

    def batches(done: set[str]) -> Iterable[dict[str, Any]]:  # what is left after a resume
        return eval_batches(
            loaded,
            args.data,
            args.split,
            args.batch_size,
            skip_keys=done,
            where=parse_where(args.where),
            num_workers=args.workers,
            split_by_rank=share,
            table=args,
            texts_only=bool(args.texts),
        )

    encoder = Encoder(loaded.model, args.precision, pad_id_of(loaded.tokenizer))
    count, skipped = embed_to_folder(
        encoder,
        batches,
        args.output,
        model_fingerprint(loaded),
        modality,
        args.chunk_size,
        args.dtype,
        # onnxruntime runs in this process (on CUDA where its build has it), without Lightning's ranks.
        encode_all=None
        if onnx
        else partial(encode_on_devices, accelerator=args.accelerator, devices=devices, num_nodes=args.num_nodes),
    )
    if count == 0:
        raise ValueError(
            f"nothing to embed in {args.data}"
            + (f" ({args.split})" if args.split else "")
            + (f": {skipped} corrupt samples skipped" if skipped else "")
        )
    if isinstance(share, tuple) and share[0] != 0:  # the folder's summary is said once, by rank 0
        return
    note = f" ({skipped} corrupt samples skipped)" if skipped else ""
    made = encoder.settled.get(modality)
    how = f"at {made.describe()} ({made.reason})" if made else "(nothing left to embed)"
    print(f"embedded {count} {modality}s {how} -> {args.output}{note}")
