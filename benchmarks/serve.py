"""A bounded load test of `convirt serve` on 127.0.0.1: latency and throughput of search and diagnosis.

The demo model (`make demo`'s checkpoint) serves an index of 100,000 vectors: the demo's 467
indexed test cases plus random unit vectors with empty metadata (so that search scans an archive
of that size; they are never shown as images). After a warm-up, a fixed number of requests is sent
at 1, 4 and 16 concurrent clients (keep-alive connections of one asyncio loop, each sending its next
request when its answer is in), for `/v1/search` by image, by text, by archive case (its stored
vector) and `/v1/diagnose`; p50/p95/p99 latency, requests per second, errors, the server's resident
memory along the way and the model's pass over one batch alone are written to the ``serve``
section of BENCHMARKS.md, with each goal met or not. It stops by itself. `python benchmarks/serve.py`
(a few minutes on 2 CPU cores; `make demo` first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
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


def request_bytes(kind: str, host: str, image: bytes) -> bytes:
    """The whole HTTP/1.1 request of ``kind``, encoded once by httpx (multipart or form) and replayed."""
    import httpx

    if kind == "search (case)":  # an archive case's stored vector: nothing embedded
        request = httpx.Request("POST", f"http://{host}/v1/search", data={"case": "7", "k": "10"})
    elif kind == "search (text)":
        request = httpx.Request(
            "POST", f"http://{host}/v1/search", data={"text": "enlarged cardiac silhouette", "k": "10"}
        )
    else:
        path = "/v1/search" if kind == "search (image)" else "/v1/diagnose"
        data = {"k": "10"} if kind == "search (image)" else {}
        request = httpx.Request(
            "POST", f"http://{host}{path}", files={"image": ("q.png", image, "image/png")}, data=data
        )
    body = request.read()
    head = f"POST {request.url.raw_path.decode()} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request.headers.items()
    )
    return head.encode() + b"\r\n" + body


async def _client(host: str, port: int, request: bytes, count: int, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            start = time.perf_counter()
            writer.write(request)
            status = int((await reader.readline()).split()[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise RuntimeError("a response without Content-Length: this client reads only sized bodies")
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            errors[0] += status != 200
    finally:
        writer.close()


def load(host: str, port: int, kind: str, clients: int, total: int, image: bytes) -> dict[str, float]:
    """Send ``total`` requests of ``kind`` over ``clients`` keep-alive connections, each waiting for its
    answer before it sends the next; their latencies and errors.

    The clients share the server's two cores, so they must cost little: one asyncio loop replays
    request bytes encoded once and reads sized responses (written here because an HTTP client
    library parses and builds each request in Python: httpx in 16 threads cost the server a large
    share of the cores; a C load generator such as wrk is not on a fresh machine).
    """
    latencies: list[float] = []
    errors = [0]
    request = request_bytes(kind, f"{host}:{port}", image)
    share = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(_client(host, port, request, n, latencies, errors) for n in share))
        return time.perf_counter() - start

    wall = asyncio.run(run())
    ms = np.array(latencies) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "rps": len(latencies) / wall,
        "errors": errors[0],
        "n": len(latencies),
    }


def model_pass_ms(threads: int, image: bytes) -> dict[str, float]:
    """The demo model's pass over one full batch of 16 queries, alone, in this process at the server's
    thread count (median of 5): no request can wait less than its batch's pass."""
    import io

    import torch
    from PIL import Image

    from convirt.data.stream import pad_id_of, trim_padding
    from convirt.data.transforms import image_transform_for
    from convirt.models.sources import load_model

    torch.set_num_threads(threads)
    loaded = load_model(str(DEMO / "checkpoints" / "last.ckpt"))
    model = loaded.model.eval().to(memory_format=torch.channels_last)  # as the service runs it
    transform = image_transform_for(loaded.preprocess_cfg, train=False)
    pixels = torch.stack([transform(Image.open(io.BytesIO(image)).convert("L"))] * 16)
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    tokens = trim_padding(loaded.tokenizer(["enlarged cardiac silhouette"] * 16), pad_id_of(loaded.tokenizer))
    passes = {"image": lambda: model.encode_image(pixels), "text": lambda: model.encode_text(tokens)}
    times = {}
    with torch.inference_mode():
        for name, run in passes.items():
            run()
            spent = []
            for _ in range(5):
                start = time.perf_counter()
                run()
                spent.append((time.perf_counter() - start) * 1000)
            times[name] = float(np.median(spent))
    return times


