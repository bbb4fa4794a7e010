"""A folder seeded with the inputs real archives hold: each is converted, or skipped and counted."""

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt.data.images import load_grayscale
from convirt.data.sources import read_rows
from convirt.data.writer import write_shards
from tests.conftest import write_dicom

_dicom = write_dicom


def _ramp(height: int = 40, width: int = 60) -> np.ndarray:
    return np.tile(np.linspace(0, 4095, width), (height, 1)).astype(np.uint16)


def test_dicom_windowing_monochrome1_and_rescale(tmp_path):
    _dicom(tmp_path / "m2.dcm", _ramp())
    _dicom(tmp_path / "m1.dcm", _ramp(), photometric="MONOCHROME1")
    _dicom(tmp_path / "win.dcm", _ramp(), window=(2048, 1024))
    _dicom(tmp_path / "rescale.dcm", _ramp(), slope=2.0, intercept=-1000, window=(3096, 2048))
    m2 = np.asarray(load_grayscale(tmp_path / "m2.dcm"))
    m1 = np.asarray(load_grayscale(tmp_path / "m1.dcm"))
    assert m2[0, 0] == 0 and m2[0, -1] == 255 and np.array_equal(m1, 255 - m2)
    win = np.asarray(load_grayscale(tmp_path / "win.dcm"))
    # Window 1536..2560 of a 0..4095 ramp: the outer thirds saturate, the middle is a ramp.
    assert win[0, :10].max() == 0 and win[0, -10:].min() == 255 and 100 < win[0, 30] < 155
    # slope 2, intercept -1000: value 2048 -> 3096, the window's centre.
    rescaled = np.asarray(load_grayscale(tmp_path / "rescale.dcm"))
    assert abs(int(rescaled[0, 30]) - 128) < 12
    assert load_grayscale(tmp_path / "m2.dcm", 20).size == (30, 20)


def test_a_folder_of_bad_inputs_is_skipped_and_counted_by_reason(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    good = rng.integers(0, 255, (64, 80), dtype=np.uint8)
    Image.fromarray(good).save(images / "good.png")
    sixteen = _ramp(64, 80)
    Image.fromarray(sixteen).save(images / "sixteen.png")  # 16-bit PNG
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)).save(buffer, format="JPEG")
    (images / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 255, 300, dtype=np.uint8)))
    _dicom(images / "mono1.dcm", _ramp(64, 80), photometric="MONOCHROME1")
    _dicom(images / "cine.dcm", np.stack([_ramp(64, 80)] * 3), frames=3)
    Image.fromarray(good[::-1].copy()).save(images / "empty_report.png")
    Image.fromarray(good[:, ::-1].copy()).save(images / "latin1.png")
    rows = [
        ("good.png", "Lungs clear."),
        ("sixteen.png", "Lungs clear, 16 bit."),
        ("truncated.jpg", "Truncated file."),
        ("corrupt.png", "Corrupt file."),
        ("mono1.dcm", "Inverted DICOM."),
        ("cine.dcm", "Three frames."),
        ("empty_report.png", "   "),
        ("latin1.png", "caf\xe9 report"),
        ("missing.png", "No file."),
    ]
    table = tmp_path / "rows.csv"
    with open(table, "w", newline="", encoding="latin-1") as handle:  # one row is not UTF-8
        writer = csv.writer(handle)
        writer.writerow(["image", "text", "patient_id"])
        writer.writerows([f"images/{name}", text, f"p{i}"] for i, (name, text) in enumerate(rows))
    manifest = write_shards(
        lambda: read_rows("csv", str(table)),
        tmp_path / "out",
        image_size=32,
        val_fraction=0,
        test_fraction=0,
        progress=False,
    )
    assert manifest["dropped"] == {
        "empty_report": 1,
        "missing_image": 1,
        "non_utf8_text": 1,
        "refused_image": 1,
        "unreadable_image": 2,
    }
    assert manifest["samples"] == 3
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        keys = sorted({Path(name).stem for name in tar.getnames()})
        assert keys == ["images_good", "images_mono1", "images_sixteen"]
        sixteen_stored = np.asarray(Image.open(tar.extractfile("images_sixteen.jpg")))
        mono1 = np.asarray(Image.open(tar.extractfile("images_mono1.jpg")))
    # 12 bits stored in 16: stretched to the 8-bit range, not crushed to black.
    assert sixteen_stored[:, 0].mean() < 20 and sixteen_stored[:, -1].mean() > 235
    assert mono1[:, 0].mean() > 200 and mono1[:, -1].mean() < 50  # MONOCHROME1 inverted
    drops = {
        json.loads(line)["path"].split("/")[-1]: json.loads(line)["reason"]
        for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()
    }
    assert drops == {
        "truncated.jpg": "unreadable_image",
        "corrupt.png": "unreadable_image",
        "cine.dcm": "refused_image",
        "empty_report.png": "empty_report",
        "latin1.png": "non_utf8_text",
        "missing.png": "missing_image",
    }
    with pytest.raises(ValueError, match="truncated.jpg .*rerun without --strict"):
        write_shards(
            lambda: [r for r in read_rows("csv", str(table)) if "truncated" in r.image_path],
            tmp_path / "strict",
            strict=True,
            progress=False,
        )
    with pytest.raises(ValueError, match="multi-frame DICOM \\(3 frames\\)"):
        write_shards(
            lambda: [r for r in read_rows("csv", str(table)) if "cine" in r.image_path],
            tmp_path / "strict-dicom",
            strict=True,
            progress=False,
        )
