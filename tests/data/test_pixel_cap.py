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


def test_a_deflated_radiograph_inflating_past_a_chunk_reads_in_time(tmp_path):
    """A 3000 x 3000 16-bit deflated DICOM inflates to 18 MB, past one 16 MiB chunk: the inflater
    used to spin at the stream's end forever (zlib keeps one byte unconsumed and answers nothing)."""
    import subprocess
    import sys

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = tmp_path / "deflated-3000.dcm"
    pixels = (np.add.outer(np.arange(3000), np.arange(3000)) % 4096).astype(np.uint16)
    write_dicom(path, pixels, shape=(3000, 3000), syntax=DeflatedExplicitVRLittleEndian)
    code = f"from convirt.data.images import load_grayscale; print(load_grayscale({str(path)!r}).size)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "(3000, 3000)", done.stderr[-500:]


def test_rescale_is_applied_in_float32_without_a_float64_frame(tmp_path, monkeypatch):
    """Slope and intercept give what pydicom's rescale gives, without its float64 copy of the frame:
    the peak of the arrays allocated while reading stays under 11 bytes per pixel (float64 made it 16)."""
    import tracemalloc

    import pydicom.pixels

    path = tmp_path / "rescaled.dcm"
    side = 2000
    pixels = (np.add.outer(np.arange(side), np.arange(side)) % 4000).astype(np.uint16)
    write_dicom(path, pixels, shape=(side, side), slope=2.0, intercept=-1024.0)
    rescaled = pixels * 2.0 - 1024.0  # the modality LUT as DICOM defines it
    low, high = rescaled.min(), rescaled.max()
    expected = np.round((rescaled - low) * (255.0 / (high - low))).astype(np.uint8)
    monkeypatch.setattr(pydicom.pixels, "apply_modality_lut", lambda *a: pytest.fail("pydicom's float64 rescale"))
    tracemalloc.start()
    try:
        got = np.asarray(load_grayscale(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert peak < 11 * side * side, f"{peak / side / side:.1f} bytes per pixel"


def broken_png(path):
    """A PNG whose IDAT declares fewer bytes than it holds: PIL says SyntaxError("broken PNG file")."""
    import io
    import struct

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(40 * 48).reshape(40, 48) % 256).astype(np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"IDAT") - 4
    data[at : at + 4] = struct.pack(">I", struct.unpack(">I", data[at : at + 4])[0] // 2)
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_png_is_an_oserror_naming_the_damage(tmp_path):
    with pytest.raises(OSError, match=r"damaged image \(SyntaxError: broken PNG file"):
        load_grayscale(broken_png(tmp_path / "broken.png"))
