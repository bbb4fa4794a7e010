import csv
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from convirt.data.schema import MANIFEST, Row
from convirt.data.shards import read_manifest, shard_urls
from convirt.data.sources import read_rows
from convirt.data.writer import assign_split, write_shards
from tests.conftest import shaded_image


def _rows(tmp_path: Path, n: int = 6) -> list[Row]:
    rows = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        shaded_image((40 + i, 30), i * 20).save(path)
        rows.append(
            Row(
                key=f"k{i}",
                image_path=str(path),
                text=f"Report {i}.",
                patient_id=f"p{i // 2}",
                labels=["Edema"] if i % 2 else [],
            )
        )
    return rows


def test_shards_hold_every_usable_row_with_manifest(tmp_path):
    manifest = write_shards(
        _rows(tmp_path),
        tmp_path / "out",
        image_size=24,
        shard_size=2,
        val_fraction=0.2,
        test_fraction=0.3,
        progress=False,
    )
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
    write_shards(_rows(tmp_path, 1), tmp_path / "out", image_size=24, val_fraction=0, test_fraction=0, progress=False)
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        image = Image.open(tar.extractfile("k0.jpg"))
        assert image.mode == "L" and min(image.size) == 24 and image.size == (32, 24)


def test_patients_never_cross_splits(tmp_path):
    rows = _rows(tmp_path, 40)
    for i, row in enumerate(rows):  # distinct pixels, so that no image is an exact duplicate
        shaded_image((40, 30 + i), i * 5).save(row.image_path)
    write_shards(rows, tmp_path / "out", shard_size=7, val_fraction=0.3, test_fraction=0.3, progress=False)
    manifest = read_manifest(tmp_path / "out")
    assert sum(manifest["splits"][s]["samples"] for s in ("train", "val", "test")) == 40
    patients: dict[str, set[str]] = {}
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            with tarfile.open(tmp_path / "out" / shard["name"]) as tar:
                for name in tar.getnames():
                    if name.endswith(".json"):
                        patients.setdefault(split, set()).add(json.loads(tar.extractfile(name).read())["patient_id"])
    assert len(patients) == 3  # every split is used ...
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )  # ... and no patient is in two
    assert all(assign_split(p, 0.3, 0.3) == split for split, ps in patients.items() for p in ps)


def test_bad_rows_are_counted_by_reason_or_fatal_when_strict(tmp_path):
    rows = _rows(tmp_path, 3)
    rows[0].image_path = str(tmp_path / "missing.png")
    rows[1].text = "  "
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append(Row(key="k9", image_path=str(tmp_path / "broken.png"), text="x.", patient_id="p9"))
    manifest = write_shards(rows, tmp_path / "out", progress=False)
    assert manifest["dropped"] == {"empty_report": 1, "missing_image": 1, "unreadable_image": 1}
    with pytest.raises(ValueError, match="(missing image: .*missing.png|empty report: .*img1.png)"):
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
    with pytest.raises(ValueError, match="unknown source .mimic.; known: chexpert-plus, covid-collection, csv"):
        read_rows("mimic", str(path))


def test_shard_urls_errors(phantom_shards, tmp_path):
    assert all(Path(u).is_file() for u in shard_urls(phantom_shards, "train"))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        shard_urls(phantom_shards, "dev")
    with pytest.raises(FileNotFoundError, match="convirt shards"):
        shard_urls(tmp_path, "train")


def _folder_of_rows(tmp_path: Path, n: int, size: int = 48) -> Path:
    """A CSV of ``n`` distinct noise images with reports, two per patient."""
    import numpy as np

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    with open(tmp_path / "rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "text", "patient_id", "labels"])
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size + 8), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
            writer.writerow(
                [
                    f"img/{i}.png",
                    f"FINDINGS: finding {i}. IMPRESSION: case {i}.",
                    f"p{i // 2}",
                    "Edema" if i % 3 else "",
                ]
            )
    return tmp_path / "rows.csv"


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def test_interrupted_conversion_resumes_to_identical_shards(tmp_path):
    table = _folder_of_rows(tmp_path, 40)
    settings = dict(image_size=24, shard_size=4, val_fraction=0.2, test_fraction=0.2, progress=False)
    whole = write_shards(lambda: read_rows("csv", str(table)), tmp_path / "whole", **settings)

    class Crash(Exception):
        pass

    def crashing():
        for i, row in enumerate(read_rows("csv", str(table))):
            if i == 27:
                raise Crash
            yield row

    with pytest.raises(Crash):
        write_shards(crashing, tmp_path / "resumed", **settings)
    assert (tmp_path / "resumed" / ".convirt-journal.json").is_file() and not (tmp_path / "resumed" / MANIFEST).exists()
    resumed = write_shards(lambda: read_rows("csv", str(table)), tmp_path / "resumed", **settings)
    assert _shard_bytes(tmp_path / "resumed") == _shard_bytes(tmp_path / "whole")
    assert resumed == whole
    assert not (tmp_path / "resumed" / ".convirt-journal.json").exists()
    # A finished folder returns its manifest; other settings are refused by name.
    assert write_shards(lambda: read_rows("csv", str(table)), tmp_path / "whole", **settings) == whole
    with pytest.raises(ValueError, match="other settings .*image_size: 24 -> 32"):
        write_shards(lambda: read_rows("csv", str(table)), tmp_path / "whole", **{**settings, "image_size": 32})


@pytest.mark.slow  # 20 s: a conversion killed in a subprocess, then run again
def test_kill_9_then_rerun_gives_byte_identical_shards(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    table = _folder_of_rows(tmp_path, 600, size=160)
    command = [
        sys.executable,
        "-m",
        "convirt.cli.main",
        "shards",
        "--input",
        str(table),
        "--image-size",
        "96",
        "--shard-size",
        "10",
        "--workers",
        "2",
    ]
    subprocess.run([*command, "--output", str(tmp_path / "whole")], check=True, capture_output=True, timeout=600)
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (out / "train-000003.tar").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / MANIFEST).exists(), "the conversion finished before it could be killed"
    assert (out / ".convirt-journal.json").exists()
    subprocess.run([*command, "--output", str(out)], check=True, capture_output=True, timeout=600)
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "whole")
    whole, resumed = read_manifest(tmp_path / "whole"), read_manifest(out)
    assert {k: v for k, v in resumed.items() if k != "command"} == {k: v for k, v in whole.items() if k != "command"}


def test_exact_duplicate_images_are_dropped_and_counted(tmp_path):
    rows = _rows(tmp_path, 4)
    copy = tmp_path / "copy.png"
    copy.write_bytes(Path(rows[2].image_path).read_bytes())
    rows.append(Row(key="dup", image_path=str(copy), text="Another report.", patient_id="p9"))
    manifest = write_shards(rows, tmp_path / "out", image_size=24, progress=False)
    assert manifest["samples"] == 4 and manifest["dropped"] == {"duplicate_image": 1}
    drops = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert drops[0]["key"] == "dup" and drops[0]["reason"] == "duplicate_image"
    kept = write_shards(rows, tmp_path / "kept", image_size=24, drop_duplicates=False, progress=False)
    assert kept["samples"] == 5
