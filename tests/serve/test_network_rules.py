"""The network rules live in the app itself: a Host allowlist (DNS rebinding) and the token that any
address but loopback requires, whoever builds the app."""

import pytest
from fastapi.testclient import TestClient

from convirt.serve.app import create_app, is_loopback
from tests.serve.client import local_client


def test_an_unknown_host_is_refused_before_any_case_is_read(service):
    app = create_app(service)
    assert local_client(app).get("/v1/cases/0").status_code == 200
    for name in ("localhost", "127.0.0.1"):
        assert TestClient(app, base_url=f"http://{name}:8000").get("/v1/cases/0").status_code == 200
    for name in ("evil.example", "testserver", "127.0.0.1.evil.example"):
        answer = TestClient(app, base_url=f"http://{name}").get("/v1/cases/0")
        assert answer.status_code == 400 and "report" not in answer.text, name


def test_allowed_hosts_and_the_bound_name_are_answered(service):
    app = create_app(service, token="t", host="10.0.0.5", allowed_hosts=["cxr.hospital.example"])
    headers = {"Authorization": "Bearer t"}
    for name in ("cxr.hospital.example", "10.0.0.5", "127.0.0.1"):
        assert TestClient(app, base_url=f"http://{name}").get("/v1/info", headers=headers).status_code == 200
    assert TestClient(app, base_url="http://other.example").get("/v1/info", headers=headers).status_code == 400


def test_create_app_itself_refuses_another_address_without_a_token(service):
    for host in ("0.0.0.0", "10.1.2.3", "cxr.hospital.example"):
        with pytest.raises(ValueError, match=f"--host {host} reaches other machines: pass --token"):
            create_app(service, host=host)
    create_app(service, host="::1")  # loopback needs none
    assert is_loopback("[::1]") and not is_loopback("0.0.0.0")
