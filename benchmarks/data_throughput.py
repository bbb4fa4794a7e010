"""Data-loading speed and memory: the streaming loader against the raw decode limit.

1. Throughput: shards of radiograph-sized JPEGs (short side 512, as `convirt shards` stores them
   by default) are streamed by the training loader (`ShardDataModule`'s pipeline: shuffle,
   decode, ConVIRT augmentation to the model's input side, tokenisation, collation) with 2
   worker processes; the limit is the same decode (the loader's own `decode_grayscale`, JPEG
   draft mode at the model's side) and a resize to that side, in a tight loop in 2 processes
   that read the same shards: the most any loader could do on these cores. Each figure times a
   whole pass over the shards, process start included; the two alternate over `--repeats`
   repeats. Reported: median samples/s of each, and the median and range of the per-repeat
   ratio (goal >= 0.85).
2. Memory: peak resident memory of the loader process and its workers while streaming one pass
   over 10 shards and over 100 shards of the same size (goal: flat).
3. Conversion: `convirt shards` rows/s with 1 and 2 workers on the same images.

Writes the ``data-throughput`` section of BENCHMARKS.md. `python benchmarks/data_throughput.py`.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _markdown import machine_line, write_section
from _process import convirt
from PIL import Image

SECTION = "data-throughput"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
MODEL = "demo-effnet-minilm"
COPIES = 3  # the real radiographs, listed this many times
STORED_SIDE, SHARD_SIZE, DRAWN_SIDE = 512, 100, 600  # `convirt shards --image-size`, --shard-size; drawn images
WORKERS = 2  # loader workers and limit processes
GOAL_RATIO = 0.85  # loader / limit
SMALL_IMAGES, SMALL_SHARD = 500, 50  # the memory run's image set and its shard size
MEMORY_COPIES = (1, 10)  # the small set written this many times
SAMPLE_SECONDS = 0.05  # the memory sampler's period


def draw_images(folder: Path, count: int, side: int, seed: int = 0) -> Path:
    """``count`` smooth grayscale images (``side`` x ``side * 1.2``) with reports, as a CSV."""
    from scipy.ndimage import gaussian_filter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["image,text,patient_id"]
    for i in range(count):
        noise = gaussian_filter(rng.normal(size=(side, int(side * 1.2))), sigma=side / 64)
        noise += rng.normal(scale=noise.std() * 0.2, size=noise.shape)  # film grain: JPEGs of real size
        pixels = np.clip(128 + noise / (noise.std() + 1e-9) * 40, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=92)
        lines.append(f"{i}.jpg,FINDINGS: Heart size normal. Case {i}. IMPRESSION: No acute process {i}.,p{i}")
    (folder / "rows.csv").write_text("\n".join(lines) + "\n")
    return folder / "rows.csv"


def real_images(copies: int, out: Path) -> Path | None:
    """A CSV of the covid-pairs radiographs (real JPEGs, short side 512) listed ``copies`` times,
    or ``None`` when ../shared/data is absent."""
    pairs = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "covid-pairs" / "pairs.csv"
    if not pairs.is_file():
        return None
    import csv

    with open(pairs, newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    out.mkdir(parents=True, exist_ok=True)
    (out / "images").symlink_to(pairs.parent / "images")  # relative paths: keys as a real conversion has them
    with open(out / "rows.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "text", "patient_id"])
        for copy in range(copies):
            for record in records:
                writer.writerow([record["image"], record["text"], f"{copy}-{record['patient_id']}"])
    return out / "rows.csv"


def make_shards(table: Path, out: Path, image_size: int, shard_size: int, workers: int = 2) -> float:
    """Convert with `convirt shards`; return rows/s."""
    start = time.perf_counter()
    convirt(
        "shards",
        "--input",
        str(table),
        "--output",
        str(out),
        "--image-size",
        str(image_size),
        "--shard-size",
        str(shard_size),
        "--workers",
        str(workers),
        "--val-fraction",
        "0",
        "--test-fraction",
        "0",
        "--keep-duplicates",
        quiet=True,
    )
    rows = sum(1 for _ in open(table)) - 1
    return rows / (time.perf_counter() - start)


def model_side() -> int:
    """The model's input side: what the loader decodes JPEGs for and crops to."""
    from convirt.data.transforms import image_side
    from convirt.models.factory import get_preprocess_cfg

    return image_side(get_preprocess_cfg(MODEL), None)


