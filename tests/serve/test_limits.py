"""The service's bounds whatever its callers do: bodies refused as they stream in, a bounded queue,
a deadline, graceful shutdown, TLS, typed one-line refusals, bug logs without messages, saliency
beside searches, and nothing shown of a case but what the operator allowed."""

import asyncio
import json
import socket
import ssl
import threading
import time

import httpx
import numpy as np
import pytest
from starlette.responses import JSONResponse

from convirt.serve.admission import Admission, Limits
from convirt.serve.app import create_app
from convirt.serve.service import CaseService
from convirt.serve.shown import check_fields
from tests.serve.client import LOCAL, local_client, port_of, served


def _one_line_detail(answer) -> str:
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    return detail


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(service):
    """300 MB declared, five bytes sent: the 413 comes at once, not after the body."""
    app = create_app(service, limits=Limits(max_upload_bytes=1_000_000))
    with served(app) as server, socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as sock:
        head = (
            "POST /v1/diagnose HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {300 * 1024 * 1024}\r\n\r\n--x\r\n"
        )
        start = time.perf_counter()
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        status, _, body = answer.partition(b"\r\n\r\n")
        length = int(status.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
        elapsed = time.perf_counter() - start
    assert status.startswith(b"HTTP/1.1 413"), answer[:200]
    assert elapsed < 1.0, f"the 413 took {elapsed:.2f} s"
    assert "over the limit of 1065536 bytes" in json.loads(body)["detail"]


def test_a_streamed_body_is_cut_off_at_the_limit(service):
    """No Content-Length (chunked): the app reads up to the limit, not the whole body, then answers 413."""
    limit, chunk = 1_000_000, 64 * 1024
    app = create_app(service, limits=Limits(max_upload_bytes=limit))
    read, sent = 0, []
    part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'

    async def receive():
        nonlocal read
        read += 1
        body = part if read == 1 else b"\0" * chunk
        return {"type": "http.request", "body": body, "more_body": read < 5000}  # 300 MB in all

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/search",
        "raw_path": b"/v1/search",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"multipart/form-data; boundary=x")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert (read - 1) * chunk <= limit + 64 * 1024 + 2 * chunk  # stopped at the limit, 4,999 chunks unread
    assert "over the limit" in json.loads(sent[1]["body"])["detail"]


def test_a_full_queue_answers_503_with_retry_after_and_health_still_answers():
    release = asyncio.Event()

    async def slow(scope, receive, send):
        if scope["path"] != "/healthz":
            await release.wait()
        await JSONResponse({"path": scope["path"]})(scope, receive, send)

    admission = Admission(slow, max_active=1, max_waiting=1, deadline_s=None)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=admission), base_url=LOCAL) as client:
            running = asyncio.create_task(client.get("/a"))
            waiting = asyncio.create_task(client.get("/b"))
            await asyncio.sleep(0.05)
            assert (admission.active, admission.waiting) == (1, 1)
            start = time.perf_counter()
            refused = await client.get("/c")
            assert time.perf_counter() - start < 0.5
            health = await client.get("/healthz")
            release.set()
            return refused, health, await running, await waiting

    refused, health, *done = asyncio.run(scenario())
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "too many requests are waiting" in _one_line_detail(refused)
    assert health.status_code == 200 and [answer.status_code for answer in done] == [200, 200]
    assert admission.refused == 1 and (admission.active, admission.waiting) == (0, 0)


@pytest.fixture()
def held_text_batches(service, monkeypatch):
    """Text queries held inside their batch until the event is set (at most 5 s)."""
    release = threading.Event()
    batch = service.text_queries.function

    def held(items):
        release.wait(5)
        return batch(items)

    monkeypatch.setattr(service.text_queries, "function", held)
    yield release
    release.set()


def test_the_app_bounds_its_queue_and_cuts_a_request_at_its_deadline(service, held_text_batches):
    app = create_app(service, limits=Limits(max_active=1, max_waiting=0, deadline_s=0.5))
    query = {"text": "effusion", "k": "2"}

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as client:
            first = asyncio.create_task(client.post("/v1/search", data=query))
            await asyncio.sleep(0.1)
            busy = await client.post("/v1/search", data=query)
            health = await client.get("/healthz")
            late = await first
            held_text_batches.set()
            await asyncio.sleep(0.1)
            again = await client.post("/v1/search", data=query)
            return busy, health, late, again

    busy, health, late, again = asyncio.run(scenario())
    assert busy.status_code == 503 and "busy" in _one_line_detail(busy)
    assert health.status_code == 200
    assert late.status_code == 503 and "deadline of 0.5 s" in _one_line_detail(late) and late.headers["retry-after"]
    assert again.status_code == 200 and len(again.json()["cases"]) == 2  # the service goes on


