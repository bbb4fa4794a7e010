"""A bounded load test of `convirt serve` on 127.0.0.1: latency and throughput of search and diagnosis.

The demo model (`make demo`'s checkpoint) serves an index of 100,000 vectors: the demo's 467
indexed test cases plus random unit vectors with empty metadata (so that search scans an archive
of that size; they are never shown as images). A fixed number of requests is sent at 1, 4 and 16
concurrent clients (threads with their own HTTP connection), for `/v1/search` by image, by text,
by archive case (its stored vector) and `/v1/diagnose`; p50/p95/p99 latency, requests per second,
errors, and the server's resident memory before and after are written to the ``serve`` section
of BENCHMARKS.md, with each goal met or not. It stops by itself. `python benchmarks/serve.py`
(a few minutes on 2 CPU cores; `make demo` first).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _markdown import commit, machine_line, write_section

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "artifacts" / "demo"
CLIENTS = (1, 4, 16)
FACTORIES = ("Flat", "HNSW32")  # exact search, and the graph index an archive of this size would use
REQUESTS = {"search (image)": 160, "search (text)": 160, "search (case)": 320, "diagnose": 64}  # per concurrency level


def archive_index(out: Path, size: int, factory: str = "Flat") -> Path:
    """The demo's index padded to ``size`` random unit vectors, as a ``factory`` index (kept in ``out``)."""
    from convirt.models.sources import load_model
    from convirt.retrieval import build_index_folder, index_vectors, load_index_folder

    folder = out / (f"index-{size}" if factory == "Flat" else f"index-{size}-{factory}")
    if (folder / "info.json").is_file():
        return folder
    demo = load_index_folder(DEMO / "index")
    _, vectors = index_vectors(demo.index)
    filler = np.random.default_rng(0).standard_normal((size - len(vectors), vectors.shape[1])).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    rows = [*demo.metadata, *({"key": f"filler-{i}", "labels": []} for i in range(len(filler)))]
    fingerprint = demo.info.fingerprint or None
    if fingerprint is None:
        from convirt.models.fingerprint import model_fingerprint

        fingerprint = model_fingerprint(load_model(str(DEMO / "checkpoints" / "last.ckpt")))
    build_index_folder(np.concatenate([vectors, filler]), rows, folder, factory, fingerprint=fingerprint)
    return folder


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, kind: str, clients: int, total: int, image: bytes) -> dict[str, float]:
    """Send ``total`` requests of ``kind`` from ``clients`` threads; their latencies and errors."""
    import httpx

    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    share = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]

    def client(count: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(count):
                start = time.perf_counter()
                if kind == "search (case)":  # an archive case's stored vector: nothing embedded
                    response = http.post("/v1/search", data={"case": "7", "k": "10"})
                elif kind == "search (text)":
                    response = http.post("/v1/search", data={"text": "enlarged cardiac silhouette", "k": "10"})
                elif kind == "search (image)":
                    response = http.post("/v1/search", files={"image": ("q.png", image, "image/png")}, data={"k": "10"})
                else:
                    response = http.post("/v1/diagnose", files={"image": ("q.png", image, "image/png")})
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    errors[0] += response.status_code != 200

    threads = [threading.Thread(target=client, args=(count,)) for count in share]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "rps": len(latencies) / wall,
        "errors": errors[0],
        "n": len(latencies),
    }


def serve_and_load(index: Path, requests: dict[str, int]) -> dict[str, Any]:
    """Start `convirt serve` on ``index``, send the requests at each level; results and resident memory."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "convirt.cli.main", "serve", "--model", str(DEMO / "checkpoints" / "last.ckpt")]
    command += ["--index", str(index), "--descriptors", "phantom", "--port", str(port)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, **quiet)  # type: ignore[call-overload]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise SystemExit("the server did not start within 3 minutes")
        image = (DEMO / "phantom" / "images" / "phantom-0-000000.png").read_bytes()
        load(url, "diagnose", 1, 4, image)  # warm-up, not measured
        before = resident_mib(server.pid)
        results = {kind: {c: load(url, kind, c, total, image) for c in CLIENTS} for kind, total in requests.items()}
        after = resident_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"results": results, "before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--work", default=str(ROOT / "artifacts" / "serve-bench"))
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument(
        "--quick", action="store_true", help="a check: 8 requests per level (write to a scratch --output)"
    )
    args = parser.parse_args()
    requests = {kind: 8 for kind in REQUESTS} if args.quick else REQUESTS
    if not (DEMO / "checkpoints" / "last.ckpt").is_file() or not (DEMO / "index" / "info.json").is_file():
        raise SystemExit("run `make demo` first: this benchmark serves its model and index")
    runs = {
        factory: serve_and_load(archive_index(Path(args.work), args.vectors, factory), requests)
        for factory in FACTORIES
    }
    lines = [
        "## `convirt serve` under load",
        "",
        f"{machine_line()}; commit {commit()}. Command: `python benchmarks/serve.py` (server and clients on the same "
        f"2 cores, 127.0.0.1). The demo model, an index of {args.vectors:,} vectors (the demo's 467 test cases "
        f"plus random unit vectors), built as {' and as '.join(FACTORIES)}; a fixed number of requests per level, "
        "each client a thread with its own connection; image requests upload one 192 px phantom PNG; "
        "search by case sends an archive case id (its stored vector: nothing is embedded).",
        "",
        "| index | endpoint | clients | requests | p50 ms | p95 ms | p99 ms | requests/s | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for factory, run in runs.items():
        for kind, levels in run["results"].items():
            for clients, r in levels.items():
                lines.append(
                    f"| {factory} | {kind} | {clients} | {r['n']} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
                    f"{r['rps']:.1f} | {r['errors']} |"
                )
    lines.append("")
    for factory, run in runs.items():
        results = run["results"]
        diagnose = results["diagnose"]
        ratio = diagnose[16]["rps"] / diagnose[1]["rps"]
        met = {kind: levels[16]["p95"] <= 50 for kind, levels in results.items() if kind.startswith("search")}
        verdicts = [
            "search p95 at 16 clients <= 50 ms: "
            + "; ".join(f"{k} {'met' if ok else 'not met'} ({results[k][16]['p95']:.0f} ms)" for k, ok in met.items()),
            f"diagnose p95 at 1 client <= 500 ms: {'met' if diagnose[1]['p95'] <= 500 else 'not met'} "
            f"({diagnose[1]['p95']:.0f} ms)",
            f"diagnose throughput at 16 clients >= 2x at 1: {'met' if ratio >= 2 else 'not met'} ({ratio:.2f}x)",
            f"errors: {sum(r['errors'] for levels in results.values() for r in levels.values())}",
        ]
        lines.append(
            f"{factory}: server resident memory {run['before']:.0f} MiB after warm-up, {run['after']:.0f} MiB after "
            f"all {sum(r['n'] for levels in results.values() for r in levels.values())} requests. Goals: "
            + "; ".join(verdicts)
            + "."
        )
        lines.append("")
    write_section(Path(args.output), "serve", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
