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
