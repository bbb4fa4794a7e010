"""Retrieval at scale: build time, size, memory, QPS and recall@10 against exact search.

Runs `convirt.retrieval.build_index` on clustered synthetic embeddings (``--n`` x 512, default
1,000,000) for Flat, HNSW32 and IVF-PQ with exact re-ranking, and writes its table into the
``retrieval`` section of BENCHMARKS.md. Run with `make bench` or
`python benchmarks/retrieval.py --n 1000000`.

``--out-of-core`` measures an index larger than memory instead (section ``retrieval-out-of-core``, or
``retrieval-out-of-core-FACTORY`` for another ``--factory`` than the default IVF-PQ):
``--n`` (default 10,000,000) x 256 synthetic vectors written as an embedding folder in parts, built
by `convirt index build --out-of-core` in its own process (time, peak resident memory, and its
anonymous part: what the kernel cannot drop), searched
with its lists mapped (queries/s, recall@10 against a streamed exact search, memory). Each stage
skips what an earlier run finished (``--work``), so a killed run resumes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from _markdown import machine_line, write_section
from _process import ROOT, peak_bytes, reset_peak, resident_bytes

from convirt.retrieval import build_index, save_index, search
from convirt.retrieval.index import set_search_params

SECTION = "retrieval"
CENTRES, K = 1000, 10  # clusters of the synthetic embeddings; neighbours searched (recall@K)
GOAL_RECALL, GOAL_SPEEDUP = 0.95, 20  # an approximate index at least this recall at this many times exact's speed


def clustered(n: int, means: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors scattered around the rows of ``means``, built in blocks to bound memory."""
    out = np.empty((n, means.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        block = means[rng.integers(len(means), size=stop - start)] + rng.normal(
            size=(stop - start, means.shape[1])
        ).astype(np.float32)
        faiss.normalize_L2(block)
        out[start:stop] = block
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=None, help="vectors (default 1,000,000; 10,000,000 out of core)")
    parser.add_argument("--dim", type=int, default=None, help="dimension (default 512; 256 out of core)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--out-of-core", action="store_true", help="the index larger than memory instead")
    parser.add_argument("--work", default=str(ROOT / "artifacts" / "bench-retrieval-ooc"))
    parser.add_argument("--factory", default=OOC_FACTORY)
    parser.add_argument("--delete-vectors", action="store_true", help="out of core: delete the raw vectors at the end")
    args = parser.parse_args()
    if args.out_of_core:
        args.n, args.dim = args.n or 10_000_000, args.dim or 256
        out_of_core(args)
        return
    args.n, args.dim = args.n or 1_000_000, args.dim or 512

    rng = np.random.default_rng(0)
    means = rng.normal(size=(CENTRES, args.dim)).astype(np.float32)
    base = clustered(args.n, means, rng)
    queries = clustered(args.queries, means, rng)

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(base)
    start = time.perf_counter()
    _, truth = exact.search(queries, K)
    exact_qps = args.queries / (time.perf_counter() - start)
    del exact
    gc.collect()

    configs = [
        ("Flat", False, [""]),
        ("HNSW32", False, ["efSearch=64", "efSearch=128", "efSearch=256", "efSearch=512"]),
        # Re-ranking depth (k_factor_rf) matters more than nprobe here: a query's true neighbours
        # sit in its own cluster's few lists, but PQ codes cannot order them finely.
        (
            "IVF4096,PQ64",
            True,
            [
                "nprobe=16,k_factor_rf=8",
                "nprobe=16,k_factor_rf=32",
                "nprobe=32,k_factor_rf=32",
                "nprobe=64,k_factor_rf=64",
            ],
        ),
        # 4-bit fast-scan PQ: coarser codes, scanned with SIMD lookups, so deeper re-ranking is cheap.
        (
            "IVF4096,PQ64x4fs",
            True,
            [
                "nprobe=16,k_factor_rf=32",
                "nprobe=16,k_factor_rf=64",
                "nprobe=32,k_factor_rf=64",
                "nprobe=32,k_factor_rf=128",
            ],
        ),
    ]
    rows = []
    for factory, refine, settings in configs:
        before = resident_bytes()
        start = time.perf_counter()
        index, info = build_index(base, factory, refine=refine, train_size=100_000)
        build_seconds = time.perf_counter() - start
        memory = resident_bytes() - before
        with tempfile.TemporaryDirectory() as tmp:
            save_index(index, info, Path(tmp) / "idx")
            size = (Path(tmp) / "idx" / "index.faiss").stat().st_size
        for setting in settings:
            set_search_params(index, setting)
            search(index, queries[:10], K)  # warm up
            start = time.perf_counter()
            _, ids = search(index, queries, K)
            qps = args.queries / (time.perf_counter() - start)
            recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, truth)]))
            name = factory + (" + exact re-ranking" if refine else "")
            rows.append((name, setting or "-", build_seconds, size, memory, qps, qps / exact_qps, recall))
            print(rows[-1], flush=True)
        del index
        gc.collect()

    lines = [
        "## Retrieval",
        "",
        f"`python benchmarks/retrieval.py --n {args.n}` on "
        f"{time.strftime('%Y-%m-%d')}, faiss {faiss.__version__} ({machine_line()}): {args.n:,} x {args.dim} "
        "clustered unit vectors "
        f"({CENTRES:,} centres), {args.queries:,} queries, k = {K}. Exact search (IndexFlatIP): {exact_qps:,.0f} "
        "queries/s.",
        "Memory is the growth of resident memory while building (the input array itself excluded).",
        "",
        f"| index | search parameters | build s | file MB | build memory MB | queries/s | x exact | recall@{K} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {n} | {s} | {b:,.1f} | {size / 2**20:,.0f} | {m / 2**20:,.0f} | {q:,.0f} | {x:,.1f} | {r:.3f} |"
            for n, s, b, size, m, q, x, r in rows
        ],
        "",
        _goal(rows),
    ]
    write_section(Path(args.output), SECTION, "\n".join(lines))
    print("\n".join(lines))


