import csv
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from convirt.data.schema import MANIFEST, Row
from convirt.data.sources import read_rows
from convirt.data.writer import assign_split, read_manifest, shard_urls, write_shards


def _rows(tmp_path: Path, n: int = 6) -> list[Row]:
    rows = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.new("L", (40 + i, 30), color=i * 20).save(path)
        rows.append(Row(key=f"k{i}", image_path=str(path), text=f"Report {i}.", patient_id=f"p{i // 2}",
                        labels=["Edema"] if i % 2 else []))
    return rows


def test_shards_hold_every_usable_row_with_manifest(tmp_path):
    manifest = write_shards(_rows(tmp_path), tmp_path / "out", image_size=24, shard_size=2, val_fraction=0.2,
                            test_fraction=0.3, progress=False)
    assert manifest["samples"] == 6 and manifest["dropped"] == {}
    assert json.loads((tmp_path / "out" / MANIFEST).read_text()) == manifest
    names = []
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            assert shard["samples"] <= 2 and len(shard["sha256"]) == 64
            with tarfile.open(tmp_path / "out" / shard["name"]) as tar:
                names += tar.getnames()
    assert sorted(n for n in names if n.endswith(".jpg")) == [f"k{i}.jpg" for i in range(6)]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_images_are_stored_gray_with_short_side_resized(tmp_path):
    write_shards(_rows(tmp_path, 1), tmp_path / "out", image_size=24, val_fraction=0, test_fraction=0,
                 progress=False)
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        image = Image.open(tar.extractfile("k0.jpg"))
        assert image.mode == "L" and min(image.size) == 24 and image.size == (32, 24)


def test_patients_never_cross_splits(tmp_path):
    rows = _rows(tmp_path, 40)
    write_shards(rows, tmp_path / "out", shard_size=100, val_fraction=0.3, test_fraction=0.3, progress=False)
    splits = {row.patient_id: assign_split(row.patient_id, 0.3, 0.3) for row in rows}
    manifest = read_manifest(tmp_path / "out")
    assert sum(manifest["splits"][s]["samples"] for s in ("train", "val", "test")) == 40
    for i in range(0, 40, 2):  # two images per patient
        assert splits[f"p{i // 2}"] == assign_split(f"p{i // 2}", 0.3, 0.3)


def test_bad_rows_are_counted_by_reason_or_fatal_when_strict(tmp_path):
    rows = _rows(tmp_path, 3)
    rows[0].image_path = str(tmp_path / "missing.png")
    rows[1].text = "  "
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append(Row(key="k9", image_path=str(tmp_path / "broken.png"), text="x.", patient_id="p9"))
    manifest = write_shards(rows, tmp_path / "out", progress=False)
    assert manifest["dropped"] == {"empty_text": 1, "missing_image": 1, "unreadable_image": 1}
    with pytest.raises(ValueError, match="missing image: .*missing.png"):
        write_shards(rows, tmp_path / "strict", strict=True, progress=False)


def test_empty_input_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no usable samples"):
        write_shards([], tmp_path / "out", progress=False)


def test_csv_reader_names_missing_columns(tmp_path):
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "report"], ["a.png", "x"]])
    with pytest.raises(ValueError, match="column 'image' not found; columns: path, report"):
        list(read_rows("csv", str(path)))
    with pytest.raises(ValueError, match="unknown source 'mimic'; known: csv"):
        read_rows("mimic", str(path))


def test_shard_urls_errors(phantom_shards, tmp_path):
    assert all(Path(u).is_file() for u in shard_urls(phantom_shards, "train"))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        shard_urls(phantom_shards, "dev")
    with pytest.raises(FileNotFoundError, match="convirt shards"):
        shard_urls(tmp_path, "train")
