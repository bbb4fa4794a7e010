"""Uploads declaring more pixels than a radiograph needs are refused from their header: 413, one line."""

from convirt.serve.app import create_app
from tests.data.test_pixel_cap import declared_png
from tests.serve.client import local_client


def test_an_upload_declaring_too_many_pixels_is_a_413_with_a_reason(service, tmp_path):
    client = local_client(create_app(service))
    data = declared_png(tmp_path / "bomb.png", 20_000, 20_000).read_bytes()
    for endpoint in ("/v1/diagnose", "/v1/search"):
        answer = client.post(endpoint, files={"image": ("x.png", data, "image/png")})
        assert answer.status_code == 413, answer.text
        detail = answer.json()["detail"]
        assert "past the limit" in detail and "\n" not in detail


def _damaged_dicoms(tmp_path) -> dict[str, bytes]:
    """DICOMs that once answered 500 (found by tests/serve/test_upload_fuzz.py), by their damage."""
    from tests.serve.fuzz_uploads import dicom_with, make_seeds

    seeds = make_seeds(tmp_path)
    deflated = bytearray(seeds["dicom-deflated"])
    start = 144 + int.from_bytes(deflated[140:144], "little")  # after the file meta group
    deflated[start] = 0xFF  # a deflate block of the reserved type
    return {
        "a corrupt deflate stream": bytes(deflated),  # zlib.error
        "an empty window": dicom_with(seeds["dicom"], {"WindowCenter": [], "WindowWidth": 40}),  # IndexError
        "fewer rows than its pixels": dicom_with(seeds["dicom"], {"Rows": 20}),  # pydicom: two frames
    }


def test_a_damaged_dicom_is_a_400_with_a_reason(service, tmp_path):
    from tests.serve.fuzz_uploads import dicom_with, make_seeds

    client = local_client(create_app(service))
    failures = []
    for damage, data in _damaged_dicoms(tmp_path).items():
        answer = client.post("/v1/search", files={"image": ("x.dcm", data, "application/dicom")}, data={"k": "1"})
        detail = answer.json().get("detail", "")
        if answer.status_code != 400 or not detail.startswith("cannot read the dicom image") or "\n" in detail:
            failures.append((damage, answer.status_code, detail))
    assert not failures
    # An empty slope is read as none (1), as DICOM readers do, rather than refused.
    empty = dicom_with(make_seeds(tmp_path)["dicom"], {"RescaleSlope": ""})
    answer = client.post("/v1/search", files={"image": ("x.dcm", empty, "application/dicom")}, data={"k": "1"})
    assert answer.status_code == 200
