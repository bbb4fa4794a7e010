import hashlib
import json
import math

import pytest

from convirt._io import atomic_folder, atomic_path, file_sha256, json_safe, write_json, write_jsonl, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed midway")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_failed_folder_write_leaves_the_old_folder(tmp_path):
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "out") as tmp:
        (tmp / "y").write_text("2")
        raise RuntimeError("killed midway")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_folder(tmp_path / "out") as tmp:
        (tmp / "z").write_text("3")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["z"]


def test_json_writes_nan_as_null_and_makes_the_folder(tmp_path):
    path = write_json(tmp_path / "sub" / "m.json", {"auroc": math.nan, "runs": (1.0, math.nan), "n": 3})
    assert json.loads(path.read_text()) == {"auroc": None, "runs": [1.0, None], "n": 3}
    assert json_safe([{"a": math.nan}]) == [{"a": None}]


def test_jsonl_is_one_object_a_line(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"k": 1}, {"k": 2}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"k": 1}, {"k": 2}]


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 9000  # over one read block
    (tmp_path / "b").write_bytes(data)
    assert file_sha256(tmp_path / "b") == hashlib.sha256(data).hexdigest()
