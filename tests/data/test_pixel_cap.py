"""Images are refused past a pixel limit from their header alone, before anything is decoded:
a small file may declare a huge image (a decompression bomb)."""

import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from convirt.data.images import MAX_IMAGE_PIXELS, RefusedImageError, load_grayscale
from tests.conftest import write_dicom


def declared_png(path, width, height):
    """A tiny valid PNG (one grey row of zeros per line, compressed) whose header declares ``width x height``."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = zlib.compressobj(9)
    body = b"".join(rows.compress(b"\x00" * (width + 1)) for _ in range(min(height, 64))) + rows.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [20_000, 9_000])  # past PIL's own bomb limit, and past only ours
def test_a_png_declaring_too_many_pixels_is_refused_from_its_header(tmp_path, side):
    path = declared_png(tmp_path / "bomb.png", side, side)
    assert path.stat().st_size < 100_000
    start = time.perf_counter()
    with pytest.raises(RefusedImageError) as refused:
        load_grayscale(path)
    assert refused.value.reason == "image_too_large" and time.perf_counter() - start < 1.0


def test_a_dicom_declaring_too_many_pixels_is_refused_before_its_pixels_are_read(tmp_path):
    path = tmp_path / "big.dcm"
    write_dicom(path, None, shape=(12_000, 12_000), pixel_data=b"\x00" * 64)  # the header lies about the data
    with pytest.raises(RefusedImageError, match=r"12000x12000 px \(144,000,000 pixels\) is past the limit"):
        load_grayscale(path)
    write_dicom(tmp_path / "frames.dcm", None, shape=(4_000, 4_000), frames=8, pixel_data=b"\x00" * 64)
    with pytest.raises(RefusedImageError, match="image_too_large|8 frames"):
        load_grayscale(tmp_path / "frames.dcm")


def test_an_image_within_the_limit_still_reads(tmp_path):
    Image.fromarray(np.full((60, 80), 7, dtype=np.uint8)).save(tmp_path / "ok.png")
    assert load_grayscale(tmp_path / "ok.png").size == (80, 60)
    assert MAX_IMAGE_PIXELS >= 4_300 * 4_300  # a real radiograph passes
    with pytest.raises(RefusedImageError):
        load_grayscale(tmp_path / "ok.png", max_pixels=100)


def test_shards_count_a_bomb_as_image_too_large(tmp_path):
    import json

    from convirt.data.schema import Row
    from convirt.data.writer import write_shards

    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)).save(tmp_path / "ok.png")
    declared_png(tmp_path / "bomb.png", 20_000, 20_000)
    rows = [
        Row(key="ok", image_path=str(tmp_path / "ok.png"), text="FINDINGS: clear lungs.", patient_id="a"),
        Row(key="bomb", image_path=str(tmp_path / "bomb.png"), text="FINDINGS: clear lungs.", patient_id="b"),
    ]
    write_shards(rows, tmp_path / "shards", image_size=32, test_fraction=0.0, val_fraction=0.0, progress=False)
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["dropped"].get("image_too_large") == 1


def test_a_deflated_dicom_bomb_is_refused_while_inflating_in_bounded_chunks(tmp_path, monkeypatch):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = tmp_path / "deflated.dcm"
    write_dicom(path, None, shape=(2_000, 2_000), pixel_data=bytes(20_000_000), syntax=DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size < 100_000  # 20 MB of pixels deflate to some kilobytes
    real = pydicom.dcmread

    def header_only(*args, **kwargs):
        assert kwargs.get("stop_before_pixels"), "the whole deflated file was read before its size was known"
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", header_only)
    with pytest.raises(RefusedImageError, match="deflated DICOM inflating past 16 MiB") as refused:
        load_grayscale(path, max_pixels=1_000)  # a limit of 16 MiB of inflated data here
    assert refused.value.reason == "image_too_large"
    monkeypatch.undo()
    small = tmp_path / "small.dcm"  # within the limit, a deflated file still reads
    write_dicom(small, np.arange(40 * 48).reshape(40, 48) % 4096, syntax=DeflatedExplicitVRLittleEndian)
    assert load_grayscale(small).size == (48, 40)
