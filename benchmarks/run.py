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

from convirt._hardware import choose_precision


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.1f}"


def bench_phantom(tmp: Path) -> tuple[str, str, str]:
    from convirt.data.sources.phantom import write_phantom

    start = time.perf_counter()
    write_phantom(tmp / "phantom", 200, seed=0, size=256, workers=1, progress=False)
    return "phantom images (256 px, 1 process)", _rate(200, time.perf_counter() - start), "img/s"


def bench_shards(tmp: Path) -> tuple[str, str, str]:
    from convirt.data.sources import read_rows
    from convirt.data.writer import write_shards

    start = time.perf_counter()
    write_shards(read_rows("csv", str(tmp / "phantom" / "rows.csv")), tmp / "shards", image_size=192,
                 shard_size=100, progress=False)
    return "shard writing (PNG -> 192 px JPEG, 1 process)", _rate(200, time.perf_counter() - start), "img/s"


def bench_stream(tmp: Path) -> tuple[str, str, str]:
    from convirt.data.stream import build_batches
    from convirt.data.transforms import build_image_transform
    from convirt.data.writer import shard_urls

    transform = build_image_transform(160, [0.5] * 3, [0.5] * 3, train=True)
    urls = shard_urls(tmp / "shards", "train")
    dataset = build_batches(urls, transform, lambda t: torch.zeros(len(t), 1), batch_size=32, train=True,
                            shuffle_buffer=100).with_epoch(10)
    start = time.perf_counter()
    n = sum(len(batch["key"]) for batch in dataset)
    return "streaming + train augmentation (160 px, 1 process)", _rate(n, time.perf_counter() - start), "samples/s"


def bench_train_step(frozen: bool, bf16: bool, channels_last: bool = False) -> tuple[str, str, str]:
    """One setting of the demo model's training step on random inputs: median of the last 3 of 5 steps."""
    from convirt.losses import create_loss
    from convirt.models import create_model
    from convirt.models.freeze import freeze_image_groups, freeze_text_layers
    from convirt.models.memory_format import channels_last_images, to_channels_last

    torch.manual_seed(0)
    model = create_model("demo-effnet-minilm", pretrained=True).train()
    if frozen:
        freeze_image_groups(model, 3)
        freeze_text_layers(model, 3)
    if channels_last:
        to_channels_last(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    loss_fn = create_loss("clip")
    images, texts = torch.randn(32, 3, 160, 160), torch.randint(1000, 2000, (32, 40))
    if channels_last:
        images = channels_last_images(images)
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model.encode_image(images, normalize=True), model.encode_text(texts, normalize=True),
                           model.logit_scale.exp())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        timings.append(time.perf_counter() - start)
    what = ", ".join([
        "early layers frozen (demo)" if frozen else "all layers",
        "bf16 autocast" if bf16 else "fp32",
        *(["channels-last"] if channels_last else []),
    ])
    return (f"train step, demo-effnet-minilm, batch 32, 160 px, 40 tokens, {what}",
            _rate(32, float(np.median(timings[2:]))), "samples/s")


def bench_faiss() -> list[tuple[str, str, str]]:

    from convirt.retrieval import build_index, search

    # Clustered vectors (200 centres plus noise) stand in for embeddings, which are far from
    # uniform; on uniform random vectors every approximate index looks worse than it is in use.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, 256)).astype(np.float32)
    base = centres[rng.integers(200, size=50_000)] + 0.5 * rng.normal(size=(50_000, 256)).astype(np.float32)
    queries = centres[rng.integers(200, size=1000)] + 0.5 * rng.normal(size=(1000, 256)).astype(np.float32)
    rows = []
    exact_ids = None
    for factory in ("Flat", "HNSW32"):
        index, _ = build_index(base, factory, search_params="efSearch=64" if factory.startswith("HNSW") else "")
        start = time.perf_counter()
        _, ids = search(index, queries, 10)
        seconds = time.perf_counter() - start
        if exact_ids is None:
            exact_ids = ids
            recall = 1.0
        else:
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)]))
        name = f"{factory} efSearch 64" if factory.startswith("HNSW") else factory
        rows.append((f"FAISS {name}, 50k x 256 clustered, k=10 (recall@10 vs exact {recall:.3f})",
                     _rate(1000, seconds), "queries/s"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        rows = [bench_phantom(tmp), bench_shards(tmp), bench_stream(tmp), bench_train_step(False, False),
                bench_train_step(True, False), bench_train_step(True, True), bench_train_step(True, False, True),
                bench_train_step(True, True, True), *bench_faiss()]
    lines = [
        "## Pipeline stages",
        "",
        f"Measured by `make bench` (`benchmarks/run.py`) on {time.strftime('%Y-%m-%d')}. {machine_line()}. "
        f"Precision as named in each row; `convirt fit` would choose {choose_precision('cpu').precision} here.",
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
