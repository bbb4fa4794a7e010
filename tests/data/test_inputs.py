"""Embedding inputs: a CSV without text, an image folder, metadata filters."""

import shutil

import pytest
import torch

from convirt.data.inputs import build_input_batches, parse_where, read_image_rows
from convirt.data.transforms import build_image_transform


def _tokenize(texts):
    return torch.zeros(len(texts), 4, dtype=torch.long)


def test_csv_without_text_filtered_by_metadata(labels_csv):
    rows = read_image_rows(labels_csv)
    assert len(rows) == 96 and all(row.text == "" for row in rows)
    even = read_image_rows(labels_csv, parse_where(["source=even"]))
    assert len(even) == 48 and {row.source for row in even} == {"even"}
    effusion = read_image_rows(labels_csv, {"labels": "Pleural Effusion"})
    assert effusion and all("Pleural Effusion" in row.labels for row in effusion)


def test_filter_and_input_errors(labels_csv, tmp_path):
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_where(["source"])
    with pytest.raises(ValueError, match="no row of .* matches source=nowhere"):
        read_image_rows(labels_csv, {"source": "nowhere"})
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        read_image_rows(tmp_path / "missing.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        read_image_rows(tmp_path / "empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,labels\na.png,\n")
    with pytest.raises(ValueError, match="column 'image' not found; columns: path, labels"):
        read_image_rows(bad)


def test_image_folder_rows_are_sorted_with_relative_keys(phantom_csv, tmp_path):
    folder = tmp_path / "imgs"
    (folder / "b").mkdir(parents=True)
    images = sorted((phantom_csv.parent / "images").glob("*.png"))[:3]
    shutil.copy(images[0], folder / "b" / "x.png")
    shutil.copy(images[1], folder / "a.png")
    shutil.copy(images[2], folder / "c.jpeg.png")
    (folder / "notes.txt").write_text("not an image")
    rows = read_image_rows(folder)
    assert [row.key for row in rows] == ["a", "b_x", "c_jpeg"]


def test_csv_batches_keep_order_metadata_and_skip_done(labels_csv):
    transform = build_image_transform(32, [0.5] * 3, [0.5] * 3, train=False)
    expected = [row.key for row in read_image_rows(labels_csv)]
    batches = list(build_input_batches(labels_csv, transform, _tokenize, 10, skip_keys={expected[3]}))
    keys = [key for batch in batches for key in batch["key"]]
    assert keys == expected[:3] + expected[4:] and len(keys) == 95
    assert batches[0]["image"].shape == (10, 3, 32, 32)
    meta = batches[0]["meta"][0]
    assert meta["path"].endswith(".png") and meta["source"] == "even" and "patient_id" in meta


def test_shard_batches_filtered_by_metadata(phantom_shards):
    transform = build_image_transform(32, [0.5] * 3, [0.5] * 3, train=False)
    batches = build_input_batches(
        phantom_shards, transform, _tokenize, 8, split="train", where={"labels": "Cardiomegaly"}
    )
    metas = [meta for batch in batches for meta in batch["meta"]]
    assert metas and all("Cardiomegaly" in meta["labels"] for meta in metas)
