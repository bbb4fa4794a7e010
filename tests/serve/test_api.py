"""`convirt serve`'s API through FastAPI's test client: every endpoint, every refusal, logs that name nobody."""

import io
import logging
import threading
import time

import numpy as np
from PIL import Image

from convirt.serve.admission import Limits
from convirt.serve.app import create_app
from convirt.serve.batching import MicroBatcher
from convirt.serve.schema import Diagnosis
from tests.answers import assert_answers_match
from tests.conftest import write_dicom
from tests.serve.client import local_client
from tests.serve.conftest import draws_maps


def _png(path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_endpoint_answers(any_service, archive):
    service = any_service
    _, _, rows = archive
    client = local_client(create_app(service))
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/info").json()
    assert info["index"]["count"] == len(rows) and info["descriptors"] == "phantom"
    upload = {"image": ("x-ray.png", _png(rows[0].image_path), "image/png")}
    asked = client.post("/v1/diagnose", files=upload, data={"saliency": "true", "k": "5"})
    if not draws_maps(service):  # onnxruntime: saliency refused with its reason, the diagnosis without maps given
        assert asked.status_code == 409 and asked.json()["detail"].startswith("no saliency maps: ")
        asked = client.post("/v1/diagnose", files=upload, data={"k": "5"})
    answer = asked.json()
    names = [f["finding"] for f in answer["findings"]]
    assert names == info["findings"] and len(answer["neighbours"]) == 5
    first = answer["findings"][0]
    assert 0 <= first["score"] <= 1 and 0 <= first["knn_vote"] <= 1 and first["observations"]
    assert first["probability"] is None and first["operating_point"] is None and info["calibration"] is None
    maps = first["saliency_png"]
    assert maps.startswith("data:image/png;base64,") if draws_maps(service) else maps is None
    # Search by image, the query's patient left out; by text.
    found = client.post("/v1/search", files=upload, data={"k": "3", "patient_id": rows[0].patient_id}).json()["cases"]
    assert len(found) == 3 and all(rows[case["id"]].patient_id != rows[0].patient_id for case in found)
    assert found[0].keys().isdisjoint({"patient_id", "path"})  # shown metadata only; key and study id on request
    assert found[0]["key"] is None and found[0]["study_id"] is None and len(found[0]["ref"]) == 16
    by_text = client.post("/v1/search", data={"text": "enlarged cardiac silhouette", "k": "4"}).json()["cases"]
    assert len(by_text) == 4 and by_text[0]["score"] >= by_text[-1]["score"]
    # Search by an archive case: its stored vector, the case and its patient left out.
    like = client.post("/v1/search", data={"case": "0", "k": "3"}).json()["cases"]
    assert len(like) == 3 and all(rows[c["id"]].patient_id != rows[0].patient_id for c in like)
    assert client.post("/v1/search", data={"case": "99999"}).status_code == 404
    assert client.post("/v1/search", data={"case": "0", "text": "x"}).status_code == 400
    case = client.get(f"/v1/cases/{found[0]['id']}").json()
    assert case["report"].startswith("report ") and case["image_url"] == f"/v1/cases/{found[0]['id']}/image"
    image = client.get(case["image_url"])
    assert image.headers["content-type"] == "image/jpeg" and image.content[:3] == b"\xff\xd8\xff"
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/diagnose", "/v1/search", "/v1/info"}
    page = client.get("/").text  # the page: one file, nothing fetched from elsewhere, the disclaimer said
    assert "not a diagnostic device" in page and "https://" not in page and "http://" not in page


def test_bad_inputs_get_the_right_4xx_and_the_logs_name_nobody(any_service, archive, tmp_path, caplog):
    service = any_service
    _, _, rows = archive
    client = local_client(create_app(service, limits=Limits(max_upload_bytes=200_000)))
    png = _png(rows[0].image_path)
    frames = tmp_path / "multi.dcm"
    write_dicom(frames, np.zeros((3, 40, 48), dtype=np.uint16) + 500, frames=3)
    cases = {
        "wrong type": (("notes.png", b"FINDINGS: clear lungs", "image/png"), 415, "not a PNG, JPEG or DICOM"),
        "truncated": (("x.png", png[: len(png) // 2], "image/png"), 400, "cannot read the png image"),
        "multi-frame DICOM": (("x.dcm", frames.read_bytes(), "application/dicom"), 400, "multi-frame DICOM"),
        "oversized": (("x.png", png + b"\0" * 200_000, "image/png"), 413, "over the limit"),
        "empty": (("x.png", b"", "image/png"), 400, "empty upload"),
    }
    caplog.set_level(logging.INFO, logger="convirt.serve")
    for name, (upload, status, reason) in cases.items():
        answer = client.post("/v1/diagnose", files={"image": upload})
        assert answer.status_code == status, name
        assert reason in answer.json()["detail"] and "Traceback" not in answer.text, name
    for bad in ("999999", "-1", "..%2F..%2Fetc%2Fpasswd", "1.5", "0x1"):
        assert client.get(f"/v1/cases/{bad}").status_code == 404, bad
        assert client.get(f"/v1/cases/{bad}/image").status_code == 404, bad
    single = tmp_path / "single.dcm"
    write_dicom(single, (np.arange(40 * 48).reshape(40, 48) % 4000).astype(np.uint16))
    dicom = client.post("/v1/diagnose", files={"image": ("any-name.bin", single.read_bytes(), "text/plain")})
    assert dicom.status_code == 200 and dicom.json()["findings"]  # typed by content: a DICOM, whatever its name
    assert client.post("/v1/search", data={}).status_code == 400
    assert client.post("/v1/search", data={"text": "x", "k": "0"}).status_code == 400
    logged = caplog.text
    assert "request " in logged and "upload sha256" in logged
    for secret in (rows[0].patient_id, "notes.png", "x-ray.png", "lungs are clear", str(frames)):
        assert secret not in logged


def test_a_token_guards_every_api_call(service):
    client = local_client(create_app(service, token="s3cret"))
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/info").status_code == 401
    assert client.get("/v1/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/v1/cases/0", headers={"Authorization": "s3cret"}).status_code == 401
    assert client.get("/v1/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_concurrent_calls_share_batches():
    def slow(items):
        time.sleep(0.05)
        return [item * 2 for item in items]

    batcher = MicroBatcher(slow, max_batch=8, max_wait_s=0.02)
    results: dict[int, int] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher(i))) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {i: 2 * i for i in range(8)}
    assert max(batcher.batches) > 1 and sum(batcher.batches) == 8


def test_concurrent_searches_share_one_forward_pass_and_one_index_search(any_service, archive):
    service = any_service
    _, _, rows = archive
    images = [Image.open(row.image_path) for row in rows[:8]]
    alone = [service.search_image(image, k=4, patient_id=row.patient_id) for image, row in zip(images, rows)]
    service.image_queries.batches.clear()
    together: dict[int, list] = {}

    def query(i: int) -> None:
        together[i] = service.search_image(images[i], k=4, patient_id=rows[i].patient_id)

    threads = [threading.Thread(target=query, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(service.image_queries.batches) > 1  # at least two queries in one batch
    for i, found in enumerate(alone):  # each query answered as if alone, its own patient still left out
        assert [c["id"] for c in together[i]] == [c["id"] for c in found]
        assert np.allclose([c["score"] for c in together[i]], [c["score"] for c in found], atol=1e-5)


def test_a_text_query_embeds_as_its_full_length_tokens_do(any_service):
    import torch

    loaded = any_service.loaded
    with torch.no_grad():
        full = loaded.model.encode_text(loaded.tokenizer(["blunted left costophrenic angle"]), normalize=True)
    assert np.allclose(any_service.embed_text("blunted left costophrenic angle"), full[0].numpy(), atol=1e-5)


def test_the_command_refuses_another_host_without_a_token(archive, monkeypatch, capsys):
    from convirt.cli.main import main
    from convirt.serve.app import is_loopback

    _, folder, _ = archive
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    monkeypatch.delenv("CONVIRT_TOKEN", raising=False)
    assert main(["serve", "--model", "m.ckpt", "--index", str(folder), "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0 reaches other machines: pass --token" in capsys.readouterr().err


def test_a_batch_waits_at_most_its_wait_from_its_first_item_and_a_lone_call_not_at_all():
    seen: list[list[int]] = []

    def record(items):
        seen.append(list(items))
        return items

    eager = MicroBatcher(record)  # no wait: a lone call runs at once
    start = time.perf_counter()
    assert eager(1) == 1 and time.perf_counter() - start < 0.05
    patient = MicroBatcher(record, max_batch=64, max_wait_s=0.05)
    seen.clear()
    stop = time.perf_counter() + 0.3
    futures = []
    while time.perf_counter() < stop:  # a steady trickle, one item every 10 ms, for 0.3 s
        futures.append(patient.submit(len(futures)))
        time.sleep(0.01)
    assert [f.result() for f in futures] == list(range(len(futures)))
    # The trickle never stops, yet each batch closes 50 ms after its first item: several batches.
    assert len(seen) >= 4 and max(len(batch) for batch in seen) <= 8


def test_awaited_calls_share_batches_without_threads():
    import asyncio

    def double(items):
        time.sleep(0.02)
        return [2 * item for item in items]

    batcher = MicroBatcher(double, max_wait_s=0.01)

    async def many():
        return await asyncio.gather(*(batcher.run(i) for i in range(8)))

    assert asyncio.run(many()) == [2 * i for i in range(8)]
    assert max(batcher.batches) > 1 and sum(batcher.batches) == 8


def test_concurrent_requests_to_the_app_share_batches_and_answer_as_alone(service):
    import asyncio

    import httpx

    app = create_app(service)
    alone = [local_client(app).post("/v1/search", data={"case": str(i), "k": "3"}).json() for i in range(8)]

    async def together():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            answers = await asyncio.gather(
                *(client.post("/v1/search", data={"case": str(i), "k": "3"}) for i in range(8))
            )
        return [answer.json() for answer in answers]

    service.vector_queries.batches.clear()
    assert_answers_match(asyncio.run(together()), alone)  # a batch's BLAS product may differ in the last digits
    assert max(service.vector_queries.batches) > 1  # the coroutines' queries met in one batch


def test_the_awaited_methods_answer_as_the_blocking_ones(any_service, archive):
    import asyncio

    service = any_service
    _, _, rows = archive
    image = Image.open(rows[2].image_path)

    async def awaited():
        return (
            await service.search_image_async(image, k=4, patient_id=rows[2].patient_id),
            await service.search_text_async("enlarged cardiac silhouette", k=4),
            await service.search_case_async(2, k=4),
            await service.diagnose_async(image, k=4),
        )

    blocking = (
        service.search_image(image, k=4, patient_id=rows[2].patient_id),
        service.search_text("enlarged cardiac silhouette", k=4),
        service.search_case(2, k=4),
        service.diagnose(image, k=4),
    )
    for got, expected in zip(asyncio.run(awaited()), blocking):
        assert_answers_match(got, expected)


def test_index_searches_run_on_the_services_thread_count(archive, monkeypatch):
    import faiss

    import convirt.serve.service as module
    from convirt.serve.service import CaseService

    loaded, folder, _ = archive
    counts: list[int] = []
    real = module.search

    def counting(*args, **kwargs):
        counts.append(faiss.omp_get_max_threads())  # in the batcher's thread, where OpenMP's count is its own
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "search", counting)
    one = CaseService(loaded, folder, search_threads=1)
    one.search_case(0, k=2)
    one.search_text("clear lungs", k=2)
    assert counts == [1, 1]


def test_the_openapi_page_documents_typed_answers(service):
    spec = local_client(create_app(service)).get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"Diagnosis", "Finding", "Observation", "Search", "Neighbour", "Case", "Info"} <= schemas.keys()
    answer = spec["paths"]["/v1/search"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/Search"}


def test_an_archive_case_is_diagnosed_from_its_stored_vector_without_its_own_vote(any_service, archive):
    service, maps = any_service, draws_maps(any_service)
    _, _, rows = archive
    client = local_client(create_app(service))
    if not maps:
        refused = client.post("/v1/diagnose", data={"case": "3", "saliency": "true"})
        assert refused.status_code == 409 and refused.json()["detail"].startswith("no saliency maps: ")
    answer = client.post("/v1/diagnose", data={"case": "3", "k": "4", "saliency": str(maps).lower()}).json()
    assert answer == Diagnosis(**service.diagnose_case(3, saliency=maps, k=4)).model_dump(mode="json")
    assert len(answer["neighbours"]) == 4
    drawn = answer["findings"][0]["saliency_png"]
    assert drawn.startswith("data:image/png") if maps else drawn is None
    # The case and its patient's other images are left out of the neighbours and so of the vote.
    assert all(rows[n["id"]].patient_id != rows[3].patient_id for n in answer["neighbours"])
    # Its scores are those of its stored vector: the same as its image's, up to the index's precision.
    from_image = service.diagnose(Image.open(rows[3].image_path), k=4)
    assert np.allclose(
        [f["score"] for f in answer["findings"]], [f["score"] for f in from_image["findings"]], atol=1e-4
    )
    upload = {"image": ("x.png", _png(rows[0].image_path), "image/png")}
    assert client.post("/v1/diagnose", files=upload, data={"case": "3"}).status_code == 400
    assert client.post("/v1/diagnose", data={}).status_code == 400
    assert client.post("/v1/diagnose", data={"case": "99999"}).status_code == 404
    assert client.post("/v1/diagnose", data={"case": "../1"}).status_code == 404


def test_warm_up_runs_the_model_at_every_batch_size_a_batch_can_have(any_service, monkeypatch):
    service = any_service
    sizes: dict[str, list[int]] = {"image": [], "text": []}
    model = service.loaded.model
    image, text = model.encode_image, model.encode_text
    monkeypatch.setattr(model, "encode_image", lambda x, **kw: sizes["image"].append(len(x)) or image(x, **kw))
    monkeypatch.setattr(model, "encode_text", lambda x, **kw: sizes["text"].append(len(x)) or text(x, **kw))
    service.warm_up()
    every = list(range(1, service.image_queries.max_batch + 1))
    assert sizes == {"image": every, "text": every}
