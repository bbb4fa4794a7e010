"""Measure the speed of each pipeline stage on this machine and write the table to BENCHMARKS.md.

Run with `make bench`. Each figure is measured here, now; nothing is copied from elsewhere.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _markdown import machine_line, write_section

PHANTOM_IMAGES, PHANTOM_SIDE, SHARD_SIDE, STREAM_SIDE, STREAM_BATCH = 200, 256, 192, 160, 32
MODEL, STEP_BATCH, STEP_SIDE, STEP_TOKENS, FROZEN = "demo-effnet-minilm", 32, 160, 40, 3
STEPS, WARMUP, REPEATS = 5, 2, 3  # per run: the median of the steps after the warm-up; runs interleaved
FAISS_VECTORS, FAISS_DIM, FAISS_CENTRES, FAISS_QUERIES, FAISS_K, EF_SEARCH = 50_000, 256, 200, 1000, 10, 64


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.1f}"


def bench_phantom(tmp: Path) -> tuple[str, str, str]:
    from convirt.data.sources.phantom import write_phantom

    start = time.perf_counter()
    write_phantom(tmp / "phantom", PHANTOM_IMAGES, seed=0, size=PHANTOM_SIDE, workers=1, progress=False)
    return (
        f"phantom images ({PHANTOM_SIDE} px, 1 process)",
        _rate(PHANTOM_IMAGES, time.perf_counter() - start),
        "img/s",
    )


def bench_shards(tmp: Path) -> tuple[str, str, str]:
    from convirt.data.sources import read_rows
    from convirt.data.writer import write_shards

    start = time.perf_counter()
    write_shards(
        read_rows("csv", str(tmp / "phantom" / "rows.csv")),
        tmp / "shards",
        image_size=SHARD_SIDE,
        shard_size=100,
        progress=False,
    )
    return (
        f"shard writing (PNG -> {SHARD_SIDE} px JPEG, 1 process)",
        _rate(PHANTOM_IMAGES, time.perf_counter() - start),
        "img/s",
    )


def bench_stream(tmp: Path) -> tuple[str, str, str]:
    from convirt.data.shards import shard_urls
    from convirt.data.stream import build_batches
    from convirt.data.transforms import build_image_transform

    transform = build_image_transform(STREAM_SIDE, [0.5] * 3, [0.5] * 3, train=True)
    urls = shard_urls(tmp / "shards", "train")
    dataset = build_batches(
        urls, transform, lambda t: torch.zeros(len(t), 1), batch_size=STREAM_BATCH, train=True, shuffle_buffer=100
    ).with_epoch(10)
    start = time.perf_counter()
    n = sum(len(batch["key"]) for batch in dataset)
    return (
        f"streaming + train augmentation ({STREAM_SIDE} px, 1 process)",
        _rate(n, time.perf_counter() - start),
        "samples/s",
    )


SETTINGS = ((False, False, False), (True, False, False), (True, True, False), (True, False, True), (True, True, True))


def train_step_seconds(frozen: bool, bf16: bool, channels_last: bool = False) -> float:
    """One run of the demo model's training step on random inputs: median of the steps after the warm-up."""
    from convirt.losses import create_loss
    from convirt.models import create_model
    from convirt.models.freeze import freeze_image_groups, freeze_text_layers
    from convirt.models.memory_format import channels_last_images, to_channels_last

    torch.manual_seed(0)
    model = create_model(MODEL, pretrained=True).train()
    if frozen:
        freeze_image_groups(model, FROZEN)
        freeze_text_layers(model, FROZEN)
    if channels_last:
        to_channels_last(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    loss_fn = create_loss("clip")
    images = torch.randn(STEP_BATCH, 3, STEP_SIDE, STEP_SIDE)
    texts = torch.randint(1000, 2000, (STEP_BATCH, STEP_TOKENS))
    if channels_last:
        images = channels_last_images(images)
    timings = []
    for _ in range(STEPS):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(
                model.encode_image(images, normalize=True),
                model.encode_text(texts, normalize=True),
                model.logit_scale.exp(),
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - start)
    return float(np.median(timings[WARMUP:]))


def bench_train_steps() -> list[tuple[str, str, str]]:
    """Every setting of SETTINGS, interleaved over REPEATS runs (each run starts at another setting)."""
    seconds: dict[tuple[bool, bool, bool], list[float]] = {setting: [] for setting in SETTINGS}
    for repeat in range(REPEATS):
        for setting in SETTINGS[repeat % len(SETTINGS) :] + SETTINGS[: repeat % len(SETTINGS)]:
            seconds[setting].append(train_step_seconds(*setting))
    rows = []
    for (frozen, bf16, channels_last), runs in seconds.items():
        what = ", ".join(
            [
                f"{FROZEN} image groups and text layers frozen" if frozen else "all layers",
                "bf16 autocast" if bf16 else "fp32",
                *(["channels-last"] if channels_last else []),
            ]
        )
        rates = sorted(STEP_BATCH / s for s in runs)
        rows.append(
            (
                f"train step, {MODEL}, batch {STEP_BATCH}, {STEP_SIDE} px, {STEP_TOKENS} tokens, {what}",
                f"{float(np.median(rates)):,.1f} [{rates[0]:,.1f}, {rates[-1]:,.1f}]",
                "samples/s",
            )
        )
    return rows


def bench_faiss() -> list[tuple[str, str, str]]:

    from convirt.retrieval import build_index, search

    # Clustered vectors (centres plus noise) stand in for embeddings, which are far from
    # uniform; on uniform random vectors every approximate index looks worse than it is in use.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(FAISS_CENTRES, FAISS_DIM)).astype(np.float32)
    noise = 0.5
    base = centres[rng.integers(FAISS_CENTRES, size=FAISS_VECTORS)] + noise * rng.normal(
        size=(FAISS_VECTORS, FAISS_DIM)
    ).astype(np.float32)
    queries = centres[rng.integers(FAISS_CENTRES, size=FAISS_QUERIES)] + noise * rng.normal(
        size=(FAISS_QUERIES, FAISS_DIM)
    ).astype(np.float32)
    rows = []
    exact_ids = None
    for factory in ("Flat", "HNSW32"):
        hnsw = factory.startswith("HNSW")
        index, _ = build_index(base, factory, search_params=f"efSearch={EF_SEARCH}" if hnsw else "")
        start = time.perf_counter()
        _, ids = search(index, queries, FAISS_K)
        seconds = time.perf_counter() - start
        if exact_ids is None:
            exact_ids = ids
            recall = 1.0
        else:
            recall = float(np.mean([len(set(a) & set(b)) / FAISS_K for a, b in zip(ids, exact_ids)]))
        name = f"{factory} efSearch {EF_SEARCH}" if hnsw else factory
        rows.append(
            (
                f"FAISS {name}, {FAISS_VECTORS:,} x {FAISS_DIM} clustered, k={FAISS_K} (recall@{FAISS_K} vs "
                f"exact {recall:.3f})",
                _rate(FAISS_QUERIES, seconds),
                "queries/s",
            )
        )
    return rows


def _fit_choice() -> str:
    """What `convirt fit` does about precision on this CPU, in words."""
    from convirt._hardware import cpu_info

    return (
        "times 32-true and bf16-mixed at start here and keeps the faster"
        if cpu_info().native_bf16
        else ("would choose 32-true here")
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        rows = [bench_phantom(tmp), bench_shards(tmp), bench_stream(tmp), *bench_train_steps(), *bench_faiss()]
    lines = [
        "## Pipeline stages",
        "",
        f"Measured by `make bench` (`benchmarks/run.py`) on {time.strftime('%Y-%m-%d')}. {machine_line()}. "
        f"Precision as named in each row; `convirt fit` {_fit_choice()}. "
        f"Train steps: per run the median of {STEPS - WARMUP} steps after {WARMUP} warm-up steps; the settings "
        f"alternate over {REPEATS} runs: median [range] over runs.",
        "",
        "| stage | rate | unit |",
        "|---|---:|---|",
        *[f"| {name} | {rate} | {unit} |" for name, rate, unit in rows],
        "",
    ]
    write_section(Path(args.output), "pipeline", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
