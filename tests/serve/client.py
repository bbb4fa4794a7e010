"""Test clients of the app: in-process as a browser on this machine calls it (Host: 127.0.0.1), and a
real uvicorn server in a thread, for what only a socket shows (bodies streamed in, TLS, shutdown)."""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

LOCAL = "http://127.0.0.1"


def local_client(app: FastAPI) -> TestClient:
    """Starlette's TestClient sends ``Host: testserver``, which the app refuses like any unknown name."""
    return TestClient(app, base_url=LOCAL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served(app: FastAPI, **config) -> Iterator[uvicorn.Server]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 in a thread (``config``: uvicorn's options)."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False, **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def port_of(server: uvicorn.Server) -> int:
    return server.config.port
