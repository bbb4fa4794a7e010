"""A zoo of rows that once ended a whole `convirt shards` run, or slipped through as samples: each
is now skipped, logged and counted by its reason, and `--strict` stops on it naming the file."""

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from convirt.cli.main import main
from convirt.data import prepare
from convirt.data.prepare import MAX_REPORT_CHARS
from convirt.data.sources import read_rows
from convirt.data.writer import write_shards
from tests.conftest import write_dicom


def _bomb_png(path: Path, side: int) -> None:
    """A PNG whose header claims ``side`` x ``side`` pixels (PIL refuses it at open, as a decompression bomb)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: (
        struct.pack(">I", len(data))
        + kind
        + data  # noqa: E731
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width), dtype=np.uint8)


# file name -> (what the row's report says, the reason it is dropped for); None: kept.
ZOO = {
    "good.png": ("Lungs are clear.", None),
    "rgba.png": ("An RGBA export of a radiograph.", None),
    "cmyk.jpg": ("A CMYK JPEG.", None),
    "long_report.png": ("x" * (MAX_REPORT_CHARS + 70_000), "report_too_long"),  # past csv's 128 KB field limit too
    "elongated.png": ("A 16 x 4000 strip.", "image_too_elongated"),
    "one_pixel.png": ("A 1 x 1 image.", "image_too_small"),
    "constant.png": ("All one grey.", "constant_image"),
    "bomb.png": ("A header of 20000 x 20000 pixels.", "image_too_large"),
    "text.png": ("Not an image at all.", "unreadable_image"),
    "empty.jpg": ("A zero-byte file.", "unreadable_image"),
    "tiny.dcm": ("A 4 x 4 DICOM.", "image_too_small"),
    "constant.dcm": ("A DICOM of one value.", "constant_image"),
    "no_pixels.dcm": ("A DICOM without pixel data.", "unreadable_image"),
    "j2k_garbage.dcm": ("A JPEG 2000 DICOM whose frames are noise.", "unreadable_image"),
    "colour.dcm": ("An RGB DICOM.", "refused_image"),
    "truncated.dcm": ("Half a DICOM file.", "unreadable_image"),
}


@pytest.fixture
def zoo(tmp_path) -> Path:
    images = tmp_path / "zoo"
    images.mkdir()
    Image.fromarray(_noise(64, 80, 0)).save(images / "good.png")
    Image.fromarray(np.dstack([_noise(64, 80, 1)] * 3 + [np.full((64, 80), 255, np.uint8)])).save(images / "rgba.png")
    Image.fromarray(np.dstack([_noise(64, 96, 11)] * 4), mode="CMYK").save(images / "cmyk.jpg")
    Image.fromarray(_noise(64, 80, 2)).save(images / "long_report.png")
    Image.fromarray(_noise(16, 4000, 3)).save(images / "elongated.png")
    Image.fromarray(np.full((1, 1), 7, np.uint8)).save(images / "one_pixel.png")
    Image.fromarray(np.full((64, 80), 90, np.uint8)).save(images / "constant.png")
    _bomb_png(images / "bomb.png", 20_000)
    (images / "text.png").write_text("not a PNG\n")
    (images / "empty.jpg").write_bytes(b"")
    write_dicom(images / "tiny.dcm", (_noise(4, 4, 4).astype(np.uint16) * 16))
    write_dicom(images / "constant.dcm", np.full((40, 48), 1000, np.uint16))
    write_dicom(images / "no_pixels.dcm", None)
    write_dicom(
        images / "j2k_garbage.dcm", None, syntax=JPEG2000Lossless, pixel_data=encapsulate([bytes(_noise(1, 500, 5))])
    )
    write_dicom(images / "colour.dcm", np.dstack([_noise(40, 48, 6)] * 3), samples=3)
    write_dicom(images / "whole.dcm", (_noise(40, 48, 7).astype(np.uint16) * 16))
    whole = (images / "whole.dcm").read_bytes()
    (images / "truncated.dcm").write_bytes(whole[: len(whole) // 2])
    (images / "whole.dcm").unlink()
    table = tmp_path / "zoo.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["image", "text", "patient_id"])
        out.writerows([f"zoo/{name}", text, f"p{i}"] for i, (name, (text, _)) in enumerate(ZOO.items()))
    return table


def _expected_drops() -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason in ZOO.values():
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
    return counts


def test_no_row_of_the_zoo_ends_the_run_and_each_is_counted(zoo, tmp_path):
    out = tmp_path / "shards"
    # Through the command, with 2 decoding processes, as a user runs it.
    assert (
        main(
            [
                "shards",
                "--input",
                str(zoo),
                "--output",
                str(out),
                "--image-size",
                "512",
                "--workers",
                "2",
                "--val-fraction",
                "0",
                "--test-fraction",
                "0",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dropped"] == _expected_drops()
    assert manifest["samples"] == 3  # good.png, rgba.png, cmyk.jpg
    drops = {
        json.loads(line)["path"].split("/")[-1]: json.loads(line)
        for line in (out / "dropped.jsonl").read_text().splitlines()
    }
    assert {name: drop["reason"] for name, drop in drops.items()} == {
        name: reason for name, (_, reason) in ZOO.items() if reason
    }
    assert "65500" in drops["elongated.png"]["detail"] and "1x1" in drops["one_pixel.png"]["detail"]


@pytest.mark.parametrize("name", [name for name, (_, reason) in ZOO.items() if reason])
def test_strict_stops_on_each_naming_the_file(zoo, tmp_path, name):
    rows = [row for row in read_rows("csv", str(zoo)) if row.image_path.endswith(name)]
    reason = ZOO[name][1]
    with pytest.raises(ValueError, match=f"{reason.replace('_', ' ')}.*{name} .*rerun without --strict"):
        write_shards(rows, tmp_path / "strict", strict=True, image_size=512, progress=False)


def test_strict_through_the_command_is_one_line_naming_the_file(zoo, tmp_path, capsys):
    code = main(
        [
            "shards",
            "--input",
            str(zoo),
            "--output",
            str(tmp_path / "s"),
            "--image-size",
            "512",
            "--strict",
            "--workers",
            "1",
        ]
    )
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "convirt: error: " in line]
    assert len(errors) == 1 and "zoo/" in errors[0] and "rerun without --strict" in errors[0]


def test_an_injected_exception_is_counted_by_type_and_named_in_strict_mode(zoo, tmp_path, monkeypatch):
    encode = prepare.encode_jpeg

    def failing_encode(image):
        if image.size == (640, 512):  # rgba.png at 512 px
            raise TypeError("injected in encoding")
        return encode(image)

    parse = prepare.parse_sections

    def failing_parse(text):
        if text.startswith("Lungs are clear"):
            raise RuntimeError("injected in the report parser")
        return parse(text)

    monkeypatch.setattr(prepare, "encode_jpeg", failing_encode)
    monkeypatch.setattr(prepare, "parse_sections", failing_parse)
    rows = lambda: read_rows("csv", str(zoo))  # noqa: E731
    manifest = write_shards(
        rows, tmp_path / "out", image_size=512, val_fraction=0, test_fraction=0, progress=False, workers=1, shard_size=4
    )
    assert manifest["dropped"] == {
        **_expected_drops(),
        "unexpected_error:TypeError": 1,
        "unexpected_error:RuntimeError": 1,
    }
    assert manifest["samples"] == 1  # cmyk.jpg
    drops = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert {d["detail"] for d in drops if d["reason"].startswith("unexpected")} == {
        "injected in encoding",
        "injected in the report parser",
    }
    with pytest.raises(ValueError, match="unexpected error:TypeError: injected in encoding: .*rgba.png") as error:
        write_shards(
            [r for r in rows() if r.image_path.endswith("rgba.png")],
            tmp_path / "strict",
            strict=True,
            image_size=512,
            progress=False,
        )
    assert isinstance(error.value.__cause__, TypeError)  # the traceback behind the line is kept


def test_a_record_the_reader_cannot_turn_into_a_row_is_counted(zoo, tmp_path, monkeypatch):
    from convirt.data.sources import csv as csv_source

    labels = csv_source._labels

    def failing_labels(value):
        if value == "boom":
            raise KeyError("injected in the label reader")
        return labels(value)

    monkeypatch.setattr(csv_source, "_labels", failing_labels)
    table = tmp_path / "labels.csv"
    Image.fromarray(_noise(64, 80, 9)).save(tmp_path / "a.png")
    Image.fromarray(_noise(64, 80, 10)).save(tmp_path / "b.png")
    table.write_text("image,text,labels\na.png,Clear lungs.,boom\nb.png,Clear lungs.,\n", encoding="utf-8")
    manifest = write_shards(
        lambda: read_rows("csv", str(table)), tmp_path / "out", val_fraction=0, test_fraction=0, progress=False
    )
    assert manifest["dropped"] == {"unexpected_error:KeyError": 1} and manifest["samples"] == 1
