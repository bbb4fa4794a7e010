"""`convirt serve --runtime onnx`: the command serves an ONNX export folder over the index its checkpoint built."""

import logging

import numpy as np
import pytest
import torch
import uvicorn

from convirt.cli.main import main
from tests.serve.client import local_client


@pytest.fixture
def command_side_effects():
    """What `convirt serve` sets for its process (torch's threads, its logger), as it was after the test."""
    logger = logging.getLogger("convirt.serve")
    threads, handlers, level, propagate = torch.get_num_threads(), list(logger.handlers), logger.level, logger.propagate
    yield
    torch.set_num_threads(threads)
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def test_serve_runs_the_onnx_export_over_the_checkpoints_index(
    archive, onnx_export, service, monkeypatch, capsys, command_side_effects
):
    _, index, rows = archive
    folder, _ = onnx_export
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(app=app, **options))
    command = ["serve", "--model", str(folder), "--index", str(index), "--descriptors", "phantom", "--threads", "1"]
    assert main([*command, "--runtime", "onnx"]) == 0
    assert "1 threads, onnx runtime" in capsys.readouterr().out
    client = local_client(started["app"])
    info = client.get("/v1/info").json()
    assert info["model"]["source"] == str(folder) and info["model"]["model_name"] == "test-tiny"
    upload = {"image": ("x.png", open(rows[1].image_path, "rb").read(), "image/png")}
    answer = client.post("/v1/diagnose", files=upload, data={"k": "5"}).json()
    from PIL import Image

    expected = service.diagnose(Image.open(rows[1].image_path), k=5)  # the torch runtime's diagnosis
    assert [n["id"] for n in answer["neighbours"]] == [n["id"] for n in expected["neighbours"]]
    got, want = ([f["score"] for f in d["findings"]] for d in (answer, expected))
    assert np.allclose(got, want, atol=1e-4)
    refused = client.post("/v1/diagnose", files=upload, data={"saliency": "true"})
    assert refused.status_code == 409 and "start the service with --runtime torch" in refused.json()["detail"]
    # The torch runtime refuses the folder with the flag to use.
    assert main(command) == 2
    assert "is an ONNX export: run it with --runtime onnx" in capsys.readouterr().err