def test_shutdown_finishes_the_requests_in_flight(service, held_text_batches):
    answers = []
    with served(create_app(service), timeout_graceful_shutdown=10) as server:
        url = f"http://127.0.0.1:{port_of(server)}/v1/search"
        asking = threading.Thread(target=lambda: answers.append(httpx.post(url, data={"text": "x", "k": "1"})))
        asking.start()
        time.sleep(0.3)  # the request is inside its batch
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connection is taken meanwhile
            httpx.get(url.replace("/v1/search", "/healthz"), timeout=2)
        held_text_batches.set()
        asking.join(10)
    assert answers and answers[0].status_code == 200 and len(answers[0].json()["cases"]) == 1


def test_tls_with_a_certificate_made_here(service, tmp_path):
    import trustme

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    key, chain = tmp_path / "key.pem", tmp_path / "cert.pem"
    certificate.private_key_pem.write_to_path(key)
    certificate.cert_chain_pems[0].write_to_path(chain)
    app = create_app(service, token="t0k3n")
    with served(app, ssl_keyfile=str(key), ssl_certfile=str(chain)) as server:
        port = port_of(server)
        trusted = ssl.create_default_context()
        authority.configure_trust(trusted)
        with httpx.Client(verify=trusted) as client:
            answer = client.get(f"https://127.0.0.1:{port}/v1/info", headers={"Authorization": "Bearer t0k3n"})
            assert answer.status_code == 200 and answer.json()["index"]["count"] > 0
            assert client.get(f"https://127.0.0.1:{port}/v1/info").status_code == 401
        with pytest.raises(httpx.ConnectError):  # a certificate nobody here trusts
            httpx.get(f"https://127.0.0.1:{port}/healthz")
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_bad_fields_are_a_one_line_422_that_echoes_nothing(service):
    client = local_client(create_app(service))
    answer = client.post("/v1/search", data={"text": "x", "k": "s3cr3t-value"})
    assert answer.status_code == 422
    detail = _one_line_detail(answer)
    assert detail.startswith("k: ") and "s3cr3t" not in detail


def test_a_bug_answers_500_and_logs_its_type_and_place_not_its_message(service, monkeypatch, caplog):
    import logging

    def broken(case):
        raise KeyError("/archive/patient00042/study1/view1.jpg")

    monkeypatch.setattr(service, "case", broken)
    caplog.set_level(logging.INFO, logger="convirt.serve")
    answer = local_client(create_app(service)).get("/v1/cases/3")
    request_id = answer.headers["x-request-id"]
    assert answer.status_code == 500 and answer.json() == {"detail": f"internal error (request {request_id})"}
    failure = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failure == [
        f"request {request_id} failed: KeyError at test_limits.py:{broken.__code__.co_firstlineno + 1} in broken"
    ]
    assert "patient00042" not in caplog.text and "Traceback" not in caplog.text


def test_saliency_is_drawn_beside_searches_and_its_queue_is_bounded(service, archive, monkeypatch):
    """Diagnoses with maps (each map held 0.3 s) fill the explainer's queue; an image search through
    the same app is answered meanwhile, and a diagnosis past the queue is a 503."""
    _, _, rows = archive
    saliency = service._explainer.classifier.saliency

    def slow_saliency(*args):
        time.sleep(0.3)
        return saliency(*args)

    monkeypatch.setattr(service._explainer.classifier, "saliency", slow_saliency)
    app = create_app(service)
    upload = {"image": ("x.png", open(rows[0].image_path, "rb").read(), "image/png")}
    waiting = service._explainer.max_waiting

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL, timeout=60) as client:
            maps = [
                asyncio.create_task(client.post("/v1/diagnose", files=upload, data={"saliency": "true", "k": "2"}))
                for _ in range(waiting + 1)  # one drawn, the rest waiting
            ]
            await asyncio.sleep(0.5)
            start = time.perf_counter()
            searched = await client.post("/v1/search", files=upload, data={"k": "2"})
            searched_in = time.perf_counter() - start
            refused = await client.post("/v1/diagnose", files=upload, data={"saliency": "true"})
            return searched, searched_in, refused, await asyncio.gather(*maps)

    searched, searched_in, refused, drawn = asyncio.run(scenario())
    assert searched.status_code == 200 and searched_in < 1.0, f"the search waited {searched_in:.1f} s"
    assert refused.status_code == 503 and "saliency maps are being drawn" in _one_line_detail(refused)
    assert [answer.status_code for answer in drawn] == [200] * (waiting + 1)
    assert all(answer.json()["findings"][0]["saliency_png"] for answer in drawn)