def _goal(rows: list[tuple]) -> str:
    """The goal line: the fastest approximate operating point at GOAL_RECALL, and whether it is GOAL_SPEEDUP x exact."""
    goal = f"Goal (recall@{K} >= {GOAL_RECALL} at >= {GOAL_SPEEDUP}x exact)"
    good = [row for row in rows if row[7] >= GOAL_RECALL and row[0] != "Flat"]
    if not good:
        return f"{goal}: no approximate operating point reached recall@{K} {GOAL_RECALL}."
    name, setting, *_, speedup, recall = max(good, key=lambda row: row[6])
    verdict = "met" if speedup >= GOAL_SPEEDUP else "not met"
    return (
        f"{goal}: {verdict}; fastest point with recall@{K} >= {GOAL_RECALL}: "
        f"{name}, {setting}: recall@{K} {recall:.3f} at {speedup:.1f}x exact."
    )


OOC_SECTION = "retrieval-out-of-core"
# PQ64 (64 bytes a vector, no re-ranking: that would hold every vector in memory); "np" skips faiss's
# polysemous training of the codes, minutes on 2 cores for a Hamming pre-filter convirt never uses.
OOC_FACTORY = "IVF4096,PQ64np"
OOC_TRAIN, OOC_PART, OOC_CENTRES, LATENT = 200_000, 100_000, 1000, 16
NPROBES = (4, 8, 16, 32, 64)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Mixture:
    """Unit vectors of a seeded Gaussian mixture whose every cluster spans its own random ``LATENT``-d
    subspace (plus a little isotropic noise): neighbours as real embeddings have them, low-dimensional
    within a cluster, so that recall measures the index and not noise."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.means = rng.standard_normal((OOC_CENTRES, dim), dtype=np.float32)
        self.bases = rng.standard_normal((OOC_CENTRES, LATENT, dim), dtype=np.float32) * 0.25

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        labels = rng.integers(OOC_CENTRES, size=n)
        latent = rng.standard_normal((n, LATENT), dtype=np.float32)
        out = rng.standard_normal((n, self.means.shape[1]), dtype=np.float32) * 0.1
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(OOC_CENTRES + 1))
        for c in range(OOC_CENTRES):
            rows = order[bounds[c] : bounds[c + 1]]
            out[rows] += self.means[c] + latent[rows] @ self.bases[c]
        faiss.normalize_L2(out)
        return out


def _write_vectors(emb: Path, n: int, dim: int) -> list[Path]:
    """The embedding folder of ``n`` mixture vectors in parts of OOC_PART (part P drawn with seed (1, P)): the
    format `convirt embed` writes, so the build below is the command a user runs."""
    emb.mkdir(parents=True, exist_ok=True)
    (emb / "info.json").write_text(json.dumps({"model_name": "synthetic-mixture", "modality": "image"}))
    mixture, paths = Mixture(dim), []
    for number, start in enumerate(range(0, n, OOC_PART)):
        name = emb / f"part-000-{number:06d}"
        paths.append(name.with_suffix(".npy"))
        if name.with_suffix(".jsonl").is_file():
            continue
        vectors = mixture.sample(min(OOC_PART, n - start), np.random.default_rng([1, number]))
        with open(name.with_suffix(".npy.tmp"), "wb") as handle:
            np.save(handle, vectors)
        os.replace(name.with_suffix(".npy.tmp"), name.with_suffix(".npy"))
        rows = "".join(json.dumps({"key": f"syn-{start + i:08d}"}) + "\n" for i in range(len(vectors)))
        name.with_suffix(".jsonl.tmp").write_text(rows)
        os.replace(name.with_suffix(".jsonl.tmp"), name.with_suffix(".jsonl"))  # last: the part is complete
        if number % 10 == 9:
            _log(f"vectors: {start + len(vectors):,} of {n:,}")
    return paths


def _truth(work: Path, parts: list[Path], queries: int, dim: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Queries from the same mixture (seed 2) and their exact top-K, by one streamed pass over the parts
    (faiss.contrib.exhaustive_search.knn_ground_truth); kept in ``truth.npz``."""
    from faiss.contrib.exhaustive_search import knn_ground_truth

    path = work / "truth.npz"
    if path.is_file():
        saved = np.load(path)
        return saved["queries"], saved["ids"], float(saved["seconds"])
    xq = Mixture(dim).sample(queries, np.random.default_rng(2))
    start = time.perf_counter()
    _, ids = knn_ground_truth(xq, (np.load(p, mmap_mode="r") for p in parts), K, faiss.METRIC_INNER_PRODUCT, ngpu=0)
    seconds = time.perf_counter() - start
    np.savez(path, queries=xq, ids=ids, seconds=seconds)
    return xq, ids, seconds


