"""`convirt shards --part I/N` and `convirt shards merge`: parts converted apart and merged hold what
one run over the same rows holds."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import webdataset as wds

from convirt.data.journal import JOURNAL, SAMPLES
from convirt.data.parts import merge_parts, parse_part, part_of
from convirt.data.schema import MANIFEST, SPLITS
from convirt.data.shards import read_manifest, require_images, shard_urls
from convirt.data.sources import read_rows
from convirt.data.writer import write_shards

SETTINGS = dict(source="csv", image_size=32, shard_size=7, val_fraction=0.2, test_fraction=0.3, progress=False)
# Rows copied into new images with the pixels of a later phantom row, put first in the table, each
# of its own patient: a duplicate across parts whose first copy one run reads may be either one.
DUPLICATE_OF = (10, 30, 47, 52, 70, 90, 95)


def _table(folder: Path, phantom_csv: Path, drop_last: bool = False) -> Path:
    """The phantom rows, three images a patient (patient 5 with an official split), after copies
    of some of their images and before a row with a missing image and one with an empty report."""
    folder.mkdir()
    (folder / "images").symlink_to(phantom_csv.parent / "images")
    (folder / "dups").mkdir()
    with open(phantom_csv, newline="", encoding="utf-8") as handle:
        phantom = list(csv.DictReader(handle))
    rows = []
    for j, i in enumerate(DUPLICATE_OF):
        shutil.copyfile(phantom_csv.parent / phantom[i]["image"], folder / "dups" / f"d{j}.png")
        rows.append([f"dups/d{j}.png", f"FINDINGS: copy {j}.", f"dup{j}", "", ""])
    for i, row in enumerate(phantom):
        rows.append([row["image"], row["text"], f"p{i // 3}", row["labels"], "val" if i // 3 == 5 else ""])
    rows += [["images/none.png", "FINDINGS: clear.", "p900", "", ""], [phantom[0]["image"], " ", "p901", "", ""]]
    with open(folder / "rows.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "text", "patient_id", "labels", "split"])
        writer.writerows(rows[:-1] if drop_last else rows)
    return folder / "rows.csv"


def _samples(folder: Path) -> dict[str, tuple[str, bytes, bytes, bytes]]:
    """Every sample of a shard folder, read the way the loaders read it: key -> (split, jpg, txt, json)."""
    found = {}
    for split in SPLITS:
        if not read_manifest(folder)["splits"][split]["samples"]:
            continue
        for sample in wds.WebDataset(shard_urls(folder, split), shardshuffle=False, empty_check=False):
            assert sample["__key__"] not in found
            found[sample["__key__"]] = (split, sample["jpg"], sample["txt"], sample["json"])
    return found


def _drops(folder: Path) -> list[tuple[str, str, str]]:
    path = folder / "dropped.jsonl"
    return sorted((d["key"], d["split"], d["reason"]) for d in map(json.loads, path.open())) if path.is_file() else []


@pytest.fixture(scope="module")
def converted(phantom_csv, tmp_path_factory):
    """The table converted in one run, in three parts (three independent calls), and merged."""
    root = tmp_path_factory.mktemp("parts")
    table = _table(root / "table", phantom_csv)
    rows = lambda: read_rows("csv", str(table))  # noqa: E731
    write_shards(rows, root / "whole", **SETTINGS)
    parts = [root / f"part{i}" for i in (1, 2, 3)]
    for i, folder in enumerate(parts, 1):
        write_shards(rows, folder, part=f"{i}/3", **SETTINGS)
    merge_parts(parts[::-1], root / "merged", command="merge")  # any order
    return root, table, parts


def test_three_parts_merged_equal_one_run(converted):
    root, _, parts = converted
    whole, merged = read_manifest(root / "whole"), read_manifest(root / "merged")
    # Same samples, bytes and splits; same counts, labels, sections and drops by reason.
    assert _samples(root / "merged") == _samples(root / "whole")
    assert _drops(root / "merged") == _drops(root / "whole")
    for name in ("format", "source", "rows_read", "samples", "dropped", "sections", "config", "text_only"):
        assert merged[name] == whole[name], name
    for split in SPLITS:
        assert merged["splits"][split]["samples"] == whole["splits"][split]["samples"]
        assert merged["splits"][split]["labels"] == whole["splits"][split]["labels"]
    assert whole["dropped"] == {"duplicate_image": len(DUPLICATE_OF), "empty_report": 1, "missing_image": 1}
    assert whole["splits"]["val"]["samples"] and whole["splits"]["test"]["samples"]
    # The merge dropped copies across parts, both where the later row and where the earlier one (in a
    # later split) was the second copy one run reads.
    in_parts = sum(read_manifest(p)["dropped"].get("duplicate_image", 0) for p in parts)
    assert 0 < in_parts < len(DUPLICATE_OF)
    merge_dropped = {key for key, _, reason in _drops(root / "merged") if reason == "duplicate_image"}
    merge_dropped -= {key for p in parts for key, _, _ in _drops(p)}
    assert any(key.startswith("dups_") for key in merge_dropped)
    assert any(not key.startswith("dups_") for key in merge_dropped)
    # Each patient is in one part; the merged folder reads like any other.
    patients = [{json.loads(s[3])["patient_id"] for s in _samples(p).values()} for p in parts]
    assert all(patients) and not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert require_images(root / "merged") == merged
    assert all(Path(url).is_file() for split in SPLITS for url in shard_urls(root / "merged", split))
    assert sorted(p.name for p in (root / "merged").glob("*.tar")) == sorted(
        s["name"] for split in SPLITS for s in merged["splits"][split]["shards"]
    )
    assert [p["part"] for p in merged["parts"]] == ["1/3", "2/3", "3/3"]
    # The one run's command, rerun into the merged folder, finds it complete.
    assert write_shards([], root / "merged", **SETTINGS) == merged


def test_parts_of_other_settings_or_input_are_refused(converted, phantom_csv):
    root, table, parts = converted
    rows = lambda: read_rows("csv", str(table))  # noqa: E731
    other = write_shards(rows, root / "other-size", part="2/3", **{**SETTINGS, "image_size": 40})
    assert other["config"]["part"] == [2, 3]
    with pytest.raises(
        ValueError, match=r"other-size \(part 2/3\) was converted with other settings .*image_size 32 vs 40"
    ):
        merge_parts([parts[0], root / "other-size", parts[2]], root / "refused")
    shorter = _table(root / "shorter", phantom_csv, drop_last=True)
    write_shards(lambda: read_rows("csv", str(shorter)), root / "other-input", part="3/3", **SETTINGS)
    with pytest.raises(ValueError, match=r"other-input \(part 3/3\) read other input rows .*same --input"):
        merge_parts([*parts[:2], root / "other-input"], root / "refused")
    # A part's folder refuses another part's conversion by name, as it refuses other settings.
    with pytest.raises(ValueError, match=r"other settings \(part: \[1, 3\] -> \[2, 3\]\)"):
        write_shards(rows, parts[0], part="2/3", **SETTINGS)
    assert not (root / "refused").exists()


def test_missing_twice_unfinished_or_whole_folders_are_refused(converted, tmp_path):
    root, _, parts = converted
    with pytest.raises(ValueError, match=r"^part 2/3 missing \(given: 1/3, 3/3\): .*--part 2/3"):
        merge_parts([parts[0], parts[2]], tmp_path / "out")
    with pytest.raises(ValueError, match=r"^part 3/3 given twice"):
        merge_parts([*parts, parts[2]], tmp_path / "out")
    with pytest.raises(ValueError, match=r"holds a whole conversion, not a part"):
        merge_parts([*parts, root / "whole"], tmp_path / "out")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(parts[1], unfinished)
    (unfinished / MANIFEST).rename(unfinished / JOURNAL)
    with pytest.raises(ValueError, match=r"unfinished part .*rerun its `convirt shards ... --part I/N`"):
        merge_parts([parts[0], unfinished, parts[2]], tmp_path / "out")
    with pytest.raises(ValueError, match=r"is not empty: merge into a new --output"):
        merge_parts(parts, parts[0])
    assert merge_parts(parts, root / "merged") == read_manifest(root / "merged")  # merged already


@pytest.mark.parametrize("value", ["0/3", "4/3", "x", "3", "1/0", "2/3/4"])
def test_bad_part_values_are_one_line_errors(value, converted, capsys):
    from convirt.cli.main import main

    _, table, _ = converted
    with pytest.raises(ValueError, match="--part expects I/N with 1 <= I <= N"):
        parse_part(value)
    assert main(["shards", "--input", str(table), "--output", str(table.parent / "bad"), "--part", value]) == 2
    error = capsys.readouterr().err
    assert error.startswith("convirt: error: --part expects I/N with 1 <= I <= N") and error.count("\n") == 1
    assert repr(value) in error and not (table.parent / "bad").exists()


def test_merge_command(converted, capsys):
    from convirt.cli.main import main

    root, _, parts = converted
    assert main(["shards", "merge", *map(str, parts), "--output", str(root / "merged-cli")]) == 0
    assert f"to {root / 'merged-cli'}" in capsys.readouterr().out
    assert _samples(root / "merged-cli") == _samples(root / "whole")
    assert main(["shards", "merge", str(parts[0]), "--output", str(root / "cli-missing")]) == 2
    assert capsys.readouterr().err.startswith("convirt: error: part 2/3, 3/3 missing")


def test_an_interrupted_part_resumes_to_the_same_part(converted, tmp_path):
    root, table, parts = converted

    class Crash(Exception):
        pass

    def crashing():
        for i, row in enumerate(read_rows("csv", str(table))):
            if i == 100:  # in the train pass, after a shard
                raise Crash
            yield row

    with pytest.raises(Crash):
        write_shards(crashing, tmp_path / "part2", part="2/3", **SETTINGS)
    assert (tmp_path / "part2" / JOURNAL).is_file() and not (tmp_path / "part2" / MANIFEST).exists()
    resumed = write_shards(lambda: read_rows("csv", str(table)), tmp_path / "part2", part="2/3", **SETTINGS)
    assert resumed == read_manifest(parts[1])
    assert (tmp_path / "part2" / SAMPLES).read_text() == (parts[1] / SAMPLES).read_text()


def test_part_of_spreads_patients_over_parts_apart_from_splits():
    from convirt.data.writer import assign_split

    patients = [f"patient{i}" for i in range(3000)]
    for count in (2, 3, 8):
        sizes = [sum(part_of(p, count) == i for p in patients) for i in range(1, count + 1)]
        assert min(sizes) > 0.8 * len(patients) / count
    tests = [p for p in patients if assign_split(p, 0.2, 0.3) == "test"]
    assert all(0.25 < sum(part_of(p, 3) == i for p in tests) / len(tests) < 0.42 for i in (1, 2, 3))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_three_processes_like_a_slurm_array_then_merge(converted):
    """The README's recipe: N processes given only their task id and count, then `convirt shards merge`."""
    import os
    import subprocess
    import sys

    root, table, _ = converted
    command = [sys.executable, "-m", "convirt.cli.main", "shards", "--input", str(table), "--workers", "1"]
    command += ["--image-size", "32", "--shard-size", "7", "--val-fraction", "0.2", "--test-fraction", "0.3"]
    jobs = [
        subprocess.Popen(
            [*command, "--output", str(root / f"job{i}"), "--part", f"{i}/3"],
            env={**os.environ, "SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_COUNT": "3"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in (1, 2, 3)
    ]
    for job in jobs:
        _, error = job.communicate(timeout=300)
        assert job.returncode == 0, error.decode()
    merge = [sys.executable, "-m", "convirt.cli.main", "shards", "merge", *(str(root / f"job{i}") for i in (3, 1, 2))]
    subprocess.run([*merge, "--output", str(root / "merged-jobs")], check=True, capture_output=True, timeout=300)
    assert _samples(root / "merged-jobs") == _samples(root / "whole")
    merged, whole = read_manifest(root / "merged-jobs"), read_manifest(root / "whole")
    assert {k: v for k, v in merged.items() if k not in ("splits", "command", "parts")} == {
        k: v for k, v in whole.items() if k not in ("splits", "command")
    }