def serve_and_load(index: Path, requests: dict[str, int], threads: int, soak_rounds: int = 0) -> dict[str, Any]:
    """Start `convirt serve` on ``index``, warm it up with every kind of request at the highest level,
    send the requests at each level, then ``soak_rounds`` rounds of every kind at the highest level;
    results and the server's resident memory along the way."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "convirt.cli.main", "serve", "--model", str(DEMO / "checkpoints" / "last.ckpt")]
    command += ["--index", str(index), "--descriptors", "phantom", "--port", str(port), "--threads", str(threads)]
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
        memory = {"started": resident_mib(server.pid)}
        busiest = max(CLIENTS)
        for kind in requests:  # warm-up, not measured: every path run, its buffers and caches made
            load("127.0.0.1", port, kind, busiest, 4 * busiest, image)
        memory["warm"] = resident_mib(server.pid)
        results: dict[str, dict[int, dict[str, float]]] = {}
        for kind, total in requests.items():
            results[kind] = {c: load("127.0.0.1", port, kind, c, total, image) for c in CLIENTS}
            memory[f"after {kind}"] = resident_mib(server.pid)
        soak = []
        for _ in range(soak_rounds):
            soak.append(sum(load("127.0.0.1", port, kind, busiest, 4 * busiest, image)["errors"] for kind in requests))
            memory[f"soak {len(soak)}"] = resident_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "results": results,
        "memory": memory,
        "soak_errors": sum(soak),
        "soak_requests": 4 * busiest * len(requests) * len(soak),
    }


def main() -> None:
    from convirt._hardware import choose_num_threads, choose_serve_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--work", default=str(ROOT / "artifacts" / "serve-bench"))
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--threads", type=int, help="the server's --threads (default: its own choice)")
    parser.add_argument(
        "--compare-threads",
        type=int,
        default=choose_num_threads(),
        help="also run the levels with the server on this many threads (default: every core; 0: not)",
    )
    parser.add_argument("--soak", type=int, default=16, help="rounds of every kind at 16 clients after the levels")
    parser.add_argument(
        "--quick", action="store_true", help="a check: 8 requests per level (write to a scratch --output)"
    )
    args = parser.parse_args()
    requests = {kind: 8 for kind in REQUESTS} if args.quick else REQUESTS
    soak_rounds = 2 if args.quick else args.soak
    if not (DEMO / "checkpoints" / "last.ckpt").is_file() or not (DEMO / "index" / "info.json").is_file():
        raise SystemExit("run `make demo` first: this benchmark serves its model and index")
    threads = args.threads or choose_serve_threads()
    indexes = {factory: archive_index(Path(args.work), args.vectors, factory) for factory in FACTORIES}
    # The soak runs on the index an archive of this size would be served from (the last factory).
    runs = {
        factory: serve_and_load(index, requests, threads, soak_rounds if factory == FACTORIES[-1] else 0)
        for factory, index in indexes.items()
    }
    other = args.compare_threads if args.compare_threads and args.compare_threads != threads else None
    compared = {factory: serve_and_load(index, requests, other) for factory, index in indexes.items()} if other else {}
    phantom = (DEMO / "phantom" / "images" / "phantom-0-000000.png").read_bytes()
    passes = {n: model_pass_ms(n, phantom) for n in sorted({threads, other or threads})}
    lines = [
        "## `convirt serve` under load",
        "",
        f"{machine_line()}; commit {commit()}. Command: `python benchmarks/serve.py"
        + (f" --threads {args.threads}" if args.threads else "")
        + f"` (server and clients on the same 2 cores, 127.0.0.1; the server on {threads} torch and faiss "
        f"thread(s), its default of every core but one, batches waiting up to 5 ms for company). The demo "
        f"model, an index of {args.vectors:,} vectors (the demo's 467 test cases plus random unit vectors), "
        f"built as {' and as '.join(FACTORIES)}; a fixed number of requests per level from that many concurrent "
        "clients, each a keep-alive connection that sends its next request when its answer is in (one "
        "asyncio loop replaying encoded requests: about 0.1 ms of CPU per request); image requests upload "
        "one 192 px phantom PNG; search by case sends an archive case id (its stored vector: nothing is "
        "embedded). Before the measured requests, every kind is sent 64 times at 16 clients (warm-up).",
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
        results, memory = run["results"], run["memory"]
        diagnose = results["diagnose"]
        ratio = diagnose[16]["rps"] / diagnose[1]["rps"]
        met = {kind: levels[16]["p95"] <= 50 for kind, levels in results.items() if kind.startswith("search")}
        trace = ", ".join(f"{name} {mib:.0f}" for name, mib in memory.items())
        verdicts = [
            "search p95 at 16 clients <= 50 ms: "
            + "; ".join(f"{k} {'met' if ok else 'not met'} ({results[k][16]['p95']:.0f} ms)" for k, ok in met.items()),
            f"diagnose p95 at 1 client <= 500 ms: {'met' if diagnose[1]['p95'] <= 500 else 'not met'} "
            f"({diagnose[1]['p95']:.0f} ms)",
            f"diagnose throughput at 16 clients >= 2x at 1: {'met' if ratio >= 2 else 'not met'} ({ratio:.2f}x)",
            f"errors: {sum(r['errors'] for levels in results.values() for r in levels.values()) + run['soak_errors']}",
        ]
        soaked = [mib for name, mib in memory.items() if name.startswith("soak")]
        if soaked:
            half = len(soaked) // 2
            bounded = max(soaked[half:]) <= max(soaked[:half]) * 1.01
            verdicts.append(
                f"memory flat (the second half of the {len(soaked)} soak rounds, {run['soak_requests']:,} requests, "
                f"never above the first half's peak + 1%): {'met' if bounded else 'not met'} (peaks "
                f"{max(soaked[:half]):.0f} and {max(soaked[half:]):.0f} MiB)"
            )
        lines.append(
            f"{factory}: server resident memory (MiB) {trace}, over "
            f"{sum(r['n'] for levels in results.values() for r in levels.values()) + run['soak_requests']:,} "
            "requests after warm-up. Goals: " + "; ".join(verdicts) + "."
        )
        lines.append("")
    bound = min(p["image"] for p in passes.values())
    lines.append(
        "The model's pass over a full batch of 16 queries, alone (median of 5): "
        + "; ".join(f"on {n} thread(s) images {p['image']:.0f} ms, texts {p['text']:.0f} ms" for n, p in passes.items())
        + ". Sixteen clients keep sixteen queries in the server, so whatever the batching a request waits on "
        f"average at least the model's time for sixteen: searches by image cannot average under {bound:.0f} ms "
        "here" + (", above the 50 ms goal (a smaller or faster image tower would be needed)." if bound > 50 else ".")
    )
    if compared:
        lines += [
            "",
            f"The same levels with the server on {other} threads (`--threads {other}`), at 16 clients:",
            "",
            f"| index | endpoint | p95 ms, {threads} thread(s) | p95 ms, {other} | requests/s, {threads} "
            f"| requests/s, {other} |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for factory, run in compared.items():
            for kind, levels in run["results"].items():
                mine, theirs = runs[factory]["results"][kind][16], levels[16]
                lines.append(
                    f"| {factory} | {kind} | {mine['p95']:.0f} | {theirs['p95']:.0f} | {mine['rps']:.1f} | "
                    f"{theirs['rps']:.1f} |"
                )
    write_section(Path(args.output), "serve", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
