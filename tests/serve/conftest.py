"""Shared by the serve tests: an index folder of the phantom label table by the tiny model, its service,
and a calibration file for the service's findings.

The archive's keys, study ids and patient ids all carry the patient id (as CheXpert's and NIH's
namings do), and every test here is watched: no answer body and no log line of any test may hold one
(:func:`no_patient_leaves`), unless the test is marked ``reveals_ids`` (the operator turned a field on).
"""

import logging

import httpx
import numpy as np
import pytest
from scipy.special import expit

from convirt.data.inputs import read_image_rows
from convirt.embeddings.encode import embed_image_files
from convirt.models.fingerprint import model_fingerprint
from convirt.models.sources import load_model
from convirt.retrieval import build_index_folder
from convirt.serve.service import CaseService
from convirt.zeroshot.calibration import scores_from
from convirt.zeroshot.validated import fit_on_validation

RULE = "sensitivity>=0.90"  # an operating point every calibration_file finding carries


@pytest.fixture(scope="session")
def archive(labels_csv, tiny_checkpoint, tmp_path_factory):
    """An index folder of the phantom label table (with its image paths and reports) by the tiny model."""
    loaded = load_model(str(tiny_checkpoint))
    rows = read_image_rows(labels_csv)
    vectors = embed_image_files(loaded.model, [row.image_path for row in rows], loaded.preprocess_cfg)
    metadata = [
        {
            "key": row.key,
            **row.metadata(),
            "study_id": f"{row.patient_id}/study1",
            "path": row.image_path,
            "text": f"report {i}: lungs are clear",
        }
        for i, row in enumerate(rows)
    ]
    folder = tmp_path_factory.mktemp("serve") / "index"
    build_index_folder(vectors, metadata, folder, fingerprint=model_fingerprint(loaded))
    return loaded, folder, rows


@pytest.fixture(scope="session")
def service(archive):
    loaded, folder, _ = archive
    return CaseService(loaded, folder, descriptors="phantom", knn_k=5)


@pytest.fixture(scope="session")
def onnx_service(archive, onnx_export):
    """The service over the same index with the tiny checkpoint's ONNX export, run by onnxruntime."""
    from convirt.models.onnx_runtime import load_onnx_model

    _, folder, _ = archive
    return CaseService(load_onnx_model(onnx_export[0]), folder, descriptors="phantom", knn_k=5)


@pytest.fixture(params=["torch", "onnx"])
def any_service(request):
    """The service with either runtime (`convirt serve --runtime torch|onnx`): the API answers the same."""
    return request.getfixturevalue("service" if request.param == "torch" else "onnx_service")


def draws_maps(service) -> bool:
    """Whether the service's model draws saliency maps (a torch model; onnxruntime computes no gradients)."""
    import torch

    return isinstance(service.loaded.model, torch.nn.Module)


@pytest.fixture(scope="session")
def calibration_file(service, tmp_path_factory):
    """A Platt calibration with operating points, fitted on a synthetic validation fold for every finding of
    the service but its last (left out to stay uncalibrated): overconfident scores of findings rare and common
    in turn, so that probabilities lie below some scores and above others."""
    names = service.finding_names[:-1]
    rng = np.random.default_rng(0)
    n = 400
    signal = rng.normal(size=(n, len(names)))
    prevalence = np.where(np.arange(len(names)) % 2 == 0, -2.0, 2.0)
    labels = (rng.random((n, len(names))) < expit(2 * signal + prevalence)).astype(int)
    probs = expit(4 * signal)
    keys = [f"img{i}" for i in range(n)]
    made_by = scores_from(service.fingerprint, service.descriptors.name)  # this service's model and descriptors
    fitted = fit_on_validation(labels, probs, names, keys, keys, "platt", 0.5, scores_from=made_by).calibration
    assert set(fitted.parameters) == set(names) and all(RULE in fitted.operating_points[f] for f in names)
    return fitted.save(tmp_path_factory.mktemp("calibration") / "calibration.json")


@pytest.fixture(autouse=True)
def no_patient_leaves(request, archive, monkeypatch):
    """Every answer body and log line of the test, checked for the archive's keys, study and patient ids."""
    _, _, rows = archive
    secrets = {row.patient_id for row in rows} | {row.key for row in rows}
    seen: list[str] = []
    send, send_async = httpx.Client.send, httpx.AsyncClient.send

    def recorded(self, *args, **kwargs):
        response = send(self, *args, **kwargs)
        seen.append(response.text if not kwargs.get("stream") else "")
        return response

    async def recorded_async(self, *args, **kwargs):
        response = await send_async(self, *args, **kwargs)
        seen.append(response.text if not kwargs.get("stream") else "")
        return response

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    handler = Lines(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("", "convirt", "uvicorn", "uvicorn.access")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    loggers[1].setLevel(logging.DEBUG)  # every line the service writes, whatever the operator's level
    monkeypatch.setattr(httpx.Client, "send", recorded)
    monkeypatch.setattr(httpx.AsyncClient, "send", recorded_async)
    yield seen
    for logger, level in zip(loggers, levels):
        logger.removeHandler(handler)
        logger.setLevel(level)
    if request.node.get_closest_marker("reveals_ids") is None:
        leaked = sorted({secret for secret in secrets for text in seen if secret in text})
        assert not leaked, f"patient ids in answers or logs: {leaked[:5]}"