def _decode_shards(urls: list[str], side: int, augment: bool = False, batch_size: int = 64) -> int:
    """Read the shards and decode each JPEG as the loader does (draft mode at ``side``), resized to
    ``side``; with ``augment``, the loader's training transform instead of the resize and its
    tokenizer over each ``batch_size`` reports: the loader's per-sample work without its pipeline."""
    import tarfile

    from convirt.data.stream import decode_grayscale
    from convirt.data.transforms import image_transform_for
    from convirt.models.factory import create_tokenizer, get_preprocess_cfg

    transform = image_transform_for(get_preprocess_cfg(MODEL), train=True, compact=True) if augment else None
    tokenizer = create_tokenizer(MODEL) if augment else None
    done, texts = 0, []
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".txt") and tokenizer is not None:
                    texts.append(tar.extractfile(member).read().decode("utf-8"))
                    if len(texts) == batch_size:
                        tokenizer(texts)
                        texts = []
                if member.name.endswith(".jpg"):
                    image = decode_grayscale(member.name, tar.extractfile(member).read(), size=side)
                    if transform is not None:
                        transform(image)
                    else:
                        image.resize((side, side), Image.Resampling.BILINEAR)
                    done += 1
    return done


def decode_limit(urls: list[str], side: int, processes: int = 2, augment: bool = False) -> float:
    """Samples/s of a whole pass of ``processes`` processes (started inside the clock, as the
    loader's workers are) that read the shards and decode + resize (or augment) every JPEG."""
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        done = sum(pool.starmap(_decode_shards, [(urls[i::processes], side, augment) for i in range(processes)]))
    return done / (time.perf_counter() - start)


def loader_rate(shards: Path, workers: int = 2, batch_size: int = 64) -> tuple[float, int]:
    """Samples/s of one whole pass (one epoch) of the training loader, its workers' start included."""
    from convirt.training import ShardDataModule

    data = ShardDataModule(
        str(shards), model_name=MODEL, batch_size=batch_size, num_workers=workers, shuffle_buffer=256, seed=0
    )
    data.setup("fit")
    loader = data.train_dataloader()
    start = time.perf_counter()
    count = sum(len(batch["key"]) for batch in loader)
    rate = count / (time.perf_counter() - start)
    # Persistent workers live as long as the loader: end them before anything else is timed.
    del loader, data
    gc.collect()
    return rate, count


