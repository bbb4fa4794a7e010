"""Data-loading speed and memory: the streaming loader against the raw decode limit.

1. Throughput: shards of radiograph-sized JPEGs (short side 512, as `convirt shards` stores them
   by default) are streamed by the training loader (`ShardDataModule`'s pipeline: shuffle,
   decode, ConVIRT augmentation to the model's 224 px, tokenisation, collation) with 2 worker
   processes, and the same JPEGs are decoded and resized to 224 px by a tight PIL loop in 2
   processes: the most any loader could do on these cores. Reported: samples/s of each
   (steady state, after the first batches) and their ratio (goal >= 0.85).
2. Memory: peak resident memory of the loader process and its workers while streaming one pass
   over 10 shards and over 100 shards of the same size (goal: flat).
3. Conversion: `convirt shards` rows/s with 1 and 2 workers on the same images.

Writes the ``data-throughput`` section of BENCHMARKS.md. `python benchmarks/data_throughput.py`.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _markdown import machine_line, write_section
from PIL import Image

SECTION = "data-throughput"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
MODEL = "demo-effnet-minilm"


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
    subprocess.run([sys.executable, "-m", "convirt.cli.main", "shards", "--input", str(table), "--output", str(out),
                    "--image-size", str(image_size), "--shard-size", str(shard_size), "--workers", str(workers),
                    "--val-fraction", "0", "--test-fraction", "0", "--keep-duplicates"], check=True,
                   capture_output=True)
    rows = sum(1 for _ in open(table)) - 1
    return rows / (time.perf_counter() - start)


def _decode_many(payloads: list[bytes]) -> int:
    for data in payloads:
        with Image.open(io.BytesIO(data)) as image:
            image.convert("L").resize((224, 224), Image.Resampling.BILINEAR)
    return len(payloads)


def decode_limit(urls: list[str], processes: int = 2) -> float:
    """Samples/s of a tight PIL decode + resize loop over the shards' JPEGs in ``processes`` processes."""
    import tarfile

    payloads = []
    for url in urls:
        with tarfile.open(url) as tar:
            payloads += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")]
    chunks = [payloads[i::processes] for i in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_decode_many, [chunk[:8] for chunk in chunks])  # warm-up
        start = time.perf_counter()
        done = sum(pool.map(_decode_many, chunks))
    return done / (time.perf_counter() - start)


def loader_rate(shards: Path, workers: int = 2, batch_size: int = 64, skip: int = 2) -> tuple[float, int]:
    """Samples/s of one pass of the training loader (steady state: the first ``skip`` batches excluded)."""
    from convirt.training import ShardDataModule

    data = ShardDataModule(str(shards), model_name=MODEL, batch_size=batch_size, num_workers=workers,
                           shuffle_buffer=256, seed=0)
    data.setup("fit")
    loader = data.train_dataloader()
    count, start = 0, None
    for index, batch in enumerate(loader):
        if index == skip:
            start, count = time.perf_counter(), 0
        count += len(batch["key"])
    assert start is not None, "too few batches to measure"
    return count / (time.perf_counter() - start), count


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
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def memory_run(shards: str) -> None:
    """Child process: one loader pass over ``shards``; prints peak MB and samples as JSON."""
    with PeakMemory() as memory:
        _, samples = loader_rate(Path(shards), workers=2, batch_size=32, skip=0)
    print(json.dumps({"peak_mb": memory.peak / 2**20, "samples": samples}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="images in the throughput run")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--memory-run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_run:
        memory_run(args.memory_run)
        return
    from convirt.data.writer import shard_urls

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        table = real_images(3, tmp / "real")
        kind = "real radiographs: the 529 covid-pairs JPEGs, 3 copies each"
        if table is None:
            table = draw_images(tmp / "images", args.images, 600)
            kind = f"{args.images} drawn 600 x 720 images (../shared/data absent)"
        images = sum(1 for _ in open(table)) - 1
        convert = {workers: make_shards(table, tmp / f"shards-{workers}", 512, 100, workers) for workers in (1, 2)}
        shards = tmp / "shards-2"
        limit = decode_limit(shard_urls(shards, "train"))
        rate, _ = loader_rate(shards)
        small = draw_images(tmp / "small", 500, 160, seed=1)
        peaks = {}
        for copies in (1, 10):
            # The same 500 images written `copies` times: 10 shards of 50, or 100 shards of 50.
            folder = tmp / f"mem-{copies}"
            if copies == 1:
                make_shards(small, folder, 128, 50)
            else:
                lines = small.read_text().splitlines()
                rows = [lines[0]] + [line.replace(",p", f",c{c}-p") for c in range(copies) for line in lines[1:]]
                table10 = tmp / "small" / "rows10.csv"
                table10.write_text("\n".join(rows) + "\n")
                subprocess.run([sys.executable, "-m", "convirt.cli.main", "shards", "--input", str(table10),
                                "--output", str(folder), "--image-size", "128", "--shard-size", "50",
                                "--val-fraction", "0", "--test-fraction", "0", "--keep-duplicates"],
                               check=True, capture_output=True)
            result = subprocess.run([sys.executable, __file__, "--memory-run", str(folder)], check=True,
                                    capture_output=True, text=True)
            peaks[copies] = json.loads(result.stdout.strip().splitlines()[-1])
    ratio = rate / limit
    flat = peaks[10]["peak_mb"] / peaks[1]["peak_mb"]
    body = f"""## Data loading (`python benchmarks/data_throughput.py`)

{machine_line()}. {images} JPEGs ({kind}), stored by
`convirt shards` at short side 512, 100 per shard; model `{MODEL}` (224 px input).

| measure | value |
| --- | --- |
| raw decode limit: PIL decode + resize to 224, 2 processes | {limit:.0f} samples/s |
| training loader: 2 workers (shuffle, decode, ConVIRT augmentation, tokenise, collate) | {rate:.0f} samples/s |
| loader / limit (goal >= 0.85) | **{ratio:.2f}** ({'met' if ratio >= 0.85 else 'not met'}) |
| peak RSS, one pass over 10 shards ({peaks[1]['samples']} samples) | {peaks[1]['peak_mb']:.0f} MB |
| peak RSS, one pass over 100 shards ({peaks[10]['samples']} samples) | {peaks[10]['peak_mb']:.0f} MB |
| 100 shards / 10 shards (goal: flat) | **{flat:.2f}x** |
| `convirt shards` conversion, 1 worker | {convert[1]:.0f} rows/s |
| `convirt shards` conversion, 2 workers | {convert[2]:.0f} rows/s |

The loader hands over compact batches (8-bit, one channel, 224 px); repeating to three channels
and normalising happen at the model (on the GPU when there is one) and are not counted here.
Peak RSS sums the loader process and its 2 workers (each imports torch; shared pages count in
each), sampled every 50 ms.
"""
    write_section(args.output, SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
