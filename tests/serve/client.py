"""A test client that calls the app as a browser on this machine does (Host: 127.0.0.1)."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

LOCAL = "http://127.0.0.1"


def local_client(app: FastAPI) -> TestClient:
    """Starlette's TestClient sends ``Host: testserver``, which the app refuses like any unknown name."""
    return TestClient(app, base_url=LOCAL)
