"""A bounded load test of `convirt serve` on 127.0.0.1: latency and throughput of search and diagnosis.

The demo model (`make demo`'s checkpoint) serves an index of 100,000 vectors: the demo's 467
indexed test cases plus random unit vectors with empty metadata (so that search scans an archive
of that size; they are never shown as images). After a warm-up, a fixed number of requests is sent
at 1, 4 and 16 concurrent clients (keep-alive connections of one asyncio loop, each sending its next
request when its answer is in), for `/v1/search` by image, by text, by archive case (its stored
vector) and `/v1/diagnose`; p50/p95/p99 latency, requests per second, errors, the server's resident
memory along the way and the model's pass over one batch alone are written to the ``serve``
section of BENCHMARKS.md, with each goal met or not.

Then a soak on the HNSW32 index (its own server, uploads limited to 4 MiB): a fixed number of good
requests (the four kinds in turn) from 8 keep-alive clients, clean, and again with one request in
ten hostile (bad uploads, bodies over the limit, requests cancelled by their client), alternated and
repeated; p50/p95/p99 of the good requests, the answers to the hostile ones (client side and in the
server's log) and the server's resident memory sampled every second go to the ``serve-soak``
section. It stops by itself. `python benchmarks/serve.py` (a few minutes on 2 CPU cores, the soak
about 4 of them; `make demo` first); `--only soak` runs the soak alone, `--only levels` the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _markdown import commit, machine_line, write_section

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "artifacts" / "demo"
CLIENTS = (1, 4, 16)
FACTORIES = ("Flat", "HNSW32")  # exact search, and the graph index an archive of this size would use
REQUESTS = {"search (image)": 160, "search (text)": 160, "search (case)": 320, "diagnose": 64}  # per concurrency level
MIB = 1024 * 1024
HOSTILE_EVERY = 10  # the soak's hostile mix: one request in ten
ANSWER_TIMEOUT_S = 30.0  # a request unanswered this long counts as a hang (the server's own deadline is 60 s)
MEMORY_BOUND_MIB = 50.0  # "memory flat": the server's RSS never this far above its level after warm-up


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


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user and system) spent so far by process ``pid``, or by the whole machine (``None``)."""
    if pid is None:
        user, nice, system, _, _, irq, softirq, steal = (int(v) for v in Path("/proc/stat").read_text().split()[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def encode_request(host: str, path: str, data: dict[str, str], image: bytes | None = None) -> bytes:
    """A whole HTTP/1.1 POST, encoded once by httpx (multipart with ``image``, else a form) to be replayed."""
    import httpx

    files = {"image": ("q.png", image, "image/png")} if image is not None else None
    request = httpx.Request("POST", f"http://{host}{path}", data=data, files=files)
    body = request.read()
    head = f"POST {request.url.raw_path.decode()} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request.headers.items()
    )
    return head.encode() + b"\r\n" + body


def request_bytes(kind: str, host: str, image: bytes) -> bytes:
    """The whole HTTP/1.1 request of ``kind``, encoded once by httpx (multipart or form) and replayed."""
    if kind == "search (case)":  # an archive case's stored vector: nothing embedded
        return encode_request(host, "/v1/search", {"case": "7", "k": "10"})
    if kind == "search (text)":
        return encode_request(host, "/v1/search", {"text": "enlarged cardiac silhouette", "k": "10"})
    if kind == "search (image)":
        return encode_request(host, "/v1/search", {"k": "10"}, image)
    return encode_request(host, "/v1/diagnose", {}, image)


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one sized HTTP response; its status.

    Raises:
        ConnectionError: The server closed the connection before its status line.
    """
    line = await reader.readline()
    if not line:
        raise ConnectionError("closed by the server")
    status = int(line.split()[1])
    length = None
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise RuntimeError("a response without Content-Length: this client reads only sized bodies")
    await reader.readexactly(length)
    return status


async def _client(host: str, port: int, request: bytes, count: int, latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            start = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
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
    return {**percentiles(latencies), "rps": len(latencies) / wall, "errors": errors[0], "n": len(latencies)}


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 of ``seconds``, in milliseconds."""
    ms = np.array(seconds) * 1000
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


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


@contextlib.contextmanager
def running_server(
    index: Path, threads: int, options: Sequence[str] = (), log: Path | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`convirt serve` of the demo model on ``index`` (with ``options``), once it answers /healthz: its
    port and process; its output appended to ``log`` (default: discarded). Stopped on leaving."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "convirt.cli.main", "serve", "--model", str(DEMO / "checkpoints" / "last.ckpt")]
    command += ["--index", str(index), "--descriptors", "phantom", "--port", str(port), "--threads", str(threads)]
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        server = subprocess.Popen([*command, *options], cwd=ROOT, env=env, stdout=output, stderr=output)
        try:
            deadline = time.time() + 180
            while time.time() < deadline:
                if server.poll() is not None:
                    raise SystemExit(f"the server exited with {server.returncode} before answering")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            else:
                raise SystemExit("the server did not start within 3 minutes")
            yield port, server
        finally:
            server.terminate()
            server.wait(timeout=30)


def serve_and_load(index: Path, requests: dict[str, int], threads: int, soak_rounds: int = 0) -> dict[str, Any]:
    """Start `convirt serve` on ``index``, warm it up with every kind of request at the highest level,
    send the requests at each level, then ``soak_rounds`` rounds of every kind at the highest level;
    results and the server's resident memory along the way."""
    with running_server(index, threads) as (port, server):
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
    return {
        "results": results,
        "memory": memory,
        "soak_errors": sum(soak),
        "soak_requests": 4 * busiest * len(requests) * len(soak),
    }


def declared_png(width: int, height: int) -> bytes:
    """A small valid PNG whose header declares ``width x height`` grey pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compressobj(9)
    body = b"".join(rows.compress(b"\x00" * (width + 1)) for _ in range(min(height, 64))) + rows.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def corrupt_dicom() -> bytes:
    """A 512x512 16-bit DICOM cut off a quarter of the way into its pixel data."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality, dataset.Rows, dataset.Columns = "DX", 512, 512
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    dataset.PixelData = bytes(512 * 512 * 2)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    whole = buffer.getvalue()
    return whole[: len(whole) - 3 * len(dataset.PixelData) // 4]


def hostile_requests(host: str, image: bytes, limit: int) -> dict[str, tuple[bytes, float | None]]:
    """The soak's hostile requests by name: the bytes each sends, and how many seconds after sending
    them its client closes the connection unanswered (``None``: it reads the answer). ``limit``: the
    upload limit, in bytes."""
    rng = np.random.default_rng(0)
    diagnose = request_bytes("diagnose", host, image)
    head, _, body = diagnose.partition(b"\r\n\r\n")
    declared = encode_request(host, "/v1/diagnose", {}, rng.bytes(64 * 1024))
    declared = re.sub(rb"(?i)content-length: \d+", b"content-length: %d" % (64 * MIB), declared, count=1)
    over = b"\x89PNG\r\n\x1a\n" + rng.bytes(limit + 16 * 1024)  # past the upload limit, within its form's margin
    upload = {
        "truncated PNG": image[: len(image) // 2],
        "not an image": b"%PDF-1.4\n" + rng.bytes(16 * 1024),
        "PNG declaring 20000x20000 px": declared_png(20_000, 20_000),
        "corrupt DICOM (pixel data cut)": corrupt_dicom(),
    }
    return {
        **{name: (encode_request(host, "/v1/diagnose", {}, data), None) for name, data in upload.items()},
        "64 MiB declared, 64 KiB sent": (declared, None),
        "upload 16 KiB over the limit": (encode_request(host, "/v1/search", {"k": "10"}, over), None),
        "diagnose sent, closed at once": (diagnose, 0.0),
        # Closed while the server is at work on it (a diagnosis takes 40-150 ms here at 8 clients).
        "diagnose sent, closed after 30 ms": (diagnose, 0.03),
        "half the headers, closed": (head[: len(head) // 2], 0.0),
        "half the body, closed": (head + b"\r\n\r\n" + body[: len(body) // 2], 0.0),
    }


async def _hostile_request(host: str, port: int, payload: bytes, close_after_s: float | None) -> str:
    """What became of one hostile request on its own connection: its status, or how the connection ended."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return "connection refused"
    try:
        writer.write(payload)  # the answer is read before the write drains: a 413 may come before the body is in
        if close_after_s is not None:
            await writer.drain()
            await asyncio.sleep(close_after_s)
            return "closed by the client"
        return str(await asyncio.wait_for(read_response(reader), ANSWER_TIMEOUT_S))
    except asyncio.TimeoutError:
        return f"no answer in {ANSWER_TIMEOUT_S:g} s"
    except (ConnectionError, asyncio.IncompleteReadError):
        return "closed by the server"
    finally:
        writer.close()


async def _soak(
    host: str,
    port: int,
    pid: int,
    good: Sequence[tuple[str, bytes]],
    hostile: dict[str, tuple[bytes, float | None]] | None,
    total: int,
    clients: int,
) -> dict[str, Any]:
    """``total`` good requests (the kinds of ``good`` in turn) from ``clients`` keep-alive connections,
    each sending its next request when its answer is in; with ``hostile``, one more request in every
    ten, the hostile kinds in turn, each on its own connection beside the clients (so that the good
    requests keep their concurrency). The server's RSS (MiB) is sampled every second."""
    latencies: dict[str, list[float]] = {kind: [] for kind, _ in good}
    statuses: Counter[int] = Counter()
    names = list(hostile or {})
    outcomes: dict[str, Counter[str]] = {name: Counter() for name in names}
    launched: list[asyncio.Task[None]] = []
    done = 0
    rss = [resident_mib(pid)]

    async def send_hostile(name: str) -> None:
        assert hostile is not None
        outcomes[name][await _hostile_request(host, port, *hostile[name])] += 1

    async def client(first: int, count: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in range(count):
                kind, request = good[(first + i) % len(good)]
                start = time.perf_counter()
                writer.write(request)
                try:
                    status = await asyncio.wait_for(read_response(reader), ANSWER_TIMEOUT_S)
                except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                    status = 0  # no answer: counted, and the client goes on over a new connection
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                latencies[kind].append(time.perf_counter() - start)
                statuses[status] += 1
                done += 1
                if names and done % (HOSTILE_EVERY - 1) == 0:
                    launched.append(asyncio.create_task(send_hostile(names[len(launched) % len(names)])))
        finally:
            writer.close()

    async def sample() -> None:
        while True:
            await asyncio.sleep(1)
            rss.append(resident_mib(pid))

    def others() -> float:  # CPU time of every process but the server and this client
        return cpu_seconds() - cpu_seconds(pid) - cpu_seconds(os.getpid())

    sampler = asyncio.create_task(sample())
    share = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    start, others_before = time.perf_counter(), others()
    await asyncio.gather(*(client(i, n) for i, n in enumerate(share)))
    wall, others_cpu = time.perf_counter() - start, others() - others_before
    await asyncio.gather(*launched)
    sampler.cancel()
    rss.append(resident_mib(pid))
    every = [seconds for kind in latencies.values() for seconds in kind]
    return {
        "good": len(every),
        "wall_s": wall,
        "good_per_s": len(every) / wall,
        "others_cpu_s": others_cpu,
        **percentiles(every),
        "by_kind": {kind: percentiles(seconds) for kind, seconds in latencies.items()},
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
        "hostile": {name: dict(counts) for name, counts in outcomes.items()},
        "rss_mib": rss,
    }


def server_log_summary(log: Path, offset: int) -> dict[str, Any]:
    """The statuses of the server's request lines in ``log`` past byte ``offset``, and its other
    warnings and errors, counted (request ids and numbers masked)."""
    text = log.read_bytes()[offset:].decode(errors="replace")
    statuses = Counter(re.findall(r"request \w+ \w+ \S+ -> (\d{3}) in ", text))
    problems: Counter[str] = Counter()
    for line in text.splitlines():
        if re.search(r"WARNING|ERROR|CRITICAL|Traceback|Exception|Error", line):
            line = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", line)
            problems[re.sub(r"\d+", "N", re.sub(r"\b[0-9a-f]{12}\b", "ID", line)).strip()] += 1
    return {"statuses": dict(sorted(statuses.items())), "problems": dict(problems.most_common())}


def soak(
    index: Path, threads: int, clients: int, total: int, repeats: int, upload_mb: float, log: Path, warm_up: int
) -> dict[str, Any]:
    """On one `convirt serve` (``--max-upload-mb upload_mb``), a warm-up of ``warm_up`` good requests
    with the hostile mix, then ``repeats`` pairs of soaks of ``total`` good requests each from
    ``clients`` clients, one clean and one hostile, the pairs in turn clean first and hostile first (a
    drift of the machine falls on both); each soak's figures, its lines of the server's log (kept in
    ``log``) and the server's RSS."""
    import httpx

    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    image = (DEMO / "phantom" / "images" / "phantom-0-000000.png").read_bytes()
    host = "127.0.0.1"
    with running_server(index, threads, ["--max-upload-mb", f"{upload_mb:g}"], log) as (port, server):
        good = [(kind, request_bytes(kind, f"{host}:{port}", image)) for kind in REQUESTS]
        hostile = hostile_requests(f"{host}:{port}", image, int(upload_mb * MIB))
        started = resident_mib(server.pid)
        # Warm-up, not measured: every good kind and every hostile request (lazy imports, buffers, allocator pools).
        warm = asyncio.run(_soak(host, port, server.pid, good, hostile, warm_up, clients))
        time.sleep(1)
        warm["server_log"] = server_log_summary(log, 0)
        warmed = resident_mib(server.pid)
        runs = []
        for repeat in range(1, repeats + 1):
            for mode in ("clean", "hostile") if repeat % 2 else ("hostile", "clean"):
                offset = log.stat().st_size
                mix = hostile if mode == "hostile" else None
                run = asyncio.run(_soak(host, port, server.pid, good, mix, total, clients))
                time.sleep(1)  # the requests their clients left may still be at work: their log lines
                runs.append({"mode": mode, "repeat": repeat, **run, "server_log": server_log_summary(log, offset)})
                print(f"soak {repeat} {mode}: p95 {run['p95']:.0f} ms, RSS {run['rss_mib'][-1]:.0f} MiB", flush=True)
        health = httpx.get(f"http://{host}:{port}/healthz", timeout=10).status_code
        ended = resident_mib(server.pid)
    return {
        "started_mib": started,
        "warm_mib": warmed,
        "ended_mib": ended,
        "healthz_after": health,
        "warm_up": warm,
        "runs": runs,
    }


def soak_section(soaked: dict[str, Any], command: str, threads: int, clients: int, upload_mb: float) -> str:
    """The ``serve-soak`` section of BENCHMARKS.md: each soak, the hostile/clean p95 ratios, the
    hostile requests' answers, the server's log and memory, and the goals."""
    runs, warm = soaked["runs"], soaked["warm_mib"]
    clean = [run for run in runs if run["mode"] == "clean"]
    hostile = [run for run in runs if run["mode"] == "hostile"]
    total = clean[0]["good"]
    lines = [
        "## `convirt serve` soak: clean, and with one request in ten hostile",
        "",
        f"{machine_line()}; commit {commit()}. Command: `{command}` (server and clients on the same 2 cores, "
        f"127.0.0.1; the server on {threads} torch and faiss thread(s), `--max-upload-mb {upload_mb:g}`, its other "
        f"limits at their defaults). The demo model and the HNSW32 index of the section above. Each soak: "
        f"{total:,} good requests from {clients} keep-alive clients, each sending its next request when its answer "
        f"is in, the four kinds of the section above in turn (search by image, by text, by case, diagnose). A "
        f"hostile soak adds one request in {HOSTILE_EVERY} (one after every {HOSTILE_EVERY - 1} good answers, on "
        "its own connection, beside the clients), the kinds below in turn. The server runs once for all "
        f"soaks: a warm-up ({soaked['warm_up']['good']:,} good requests with the hostile mix), then "
        f"{len(clean)} pair(s) of soaks, in this order: {', '.join(run['mode'] for run in runs)}. Latencies are "
        "of the good requests only; the server's resident memory (VmRSS) is sampled every second. The last "
        "column is the CPU time of the machine's other processes during the soak over its length, from the "
        "kernel's counts: the machine is shared, and those cores were taken from the server and its clients.",
        "",
        "| soak | good requests | p50 ms | p95 ms | p99 ms | good/s | good answered 200 | hostile sent | "
        "5xx in the server's log | RSS start / end / max MiB | cores busy elsewhere |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for run in runs:
        sent = sum(sum(counts.values()) for counts in run["hostile"].values())
        errors = sum(n for status, n in run["server_log"]["statuses"].items() if status.startswith("5"))
        rss = run["rss_mib"]
        lines.append(
            f"| {run['repeat']} {run['mode']} | {run['good']:,} | {run['p50']:.0f} | {run['p95']:.0f} | "
            f"{run['p99']:.0f} | {run['good_per_s']:.1f} | {run['statuses'].get('200', 0):,} | {sent} | {errors} | "
            f"{rss[0]:.0f} / {rss[-1]:.0f} / {max(rss):.0f} | {max(0.0, run['others_cpu_s']) / run['wall_s']:.1f} |"
        )
    ratios = [h["p95"] / c["p95"] for c, h in zip(clean, hostile)]
    outcomes: dict[str, Counter[str]] = {}
    for run in hostile:
        for name, counts in run["hostile"].items():
            outcomes.setdefault(name, Counter()).update(counts)
    lines += [
        "",
        "Hostile/clean p95 of the good requests, by pair: "
        + ", ".join(f"{ratio:.2f}" for ratio in ratios)
        + f" (median {np.median(ratios):.2f}, range {min(ratios):.2f} to {max(ratios):.2f}). By kind, the good "
        "requests of all soaks together (p95 ms, clean / hostile): "
        + "; ".join(
            f"{kind} {np.median([r['by_kind'][kind]['p95'] for r in clean]):.0f} / "
            f"{np.median([r['by_kind'][kind]['p95'] for r in hostile]):.0f}"
            for kind in REQUESTS
        )
        + " (medians over the soaks).",
        "",
        f"The hostile requests of the {len(hostile)} hostile soaks, and what their client saw:",
        "",
        "| hostile request | sent | answers |",
        "|---|---:|---|",
    ]
    for name, counts in outcomes.items():
        seen = ", ".join(f"{outcome} ({n})" for outcome, n in counts.most_common())
        lines.append(f"| {name} | {sum(counts.values())} | {seen} |")
    logged: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    for run in hostile:
        logged.update(run["server_log"]["statuses"])
        problems.update(run["server_log"]["problems"])
    departed = logged["200"] - sum(run["statuses"].get("200", 0) for run in hostile)
    lines += [
        "",
        "The server's log over the hostile soaks: request lines by status "
        + ", ".join(f"{status} {n:,}" for status, n in sorted(logged.items()))
        + f" ({departed} of the 200s answered requests whose client had gone; a request closed before its body "
        "was read is a 400, one with half its headers never a request); warnings and errors: "
        + ("; ".join(f"`{line}` ({n})" for line, n in problems.most_common(6)) or "none")
        + f". After the last soak /healthz answered {soaked['healthz_after']}.",
        "",
    ]
    good_not_200 = sum(n for run in runs for status, n in run["statuses"].items() if status != "200")
    hostile_5xx = sum(n for o in outcomes.values() for outcome, n in o.items() if outcome.startswith("5"))
    logged_5xx = sum(n for run in runs for s, n in run["server_log"]["statuses"].items() if s.startswith("5"))
    unexpected = sum(
        n
        for o in outcomes.values()
        for outcome, n in o.items()
        if not (outcome.startswith("4") or outcome.startswith("closed"))
    )
    peak = max(max(run["rss_mib"]) for run in hostile)
    grown = ", ".join(f"{run['rss_mib'][-1] - run['rss_mib'][0]:+.0f}" for run in hostile)
    median = float(np.median(ratios))
    goals = [
        f"p95 of the good requests within 20% of the clean soak (median hostile/clean ratio <= 1.20): "
        f"{'met' if median <= 1.2 else 'not met'} ({median:.2f}; "
        f"{sum(ratio <= 1.2 for ratio in ratios)} of {len(ratios)} pairs within)",
        f"good requests all answered 200: {'met' if not good_not_200 else 'not met'} "
        f"({good_not_200} of {sum(run['good'] for run in runs):,} not)",
        f"hostile requests answered 4xx or closed, never 5xx: "
        f"{'met' if not (hostile_5xx or logged_5xx or unexpected) else 'not met'} ({hostile_5xx} 5xx seen by "
        f"clients, {logged_5xx} in the server's log, {unexpected} other outcomes)",
        f"memory flat (the server's RSS through the hostile soaks never {MEMORY_BOUND_MIB:.0f} MiB above its "
        f"{warm:.0f} MiB after the warm-up): {'met' if peak - warm < MEMORY_BOUND_MIB else 'not met'} (peak "
        f"{peak - warm:+.0f} MiB; from start to end the hostile soaks grew it by {grown} MiB; "
        f"{soaked['ended_mib'] - warm:+.0f} MiB after all {len(runs)} soaks)",
    ]
    lines.append("Goals: " + "; ".join(goals) + ".")
    return "\n".join(lines)


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
    parser.add_argument("--only", choices=("levels", "soak"), help="run only the levels or only the soak")
    parser.add_argument("--soak-requests", type=int, default=3000, help="good requests per soak, clean or hostile")
    parser.add_argument("--soak-repeats", type=int, default=4, help="pairs of soaks, one clean and one hostile")
    parser.add_argument("--soak-clients", type=int, default=8, help="concurrent clients of good requests in a soak")
    parser.add_argument("--soak-upload-mb", type=float, default=4.0, help="the soak's server's --max-upload-mb")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a check: 8 requests per level, one pair of soaks of 180 (write to a scratch --output)",
    )
    args = parser.parse_args()
    if not (DEMO / "checkpoints" / "last.ckpt").is_file() or not (DEMO / "index" / "info.json").is_file():
        raise SystemExit("run `make demo` first: this benchmark serves its model and index")
    threads = args.threads or choose_serve_threads()
    if args.only != "soak":
        run_levels(args, threads)
    if args.only != "levels":
        run_soak(args, threads)


def run_soak(args: argparse.Namespace, threads: int) -> None:
    """The clean and hostile soaks on the last factory's index: the ``serve-soak`` section, and their
    figures in benchmarks/results/serve-soak.json (in ``--work`` with ``--quick``)."""
    from convirt._io import write_json

    work = Path(args.work)
    total, repeats, warm_up = (180, 1, 180) if args.quick else (args.soak_requests, args.soak_repeats, 1000)
    index = archive_index(work, args.vectors, FACTORIES[-1])
    log = work / "soak-server.log"
    soaked = soak(index, threads, args.soak_clients, total, repeats, args.soak_upload_mb, log, warm_up)
    command = " ".join(["python benchmarks/serve.py", *sys.argv[1:]])
    section = soak_section(soaked, command, threads, args.soak_clients, args.soak_upload_mb)
    results = work / "serve-soak.json" if args.quick else ROOT / "benchmarks" / "results" / "serve-soak.json"
    write_json(results, {"command": command, "threads": threads, "clients": args.soak_clients, **soaked})
    write_section(Path(args.output), "serve-soak", section)
    print(section)


def run_levels(args: argparse.Namespace, threads: int) -> None:
    """The levels (and the rounds of every kind after them): the ``serve`` section."""
    requests = {kind: 8 for kind in REQUESTS} if args.quick else REQUESTS
    soak_rounds = 2 if args.quick else args.soak
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