def _build(work: Path, emb: Path, index: Path, factory: str) -> dict:
    """`convirt index build --out-of-core` in its own process: wall time and its peak resident memory
    (``ru_maxrss`` from wait4: anonymous memory and the mapped file pages it touched)."""
    record = index.with_name(index.name + ".build.json")
    if record.is_file() and (index / "info.json").is_file():
        return json.loads(record.read_text())
    resumed = index.with_name(index.name + ".work").exists()
    command = [sys.executable, "-m", "convirt.cli.main", "index", "build", "--embeddings", str(emb)]
    command += ["--factory", factory, "--out-of-core", "--train-size", str(OOC_TRAIN)]
    command += ["--search-params", "nprobe=16", "--output", str(index)]
    _log("$ convirt " + " ".join(command[3:]))
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    anonymous = _AnonymousPeak(process.pid)
    _, status, usage = os.wait4(process.pid, 0)
    anonymous.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"index build failed ({os.waitstatus_to_exitcode(status)})")
    done = {"seconds": time.perf_counter() - start, "peak_bytes": usage.ru_maxrss * 1024, "resumed": resumed}
    done["anonymous_peak_bytes"] = anonymous.peak
    done["load"] = os.getloadavg()[1]  # the 5-minute load average as it ended: the 2 cores are shared
    record.write_text(json.dumps(done))
    return done


