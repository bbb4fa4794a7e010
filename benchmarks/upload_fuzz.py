"""A hostile-upload campaign against a real `convirt serve` process: 20,000 mutated uploads by default.

The same requests as the suite's fuzz test (`tests/serve/fuzz_uploads.py`: mutated PNG, 16-bit
PNG, JPEG and DICOM (uncompressed, deflated, RLE), lying headers, wrong names and content types,
empty files, broken multipart bodies, odd form fields), ten times as many, sent one at a time over
HTTP to a server on 127.0.0.1, then requests whose client goes away mid-body. Counted: uploads by
kind, answers by status, 5xx, refusals whose ``detail`` is not one non-empty line, the server's
resident memory along the run (VmRSS at each tenth, VmHWM at the end) and whether it still answers.
Written to the ``upload-fuzz`` section of BENCHMARKS.md.

The server runs the demo's model and index when `make demo` has made them, else a tiny untrained
model (`test-tiny`, a 2-layer BERT) over 64 phantom images, built once in ``--work``.
`python benchmarks/upload_fuzz.py` (about 5 minutes on 2 CPU cores with the demo's model;
`--uploads 5000`: about 1).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _markdown import commit, machine_line, write_section

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "artifacts" / "demo"
sys.path.insert(0, str(ROOT))  # the requests are the test suite's strategies


def tiny_service_files(work: Path) -> tuple[Path, Path]:
    """A ``test-tiny`` checkpoint and an index of 64 phantom images by it, built in ``work`` once."""
    checkpoint, index = work / "tiny.ckpt", work / "index"
    if checkpoint.is_file() and (index / "info.json").is_file():
        return checkpoint, index
    from convirt.data.inputs import read_image_rows
    from convirt.data.sources.phantom import write_phantom
    from convirt.embeddings.encode import embed_image_files
    from convirt.models.fingerprint import model_fingerprint
    from convirt.models.sources import load_model
    from convirt.retrieval import build_index_folder
    from convirt.training import save_initial_checkpoint
    from tests.conftest import write_tiny_bert

    rows_csv = write_phantom(work / "phantom", num_samples=64, seed=0, size=96, progress=False)
    bert = write_tiny_bert(work / "tiny-bert", rows_csv)
    save_initial_checkpoint(str(checkpoint), "test-tiny", pretrained=False, text_model_path=bert)
    loaded = load_model(str(checkpoint))
    rows = read_image_rows(rows_csv)
    vectors = embed_image_files(loaded.model, [row.image_path for row in rows], loaded.preprocess_cfg)
    metadata = [{"key": row.key, **row.metadata(), "path": row.image_path, "text": row.text or ""} for row in rows]
    build_index_folder(vectors, metadata, index, fingerprint=model_fingerprint(loaded))
    return checkpoint, index


def status_mib(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of process ``pid``, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def start_server(checkpoint: Path, index: Path) -> tuple[subprocess.Popen, int]:
    """`convirt serve` on a free port of 127.0.0.1, answering /healthz (or SystemExit within 3 minutes)."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "convirt.cli.main", "serve", "--model", str(checkpoint), "--index", str(index)]
    command += ["--descriptors", "phantom", "--port", str(port)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, **quiet)  # type: ignore[call-overload]
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server, port
        except httpx.HTTPError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("the server did not start within 3 minutes")


def one_line_refusal(answer: Any) -> bool:
    """A 4xx whose body is JSON with a non-empty one-line ``detail``."""
    try:
        detail = json.loads(answer.text).get("detail")
    except (ValueError, AttributeError):
        return False
    return isinstance(detail, str) and bool(detail.strip()) and "\n" not in detail and "\r" not in detail


