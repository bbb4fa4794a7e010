"""`convirt serve --runtime onnx` against `--runtime torch` on the same machine: p95 latency and throughput.

The demo model (`make demo`'s checkpoint) is exported once with `convirt export --format onnx`; then, in
each round, one server per runtime serves the demo's index (the same command but for ``--runtime`` and
``--model``), its order alternating between rounds so that neither always runs first on a machine whose
load changes. Each server gets the same warm-up and the same fixed number of search-by-image,
search-by-text and diagnose requests at 1 and 8 concurrent keep-alive clients (the load generator of
benchmarks/serve.py). Per round, the ratio onnx/torch of p95 latency and of requests per second; the
``serve-runtime`` section of BENCHMARKS.md gives each runtime's median p95 and throughput over the rounds
and the median and range of the ratios, and the model's pass alone in this process at the server's thread
count. `python benchmarks/serve_runtime.py` (about 5 minutes on 2 CPU cores; `make demo` first).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _markdown import commit, machine_line, write_section
from _process import convirt
from serve import DEMO, ROOT, load, running_server

RUNTIMES = ("torch", "onnx")
KINDS = ("search (image)", "search (text)", "diagnose")
CLIENTS = (1, 8)
CHECKPOINT = DEMO / "checkpoints" / "last.ckpt"
IMAGE = DEMO / "phantom" / "images" / "phantom-0-000000.png"


def serve_round(runtime: str, folder: Path, threads: int, requests: int) -> dict[str, dict[int, dict[str, float]]]:
    """One server of ``runtime`` on the demo index: warmed up, then ``requests`` of each kind at each level."""
    # running_server starts `convirt serve --model CHECKPOINT`; a later --model wins (argparse keeps the last).
    options = ["--runtime", "onnx", "--model", str(folder)] if runtime == "onnx" else []
    image = IMAGE.read_bytes()
    with running_server(DEMO / "index", threads, options) as (port, _):
        for kind in KINDS:  # warm-up, not measured
            load("127.0.0.1", port, kind, max(CLIENTS), 4 * max(CLIENTS), image)
        return {kind: {c: load("127.0.0.1", port, kind, c, requests, image) for c in CLIENTS} for kind in KINDS}


def model_pass_ms(folder: Path, threads: int) -> dict[str, dict[str, float]]:
    """Per runtime, the median of 7 passes over a batch of 1 and of 8 preprocessed images, and of 8 query texts."""
    import torch

    from convirt.data.stream import pad_id_of, trim_padding
    from convirt.models.memory_format import to_channels_last
    from convirt.models.onnx_runtime import load_onnx_model
    from convirt.models.sources import load_model

    torch.set_num_threads(threads)
    models = {"torch": load_model(str(CHECKPOINT)), "onnx": load_onnx_model(folder, threads=threads)}
    to_channels_last(models["torch"].model)  # as the service runs it
    loaded = models["torch"]
    size = loaded.preprocess_cfg["size"]
    tokens = trim_padding(loaded.tokenizer(["enlarged cardiac silhouette"] * 8), pad_id_of(loaded.tokenizer))
    images = {n: torch.randn(n, 3, size, size).contiguous(memory_format=torch.channels_last) for n in (1, 8)}
    inputs = {"1 image": ("image", images[1]), "8 images": ("image", images[8]), "8 texts": ("text", tokens)}
    times: dict[str, dict[str, float]] = {runtime: {} for runtime in models}
    with torch.inference_mode():
        for runtime, model in models.items():
            for name, (modality, batch) in inputs.items():
                encode = model.model.encode_image if modality == "image" else model.model.encode_text
                encode(batch)
                spent = []
                for _ in range(7):
                    start = time.perf_counter()
                    encode(batch)
                    spent.append((time.perf_counter() - start) * 1000)
                times[runtime][name] = float(np.median(spent))
    return times


def section(rounds: list[dict[str, Any]], passes: dict[str, dict[str, float]], threads: int, requests: int) -> str:
    command = " ".join(["python benchmarks/serve_runtime.py", *sys.argv[1:]])
    lines = [
        "## `convirt serve --runtime onnx` against `--runtime torch`",
        "",
        f"{machine_line('float32 (both runtimes)')}; onnxruntime {_ort_version()} (CPUExecutionProvider); "
        f"commit {commit()}. Command: `{command}`. The demo model served over the demo's index "
        f"({_index_count()} cases, Flat) by `convirt serve --threads {threads}` (its default here: every core but "
        f"one), once with `--runtime torch --model {CHECKPOINT.relative_to(ROOT)}` and once with `--runtime onnx "
        "--model` its `convirt export --format onnx` folder, in "
        f"{len(rounds)} rounds (the order alternating); in each, {requests} requests of each kind at each level of "
        "concurrent keep-alive clients after a warm-up (server and clients on the same cores; image requests upload "
        "one 192 px phantom PNG; diagnose without saliency maps, which the onnx runtime refuses).",
        "",
        "| endpoint | clients | p95 ms, torch | p95 ms, onnx | p95 onnx/torch, median [range] "
        "| requests/s, torch | requests/s, onnx | requests/s onnx/torch, median [range] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        for clients in CLIENTS:
            p95 = {r: [run[r][kind][clients]["p95"] for run in rounds] for r in RUNTIMES}
            rps = {r: [run[r][kind][clients]["rps"] for run in rounds] for r in RUNTIMES}
            lines.append(
                f"| {kind} | {clients} | {np.median(p95['torch']):.0f} | {np.median(p95['onnx']):.0f} | "
                f"{_ratio(p95)} | {np.median(rps['torch']):.1f} | {np.median(rps['onnx']):.1f} | {_ratio(rps)} |"
            )
    errors = sum(run[r][k][c]["errors"] for run in rounds for r in RUNTIMES for k in KINDS for c in CLIENTS)
    names = list(passes["torch"])
    lines += [
        "",
        f"Errors: {errors}. The model's pass alone in this process on {threads} thread(s), median of 7 (ms): "
        + "; ".join(f"{name}: torch {passes['torch'][name]:.1f}, onnx {passes['onnx'][name]:.1f}" for name in names)
        + ". Ratios are per round (the two servers of a round ran back to back), so a machine whose load "
        "changed between rounds moves both alike.",
    ]
    return "\n".join(lines)


def _ratio(values: dict[str, list[float]]) -> str:
    ratios = [onnx / torch for torch, onnx in zip(values["torch"], values["onnx"])]
    return f"{np.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}]"


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _index_count() -> int:
    import json

    return int(json.loads((DEMO / "index" / "info.json").read_text())["count"])


def main() -> None:
    from convirt._hardware import choose_serve_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--work", default=str(ROOT / "artifacts" / "serve-runtime"))
    parser.add_argument("--rounds", type=int, default=5, help="pairs of servers, one per runtime")
    parser.add_argument("--requests", type=int, default=96, help="requests of each kind at each level")
    parser.add_argument("--threads", type=int, help="the servers' --threads (default: their own choice)")
    args = parser.parse_args()
    if not CHECKPOINT.is_file() or not (DEMO / "index" / "info.json").is_file():
        raise SystemExit("run `make demo` first: this benchmark serves its model and index")
    threads = args.threads or choose_serve_threads()
    folder = Path(args.work) / "demo-onnx"
    convirt("export", "--format", "onnx", "--model", str(CHECKPOINT), "--output", str(folder), quiet=True)
    rounds = []
    for i in range(args.rounds):
        order = RUNTIMES if i % 2 == 0 else RUNTIMES[::-1]
        rounds.append({runtime: serve_round(runtime, folder, threads, args.requests) for runtime in order})
        print(f"round {i + 1} of {args.rounds} done", flush=True)
    text = section(rounds, model_pass_ms(folder, threads), threads, args.requests)
    write_section(Path(args.output), "serve-runtime", text)
    print(text)


if __name__ == "__main__":
    main()
