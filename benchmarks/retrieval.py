"""Retrieval at scale: build time, size, memory, QPS and recall@10 against exact search.

Runs `convirt.retrieval.build_index` on clustered synthetic embeddings (``--n`` x 512, default
1,000,000) for Flat, HNSW32 and IVF-PQ with exact re-ranking, and writes its table into the
``retrieval`` section of BENCHMARKS.md. Run with `make bench` or
`python benchmarks/retrieval.py --n 1000000`.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from _markdown import machine_line, write_section
from _process import resident_bytes

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
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