def out_of_core(args: argparse.Namespace) -> None:
    from convirt.retrieval import load_index

    work, raw = Path(args.work), args.n * args.dim * 4
    slug = "" if args.factory == OOC_FACTORY else "-" + "".join(c if c.isalnum() else "-" for c in args.factory).lower()
    emb, index_folder = work / "embeddings", work / f"index{slug}"
    work.mkdir(parents=True, exist_ok=True)
    _log(f"{args.n:,} x {args.dim} float32 = {raw / 1e9:.2f} GB into {emb}")
    start = time.perf_counter()
    parts = _write_vectors(emb, args.n, args.dim)
    _log(f"vectors written ({time.perf_counter() - start:.0f} s); exact top-{K} of {args.queries} queries")
    queries, truth, exact_seconds = _truth(work, parts, args.queries, args.dim)
    _log(f"exact search: {exact_seconds:.0f} s; building")
    built = _build(work, emb, index_folder, args.factory)
    _log(f"built in {built['seconds']:.0f} s, peak resident {built['peak_bytes'] / 1e9:.2f} GB; searching")
    reset_peak()
    before = resident_bytes()
    start_split = _resident_split()
    index, _ = load_index(index_folder)
    loaded = _resident_split()
    for query in queries[:10]:  # one at a time, as `convirt index query` does: each maps only its lists
        index.search(query[None], K)
    few = _resident_split()
    grown = [(a - a0) / 2**20 for a, a0 in zip(loaded + few, start_split + start_split)]
    rows = []
    for nprobe in NPROBES:
        faiss.extract_index_ivf(index).nprobe = nprobe
        index.search(queries[:50], K)  # warm up: the probed lists' pages
        seconds = []
        for _ in range(3):  # the best of three: the 2 cores are shared
            start = time.perf_counter()
            _, ids = index.search(queries, K)
            seconds.append(time.perf_counter() - start)
        qps = len(queries) / min(seconds)
        recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, truth)]))
        nearest = float(np.mean([b[0] in a for a, b in zip(ids, truth)]))
        rows.append((nprobe, qps, recall, nearest, resident_bytes() - before))
        _log(f"nprobe={nprobe}: {qps:,.0f} queries/s, recall@{K} {recall:.3f}, nearest in top {K} {nearest:.3f}")
    search_peak = peak_bytes() - before
    sizes = {name: (index_folder / name).stat().st_size for name in ("index.faiss", "lists.ivfdata", "metadata.jsonl")}
    goal, anonymous = raw / 4, built.get("anonymous_peak_bytes", float("nan"))
    lines = [
        "## Retrieval: an index larger than memory" + (f" ({args.factory})" if slug else ""),
        "",
        f"`python benchmarks/retrieval.py --out-of-core --n {args.n}"
        + (f" --factory {args.factory}" if slug else "")
        + f"` on {time.strftime('%Y-%m-%d')}, faiss "
        f"{faiss.__version__} ({machine_line()}), {_memory_line()}: {args.n:,} x {args.dim} float32 unit vectors "
        f"({raw / 1e9:.2f} GB raw) of a seeded Gaussian mixture ({OOC_CENTRES:,} clusters, each spanning its own "
        f"random {LATENT}-d subspace, plus noise), written as an embedding folder of {len(parts)} parts. "
        f"`convirt index build --factory {args.factory} --out-of-core --train-size {OOC_TRAIN:,}` in its own process: "
        f"trained on a seeded sample of {OOC_TRAIN:,} read across the parts, filled part by part into sub-indexes "
        "of about 256 MiB of codes, merged into faiss's on-disk inverted lists (`lists.ivfdata`).",
        "",
        "| build s | build peak resident GB | x raw | of it anonymous, peak GB | x raw | index.faiss MB | "
        "lists.ivfdata MB | metadata.jsonl MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {built['seconds']:,.0f}{' (resumed)' if built['resumed'] else ''} | {built['peak_bytes'] / 1e9:.2f} | "
        f"{built['peak_bytes'] / raw:.3f} | {anonymous / 1e9:.2f} | {anonymous / raw:.3f} | "
        f"{sizes['index.faiss'] / 2**20:,.0f} | "
        f"{sizes['lists.ivfdata'] / 2**20:,.0f} | {sizes['metadata.jsonl'] / 2**20:,.0f} |",
        "",
        "Search: the folder read by `load_index`, its lists mapped, not read (resident growth, anonymous + mapped "
        f"file pages: {grown[0]:,.0f} + {grown[1]:,.0f} MB once loaded, {grown[2]:,.0f} + {grown[3]:,.0f} MB after 10 "
        "single queries at nprobe=16: the kernel maps the page cache around each list a query reads, here in large "
        f"blocks), {len(queries):,} queries in one batch "
        f"after a 50-query warm-up (best of three), against the exact top-{K} of one streamed pass over the parts "
        f"({exact_seconds:,.0f} s, {len(queries) / exact_seconds:,.1f} queries/s); load average "
        f"{os.getloadavg()[0]:.1f} on the 2 cores while searching{_build_load(built)}. Resident growth of the "
        "searching process after each row (rows in order, so it accumulates): the index's small part "
        "(quantizer, codebooks, list offsets) and the pages of the lists probed so far, mapped from the page cache; "
        "peak "
        f"{search_peak / 2**20:,.0f} MB.",
        "",
        f"| nprobe | queries/s | recall@{K} | nearest in top {K} | resident growth MB |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {nprobe} | {qps:,.0f} | {recall:.3f} | {nearest:.3f} | {grown / 2**20:,.0f} |"
            for nprobe, qps, recall, nearest, grown in rows
        ],
        "",
        f"Goal (build peak resident memory < 25% of the raw vectors, {goal / 1e9:.2f} GB): "
        f"{'met' if built['peak_bytes'] < goal else 'not met'} ({built['peak_bytes'] / 1e9:.2f} GB in all; "
        f"{anonymous / 1e9:.2f} GB of it anonymous). The resident peak is the merge: the process's own memory "
        "(Python, torch imported with `convirt.embeddings`, faiss, one sub-index's lists being filled) and the "
        "sub-indexes' lists read and the merged lists written, both mapped: file pages, which the kernel drops "
        "under memory pressure, so the anonymous peak is the part bounded whatever the index's size; the mapped "
        f"part grows with the codes ({sizes['lists.ivfdata'] / 1e9:.2f} GB of lists here). recall@{K} is the "
        f"share of the exact top {K} found: compressed codes without re-ranking cap it.",
    ]
    write_section(Path(args.output), OOC_SECTION + slug, "\n".join(lines))
    print("\n".join(lines))
    if args.delete_vectors:
        for path in emb.glob("part-*"):
            path.unlink()


class _AnonymousPeak:
    """The most anonymous resident memory (``RssAnon``: heap and private pages, which the kernel cannot
    drop, unlike mapped file pages) a process held, sampled every 50 ms from a thread."""

    def __init__(self, pid: int) -> None:
        import threading

        self.path, self.peak, self.done = Path(f"/proc/{pid}/status"), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.05):
            try:
                line = next(x for x in self.path.read_text().splitlines() if x.startswith("RssAnon:"))
            except (OSError, StopIteration):  # ended (or a zombie without its memory lines)
                continue
            self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def _resident_split() -> tuple[int, int]:
    """Anonymous and file-backed resident bytes of this process (mapped index lists count as the latter)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["RssAnon"].split()[0]) * 1024, int(fields["RssFile"].split()[0]) * 1024


def _build_load(built: dict) -> str:
    return f", {built['load']:.1f} as the build ended" if "load" in built else ""


def _memory_line() -> str:
    with open("/proc/meminfo", encoding="ascii") as handle:
        total = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemTotal:"))
    return f"{total / 2**30:.0f} GiB memory"


if __name__ == "__main__":
    main()