def test_a_decode_cut_off_at_its_deadline_keeps_its_place(service, archive, monkeypatch):
    """Decodes that outlive their request's deadline still count: never more than max_decoding run at once."""
    import convirt.serve.app as module

    _, _, rows = archive
    running, most = [0], [0]
    lock = threading.Lock()
    real = module.read_upload

    def slow_decode(*args):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.5)
        with lock:
            running[0] -= 1
        return real(*args)

    monkeypatch.setattr(module, "read_upload", slow_decode)
    app = create_app(service, limits=Limits(max_decoding=2, deadline_s=0.2))
    upload = {"image": ("x.png", open(rows[0].image_path, "rb").read(), "image/png")}

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as client:
            answers = []
            for _ in range(3):  # each wave cut off at its deadline while its decodes still run
                answers += await asyncio.gather(*(client.post("/v1/search", files=upload) for _ in range(3)))
            return answers

    answers = asyncio.run(scenario())
    time.sleep(1.5)  # the decodes left behind finish
    assert {answer.status_code for answer in answers} == {503} and most[0] == 2


def test_a_burst_cannot_pass_the_queue():
    release = asyncio.Event()

    async def slow(scope, receive, send):
        await release.wait()
        await JSONResponse({})(scope, receive, send)

    admission = Admission(slow, max_active=1, max_waiting=1, deadline_s=60)  # a deadline: its own task

    async def one(statuses: list[int]) -> None:
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {"type": "http", "method": "GET", "path": "/a", "headers": [], "query_string": b""}
        await admission(scope, receive, send)

    async def scenario():
        statuses: list[int] = []
        burst = [asyncio.create_task(one(statuses)) for _ in range(6)]  # all admitted in one turn of the loop
        await asyncio.sleep(0.1)
        release.set()
        await asyncio.gather(*burst)
        return statuses

    assert sorted(asyncio.run(scenario())) == [200, 200, 503, 503, 503, 503]


def test_limits_are_checked_when_made():
    for bad in ({"max_decoding": 0}, {"max_active": 0}, {"max_waiting": -1}, {"deadline_s": 0}):
        with pytest.raises(ValueError, match="must be"):
            Limits(**bad)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the worker's death, on purpose
def test_healthz_starts_a_dead_worker_again(service, monkeypatch):
    batcher = service.vector_queries
    before = batcher.restarts
    real = batcher.function

    def die(items):
        raise SystemExit  # ends the worker thread

    monkeypatch.setattr(batcher, "function", die)
    with pytest.raises(RuntimeError):
        batcher.submit((np.zeros(service.folder.info.dim, dtype=np.float32), 1)).result(5)
    batcher._thread.join(5)
    assert not batcher._thread.is_alive()
    monkeypatch.setattr(batcher, "function", real)
    assert local_client(create_app(service)).get("/healthz").status_code == 200
    assert batcher.restarts == before + 1 and batcher._thread.is_alive()


def test_without_a_token_only_loopback_callers_are_answered(service):
    from fastapi.testclient import TestClient

    app = create_app(service, allowed_hosts=["10.0.0.5"])  # built for loopback, then served elsewhere
    answer = TestClient(app, base_url="http://10.0.0.5").get("/v1/info")
    assert answer.status_code == 403 and "answers on loopback only" in _one_line_detail(answer)
    assert local_client(app).get("/v1/info").status_code == 200


def test_info_comes_from_what_was_loaded(service, monkeypatch):
    import convirt.serve.service as module

    expected = local_client(create_app(service)).get("/v1/info").json()
    monkeypatch.setattr(module, "model_fingerprint", lambda loaded: pytest.fail("hashed again"))
    assert local_client(create_app(service)).get("/v1/info").json() == expected
    assert expected["model"]["checkpoint_sha256"] == service.fingerprint["checkpoint_sha256"]


@pytest.mark.reveals_ids
def test_keys_and_study_ids_leave_only_when_the_operator_names_them(archive):
    loaded, folder, rows = archive
    plain = CaseService(loaded, folder, case_salt="one")
    shown = CaseService(loaded, folder, show_fields=["key", "study_id"], case_salt="one")
    other_salt = CaseService(loaded, folder, case_salt="two")
    assert plain.case(0)["ref"] == shown.case(0)["ref"] != other_salt.case(0)["ref"]
    assert "key" not in plain.case(0) and "study_id" not in plain.case(0)
    assert shown.case(0)["key"] == rows[0].key and shown.case(0)["study_id"].startswith(rows[0].patient_id)
    with pytest.raises(ValueError, match="--show-field patient_id: only key, study_id can be shown"):
        check_fields(["patient_id"])


def test_a_text_where_the_image_belongs_is_told_to_send_a_file(service):
    answer = local_client(create_app(service)).post("/v1/diagnose", data={"image": "not a file"})
    assert answer.status_code == 422
    assert _one_line_detail(answer) == "image: send a file (a multipart/form-data part with a filename)"