class PeakMemory:
    """Peak summed RSS of this process and its children, sampled every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in [self.process, *self.process.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(SAMPLE_SECONDS)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def memory_run(shards: str) -> None:
    """Child process: one loader pass over ``shards``; prints peak MB and samples as JSON."""
    with PeakMemory() as memory:
        _, samples = loader_rate(Path(shards), workers=WORKERS, batch_size=32)
    print(json.dumps({"peak_mb": memory.peak / 2**20, "samples": samples}))


def _median_range(values: list[float], spec: str) -> str:
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}, {max(values):{spec}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="images in the throughput run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of loader and limit")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--memory-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_run:
        memory_run(args.memory_run)
        return
    from convirt.data.shards import shard_urls

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        table = real_images(COPIES, tmp / "real")
        images = sum(1 for _ in open(table)) - 1 if table is not None else 0
        kind = f"real radiographs: the {images // COPIES} covid-pairs JPEGs, {COPIES} copies each"
        if table is None:
            table = draw_images(tmp / "images", args.images, DRAWN_SIDE)
            kind = f"{args.images} drawn {DRAWN_SIDE} x {int(DRAWN_SIDE * 1.2)} images (../shared/data absent)"
            images = args.images
        convert = {
            workers: make_shards(table, tmp / f"shards-{workers}", STORED_SIDE, SHARD_SIZE, workers)
            for workers in (1, WORKERS)
        }
        shards = tmp / f"shards-{WORKERS}"
        side = model_side()
        shard_count = len(shard_urls(shards, "train"))
        limits, work, rates = [], [], []
        for repeat in range(args.repeats):  # interleaved, each first in turn
            runs = [
                lambda: limits.append(decode_limit(shard_urls(shards, "train"), side, WORKERS)),
                lambda: work.append(decode_limit(shard_urls(shards, "train"), side, WORKERS, augment=True)),
                lambda: rates.append(loader_rate(shards, WORKERS)[0]),
            ]
            for run in runs[repeat % len(runs) :] + runs[: repeat % len(runs)]:
                run()
            print(
                f"repeat {repeat}: limit {limits[-1]:.0f}, same work {work[-1]:.0f}, loader {rates[-1]:.0f} samples/s",
                flush=True,
            )
        small = draw_images(tmp / "small", SMALL_IMAGES, 160, seed=1)
        peaks = {}
        for copies in MEMORY_COPIES:
            # The same images written `copies` times, in shards of SMALL_SHARD.
            folder = tmp / f"mem-{copies}"
            if copies == 1:
                make_shards(small, folder, 128, SMALL_SHARD)
            else:
                lines = small.read_text().splitlines()
                rows = [lines[0]] + [line.replace(",p", f",c{c}-p") for c in range(copies) for line in lines[1:]]
                table10 = tmp / "small" / "rows10.csv"
                table10.write_text("\n".join(rows) + "\n")
                convirt(
                    "shards",
                    "--input",
                    str(table10),
                    "--output",
                    str(folder),
                    "--image-size",
                    "128",
                    "--shard-size",
                    str(SMALL_SHARD),
                    "--val-fraction",
                    "0",
                    "--test-fraction",
                    "0",
                    "--keep-duplicates",
                    quiet=True,
                )
            result = subprocess.run(
                [sys.executable, __file__, "--memory-run", str(folder)], check=True, capture_output=True, text=True
            )
            peaks[copies] = json.loads(result.stdout.strip().splitlines()[-1])
            peaks[copies]["shards"] = len(shard_urls(folder, "train"))
    ratios = [rate / limit for rate, limit in zip(rates, limits)]
    ratio = statistics.median(ratios)
    overheads = [rate / same for rate, same in zip(rates, work)]
    work_cell = _median_range(work, ".0f") + " samples/s"
    overhead_cell = f"**{statistics.median(overheads):.2f}** [{min(overheads):.2f}, {max(overheads):.2f}]"
    few, many = (peaks[copies] for copies in MEMORY_COPIES)
    flat = many["peak_mb"] / few["peak_mb"]
    limit_cell, rate_cell = (_median_range(values, ".0f") + " samples/s" for values in (limits, rates))
    verdict = "met" if ratio >= GOAL_RATIO else "not met"
    ratio_cell = f"**{ratio:.2f}** [{min(ratios):.2f}, {max(ratios):.2f}] (goal >= {GOAL_RATIO}: {verdict})"
    body = f"""## Data loading (`python benchmarks/data_throughput.py`)

{machine_line()}. {images} JPEGs ({kind}), stored by `convirt shards` at short side {STORED_SIDE} in
{shard_count} shards; model `{MODEL}` ({side} px input). Each throughput figure times a whole pass
over the shards, worker processes started inside the clock; the three alternate over
{args.repeats} repeats: median, with the range over repeats in brackets.

| measure | value |
| --- | --- |
| decode limit: the loader's JPEG decode at {side} px + resize, {WORKERS} processes | {limit_cell} |
| training loader, {WORKERS} workers (shuffle, decode, ConVIRT augmentation, tokenise, collate) | {rate_cell} |
| loader / limit, per repeat | {ratio_cell} |
| the same per-sample work (decode, training transform, tokenise), tight loop, {WORKERS} processes | {work_cell} |
| loader / that work, per repeat (what the pipeline itself costs) | {overhead_cell} |
| peak RSS, one pass over {few["shards"]} shards ({few["samples"]} samples) | {few["peak_mb"]:.0f} MB |
| peak RSS, one pass over {many["shards"]} shards ({many["samples"]} samples) | {many["peak_mb"]:.0f} MB |
| {many["shards"]} shards / {few["shards"]} shards (goal: flat) | **{flat:.2f}x** |
| `convirt shards` conversion, 1 worker | {convert[1]:.0f} rows/s |
| `convirt shards` conversion, {WORKERS} workers | {convert[WORKERS]:.0f} rows/s |

The loader hands over compact batches (8-bit, one channel, {side} px); repeating to three channels
and normalising happen at the model (on the GPU when there is one) and are not counted here.
Peak RSS sums the loader process and its {WORKERS} workers (each imports torch; shared pages count
in each), sampled every {SAMPLE_SECONDS * 1000:.0f} ms.
"""
    write_section(args.output, SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