def campaign(port: int, pid: int, uploads: int, seed: int) -> dict[str, Any]:
    """Send ``uploads`` hostile requests one at a time; what came back, and the server's memory."""
    import httpx
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    from tests.serve.fuzz_uploads import Upload, make_seeds
    from tests.serve.fuzz_uploads import uploads as hostile

    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    bad: list[str] = []  # 5xx and refusals without a one-line reason: kind, status, first bytes of the body
    memory = {"start": status_mib(pid)["VmRSS"]}
    with (
        tempfile.TemporaryDirectory() as folder,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
    ):
        seeds = make_seeds(Path(folder))

        @hypothesis_seed(seed)
        @settings(max_examples=uploads, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(hostile(seeds))
        def send(upload: Upload) -> None:
            answer = upload.send(client)
            sent[upload.kind] += 1
            statuses[answer.status_code] += 1
            if answer.status_code >= 500 or (answer.status_code >= 400 and not one_line_refusal(answer)):
                bad.append(f"{upload.kind}/{upload.mutation} {answer.status_code} {answer.text[:120]!r}")
            done = sum(sent.values())
            if done % max(1, uploads // 10) == 0:
                memory[f"{done:,}"] = status_mib(pid)["VmRSS"]
                print(f"{done:,} uploads, {dict(sorted(statuses.items()))}, server {memory[f'{done:,}']:.0f} MiB")

        start = time.perf_counter()
        send()
        wall = time.perf_counter() - start
        alive = client.get("/healthz").status_code == 200
        ok = client.post("/v1/search", files={"image": ("x.png", seeds["png"], "image/png")}, data={"k": "1"})
        alive = alive and ok.status_code == 200
        return {
            "sent": sent,
            "statuses": statuses,
            "bad": bad,
            "memory": memory,
            "wall": wall,
            "alive": alive,
            "image": seeds["png"],
        }


def cut_connections(port: int, image: bytes, count: int) -> int:
    """Send ``count`` multipart uploads that stop half-way through their declared body and hang up;
    how many of them the server answered anyway (it should answer none: it has no body to read)."""
    body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n' + image + b"\r\n--b--\r\n"
    head = (
        f"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    answered = 0
    for i in range(count):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(head + body[: (i * 7) % len(body)])
            connection.shutdown(socket.SHUT_WR)
            try:
                answered += bool(connection.recv(64))
            except (TimeoutError, ConnectionResetError):
                pass
    return answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=20_000)
    parser.add_argument("--cut", type=int, default=200, help="uploads whose client hangs up mid-body, after")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis's seed: another draws other requests")
    parser.add_argument("--tiny", action="store_true", help="serve the tiny model even where the demo's is made")
    parser.add_argument("--work", default=str(ROOT / "artifacts" / "upload-fuzz"))
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    demo_made = (DEMO / "checkpoints" / "last.ckpt").is_file() and (DEMO / "index" / "info.json").is_file()
    if demo_made and not args.tiny:
        checkpoint, index, model = DEMO / "checkpoints" / "last.ckpt", DEMO / "index", "the demo's model and index"
    else:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        checkpoint, index = tiny_service_files(Path(args.work))
        model = "a tiny untrained model (`test-tiny`) over 64 phantom images"
    server, port = start_server(checkpoint, index)
    try:
        result = campaign(port, server.pid, args.uploads, args.seed)
        answered = cut_connections(port, result["image"], args.cut)
        import httpx

        alive_after_cuts = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        memory = status_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    sent, statuses, bad = result["sent"], result["statuses"], result["bad"]
    total = sum(sent.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    trace = ", ".join(f"{name} {mib:.0f}" for name, mib in result["memory"].items())
    lines = [
        "## Upload fuzz campaign",
        "",
        f"{machine_line()}; commit {commit()}. Command: `python benchmarks/upload_fuzz.py --uploads {args.uploads}"
        + (f" --seed {args.seed}" if args.seed else "")
        + (" --tiny" if args.tiny else "")
        + f"`. A `convirt serve` process on 127.0.0.1 (default limits) with {model}; the requests of "
        "`tests/serve/fuzz_uploads.py` (the suite's fuzz test sends 2,000 of them in-process), one at a time "
        f"over HTTP, then {args.cut} uploads whose client hangs up half-way through its declared body.",
        "",
        f"- uploads sent: {total:,} in {result['wall']:.0f} s ({total / result['wall']:.0f}/s)",
        f"- answers by status: {', '.join(f'{status}: {n:,}' for status, n in sorted(statuses.items()))}",
        f"- 5xx: {server_errors}; refusals without a one-line reason: {len(bad) - server_errors}"
        + (f" (first: {bad[0]})" if bad else ""),
        f"- server resident memory (MiB, VmRSS): {trace}; peak since it started (VmHWM, model loading "
        f"included) {memory['VmHWM']:.0f}, at the end {memory['VmRSS']:.0f}",
        f"- hung-up uploads answered: {answered} of {args.cut}; the server answered /healthz and a valid "
        f"search after the campaign: {'yes' if result['alive'] else 'NO'}, after the hang-ups: "
        f"{'yes' if alive_after_cuts else 'NO'}",
        "",
        "| kind | uploads |",
        "|---|---:|",
        *[f"| {kind} | {n:,} |" for kind, n in sorted(sent.items(), key=lambda item: -item[1])],
        "",
    ]
    write_section(Path(args.output), "upload-fuzz", "\n".join(lines))
    print("\n".join(lines))
    if bad:
        print("\n".join(bad[:20]))


if __name__ == "__main__":
    main()
