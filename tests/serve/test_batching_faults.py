"""The micro-batcher survives its callers and its batch function: cancelled callers, a batch that
raises, answers short or kills its thread, and a worker stuck in one batch."""

import asyncio
import threading
import time

import pytest

from convirt.serve.app import create_app
from convirt.serve.batching import MicroBatcher
from tests.serve.client import local_client


def _slow_double(items):
    time.sleep(0.2)
    return [2 * item for item in items]


def test_callers_cancelled_mid_batch_leave_the_others_their_answers():
    batcher = MicroBatcher(_slow_double, max_wait_s=0.01)

    async def run():
        impatient = [asyncio.wait_for(batcher.run(i), timeout=0.05) for i in range(4)]
        patient = [asyncio.wait_for(batcher.run(10 + i), timeout=5) for i in range(4)]
        return await asyncio.gather(*impatient, *patient, return_exceptions=True)

    answers = asyncio.run(run())
    assert all(isinstance(a, asyncio.TimeoutError) for a in answers[:4])
    assert answers[4:] == [20, 22, 24, 26]
    # Callers that went away while queued are dropped; the worker lives on.
    assert batcher.submit(5).result(5) == 10 and batcher.healthy() and batcher.restarts == 0


def test_cancelled_before_their_batch_runs_are_never_run():
    seen = []
    gate = threading.Event()

    def record(items):
        gate.wait(2)
        seen.extend(items)
        return items

    batcher = MicroBatcher(record)
    first = batcher.submit("first")  # holds the worker
    time.sleep(0.05)
    gone = batcher.submit("gone")
    assert gone.cancel()
    kept = batcher.submit("kept")
    gate.set()
    assert first.result(2) == "first" and kept.result(2) == "kept"
    assert "gone" not in seen


def test_a_batch_that_raises_or_answers_short_fails_its_callers_in_one_line_and_the_next_batch_runs():
    calls = []

    def flaky(items):
        calls.append(items)
        if len(calls) == 1:
            raise ValueError("bad image in the batch")
        if len(calls) == 2:
            return items[:-1]  # one answer short
        return items

    batcher = MicroBatcher(flaky)
    with pytest.raises(ValueError, match="bad image"):
        batcher.submit(1).result(2)
    with pytest.raises(RuntimeError, match="answered 0 results for 1 queries"):
        batcher.submit(2).result(2)  # never a caller left waiting
    assert batcher.submit(3).result(2) == 3 and batcher.healthy()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_killed_fails_its_callers_and_the_next_call_starts_another():
    def dies_once(items, state={"died": False}):  # noqa: B006 (state kept across calls)
        if not state["died"]:
            state["died"] = True
            raise SystemExit("killed")
        return items

    batcher = MicroBatcher(dies_once)
    with pytest.raises(RuntimeError, match="worker stopped"):
        batcher.submit("a").result(2)
    batcher._thread.join(2)
    assert not batcher.healthy()
    assert batcher.submit("b").result(2) == "b" and batcher.restarts == 1 and batcher.healthy()


def test_healthz_says_unhealthy_while_a_worker_is_stuck(service):
    stuck = threading.Event()
    real = service.text_queries

    def hang(items):
        stuck.wait(5)
        return items

    service.text_queries = MicroBatcher(hang, stuck_after_s=0.1)
    try:
        client = local_client(create_app(service))
        assert client.get("/healthz").status_code == 200
        service.text_queries.submit("x")
        time.sleep(0.3)
        answer = client.get("/healthz")
        assert answer.status_code == 503 and "stuck" in answer.json()["status"]
        stuck.set()
        time.sleep(0.1)
        assert client.get("/healthz").status_code == 200
    finally:
        stuck.set()
        service.text_queries = real


def test_a_unicode_digit_is_an_unknown_case_not_a_500(service):
    client = local_client(create_app(service))
    for text in ("%C2%B2", "%D9%A3", "1%C2%B2"):
        answer = client.get(f"/v1/cases/{text}")
        assert answer.status_code == 404 and answer.json() == {"detail": "unknown case id"}
        assert client.get(f"/v1/cases/{text}/image").status_code == 404


def test_clients_that_disconnect_leave_the_others_their_answers_and_the_service_healthy(service, archive, caplog):
    """Real sockets to a real server: clients that close mid-body, before reading their answer, or
    after the headers only, among clients that wait for theirs."""
    import io
    import logging
    import socket

    import httpx
    from PIL import Image

    from tests.serve.client import port_of, served

    _, _, rows = archive
    buffer = io.BytesIO()
    Image.open(rows[0].image_path).save(buffer, format="PNG")
    request = httpx.Request(
        "POST", "http://127.0.0.1/v1/diagnose", files={"image": ("x.png", buffer.getvalue(), "image/png")}
    )
    head = "POST /v1/diagnose HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request.headers.items() if name.lower() != "host"
    )
    whole = (head + "\r\n").encode() + request.read()
    caplog.set_level(logging.INFO, logger="convirt.serve")

    def rude(port: int, kind: str) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            if kind == "headers only":
                sock.sendall(head.encode())
            elif kind == "half the body":
                sock.sendall(whole[: len(whole) // 2])
            else:  # the whole request, then gone before the answer
                sock.sendall(whole)
            time.sleep(0.02)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST

    with served(create_app(service)) as server:
        port = port_of(server)
        good: list[int] = []

        def polite() -> None:
            answer = httpx.post(
                f"http://127.0.0.1:{port}/v1/diagnose",
                files={"image": ("x.png", buffer.getvalue(), "image/png")},
                timeout=30,
            )
            good.append(answer.status_code)

        kinds = ["headers only", "half the body", "gone before the answer"] * 4
        threads = [threading.Thread(target=polite) for _ in range(8)]
        threads += [threading.Thread(target=rude, args=(port, kind)) for kind in kinds]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        after = httpx.post(f"http://127.0.0.1:{port}/v1/search", data={"case": "1", "k": "2"}, timeout=30)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert good == [200] * 8 and after.status_code == 200 and health.status_code == 200
    assert service.image_queries.restarts == 0 and service.healthy()
    assert "-> 500" not in caplog.text and "failed:" not in caplog.text
