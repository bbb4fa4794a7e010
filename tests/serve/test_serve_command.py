"""`convirt serve` as an operator runs it: the token from a file (a command-line token warned), TLS,
and SIGTERM letting the requests in flight finish."""

import os
import signal
import ssl
import subprocess
import sys
import threading
import time

import httpx
import pytest

from convirt.serve.token import read_token
from tests.serve.client import free_port


def test_the_token_comes_from_a_file_the_environment_or_warned_from_the_command_line(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("CONVIRT_TOKEN", raising=False)
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    assert read_token(token_file=secret) == "s3cret" and not caplog.records
    secret.chmod(0o644)
    assert read_token(token_file=secret) == "s3cret" and "chmod 600" in caplog.text
    caplog.clear()
    assert read_token(token="t") == "t" and "visible to every user" in caplog.text
    assert read_token() is None
    monkeypatch.setenv("CONVIRT_TOKEN", "from-env")
    assert read_token() == "from-env"
    (tmp_path / "empty").write_text("\n")
    for bad, reason in (
        ({"token_file": tmp_path / "missing"}, "cannot read it"),
        ({"token_file": tmp_path / "empty"}, "holds no token"),
        ({"token": "t", "token_file": secret}, "one of --token and --token-file"),
    ):
        with pytest.raises(ValueError, match=reason):
            read_token(**bad)


def test_the_command_refuses_a_bad_token_file_or_half_a_tls_pair_before_loading(archive, tmp_path, capsys):
    from convirt.cli.main import main

    _, folder, _ = archive
    base = ["serve", "--model", "never-loaded.ckpt", "--index", str(folder)]
    assert main([*base, "--token-file", str(tmp_path / "missing")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    assert main([*base, "--ssl-certfile", "cert.pem"]) == 2
    assert "both --ssl-certfile and --ssl-keyfile" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_over_tls_with_a_token_file_and_finish_in_flight_requests_on_sigterm(archive, tiny_checkpoint, tmp_path):
    import trustme

    _, folder, rows = archive
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certificate.private_key_pem.write_to_path(tmp_path / "key.pem")
    certificate.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "token").chmod(0o600)
    port = free_port()
    command = [
        sys.executable, "-m", "convirt.cli.main", "serve", "--model", str(tiny_checkpoint), "--index", str(folder),
        "--descriptors", "phantom", "--port", str(port), "--batch-wait-ms", "2000",
        "--token-file", str(tmp_path / "token"),
        "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem"),
    ]  # fmt: skip
    env = {**os.environ, "CONVIRT_TOKEN": ""}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    trusted = ssl.create_default_context()
    authority.configure_trust(trusted)
    base, headers = f"https://127.0.0.1:{port}", {"Authorization": "Bearer s3cret"}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", verify=trusted, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert httpx.get(f"{base}/v1/info", verify=trusted).status_code == 401
        upload = {"image": ("x.png", open(rows[0].image_path, "rb").read(), "image/png")}
        answers: list[httpx.Response] = []

        def diagnose() -> None:  # its batch waits 2 s for company: in flight when the signal comes
            answers.append(
                httpx.post(
                    f"{base}/v1/diagnose",
                    files=upload,
                    data={"saliency": "true"},
                    headers=headers,
                    verify=trusted,
                    timeout=60,
                )  # fmt: skip
            )

        asking = [threading.Thread(target=diagnose) for _ in range(4)]
        for thread in asking:
            thread.start()
        time.sleep(0.5)  # the requests are in
        server.send_signal(signal.SIGTERM)
        for thread in asking:
            thread.join(60)
        output, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert [answer.status_code for answer in answers] == [200] * 4, output[-2000:]
    assert all(answer.json()["findings"][0]["saliency_png"] for answer in answers)
    assert server.returncode in (0, -signal.SIGTERM), output[-2000:]  # uvicorn exits by the signal it caught
    assert output.index("Shutting down") < output.rindex("/v1/diagnose -> 200")  # answered after the signal
    assert "s3cret" not in output
    leaked = [row.patient_id for row in rows if row.patient_id in output or row.key in output]
    assert not leaked, f"the server's log names patients: {leaked[:3]}"
