"""`convirt embed` on CSVs, texts and two gloo processes; `convirt index eval` with texts and findings."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from convirt.cli.main import main
from convirt.embeddings import read_embeddings


def _by_key(folder):
    vectors, rows = read_embeddings(folder)
    order = np.argsort([row["key"] for row in rows])
    return vectors[order], [rows[i] for i in order]


def test_embed_a_label_csv_with_a_filter(tiny_checkpoint, labels_csv, tmp_path):
    out = tmp_path / "emb"
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(tiny_checkpoint),
                "--data",
                str(labels_csv),
                "--where",
                "source=even",
                "--batch-size",
                "16",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    vectors, rows = read_embeddings(out)
    assert vectors.shape == (48, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert {row["source"] for row in rows} == {"even"} and all(row["path"].endswith(".png") for row in rows)
    info = json.loads((out / "info.json").read_text())
    assert info["modality"] == "image" and info["dim"] == 32 and len(info["checkpoint_sha256"]) == 64
    assert info["model_config"]["model_cfg"]["vision_cfg"]["timm_model_name"] == "test_efficientnet"
    # A resumed run with the other modality into the same folder is refused.
    assert (
        main(
            ["embed", "--checkpoint", str(tiny_checkpoint), "--data", str(labels_csv), "--texts", "--output", str(out)]
        )
        == 2
    )


def test_image_text_recall_and_finding_filter(tiny_checkpoint, phantom_shards, tmp_path):
    images, texts, index = tmp_path / "img", tmp_path / "txt", tmp_path / "idx"
    common = ["--checkpoint", str(tiny_checkpoint), "--data", str(phantom_shards), "--split", "train"]
    assert main(["embed", *common, "--output", str(images)]) == 0
    assert main(["embed", *common, "--texts", "--output", str(texts)]) == 0
    text_vectors, text_rows = read_embeddings(texts)
    image_vectors, image_rows = read_embeddings(images)
    assert [r["key"] for r in text_rows] == [r["key"] for r in image_rows]
    assert not np.allclose(text_vectors, image_vectors)
    assert main(["index", "build", "--embeddings", str(images), "--output", str(index)]) == 0
    report = tmp_path / "eval.json"
    assert (
        main(
            [
                "index",
                "eval",
                "--index",
                str(index),
                "--texts",
                str(texts),
                "-k",
                "3",
                "--findings",
                "Cardiomegaly",
                "--output",
                str(report),
            ]
        )
        == 0
    )
    result = json.loads(report.read_text())
    recalls = result["image_text"]["image_to_text"]
    assert set(recalls) == {"recall_at_1", "recall_at_5", "recall_at_10"}
    assert 0 <= recalls["recall_at_1"] <= recalls["recall_at_5"] <= recalls["recall_at_10"] <= 1
    assert result["findings"] == ["Cardiomegaly"] and 0 <= result["precision_at_3"] <= 1


def _first_rows(table, count, out):
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[: count + 1]), encoding="utf-8")
    return out


@pytest.mark.slow  # 2 gloo processes, 15-35 s each
@pytest.mark.multiprocess
@pytest.mark.parametrize("data", ["csv", "shards"])
def test_two_gloo_processes_embed_the_same_vectors(tiny_checkpoint, labels_csv, phantom_shards, tmp_path, data):
    # Uneven on purpose: 93 table rows (batches of 8, 2 ranks), and training shards of 20, 20, 20
    # and 2 samples (ranks read 40 and 22): a sampler that pads ranks to equal length would
    # embed some images twice.
    table = _first_rows(labels_csv, 93, tmp_path / "labels-93.csv")
    source = ["--data", str(table)] if data == "csv" else ["--data", str(phantom_shards), "--split", "train"]
    single, double = tmp_path / "one", tmp_path / "two"
    assert (
        main(["embed", "--checkpoint", str(tiny_checkpoint), *source, "--output", str(single), "--batch-size", "8"])
        == 0
    )
    _embed_on_two_ranks(["--checkpoint", str(tiny_checkpoint), *source, "--output", str(double), "--batch-size", "8"])
    assert {path.name[:8] for path in double.glob("part-*.npy")} == {"part-000", "part-001"}
    a, rows_a = _by_key(single)
    b, rows_b = _by_key(double)
    assert [r["key"] for r in rows_a] == [r["key"] for r in rows_b]  # every image once, none repeated
    assert len(rows_b) == len({r["key"] for r in rows_b}) == (93 if data == "csv" else 62)
    assert np.allclose(a, b, atol=1e-5)
    if data == "shards":  # run again into the same folder: both ranks clear the last run's records at once
        before = {path.name: path.stat().st_mtime_ns for path in double.glob("part-*")}
        _embed_on_two_ranks(
            ["--checkpoint", str(tiny_checkpoint), *source, "--output", str(double), "--batch-size", "8"]
        )
        assert {path.name: path.stat().st_mtime_ns for path in double.glob("part-*")} == before  # nothing left to do
        assert sorted(path.name for path in double.glob("skipped-*.json")) == ["skipped-000.json", "skipped-001.json"]


def _embed_on_two_ranks(arguments: list[str]) -> None:
    """`convirt embed ARGUMENTS --devices 2` on the CPU (Lightning starts the second rank)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "convirt.cli.main", "embed", *arguments, "--devices", "2", "--accelerator", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow  # 2 gloo processes
@pytest.mark.multiprocess
@pytest.mark.parametrize("data", ["one shard", "one table row"])
def test_a_rank_with_nothing_to_embed_meets_the_others_precision_agreement(
    tiny_checkpoint, labels_csv, phantom_shards, tmp_path, data
):
    # Two ranks, one of them with nothing to read: one test shard (rank 1's stream is empty), or a
    # table of one row (rank 1's loader has no batch, and Lightning skips its loop and every hook).
    # bfloat16 asked for: the ranks agree on the first batch's cosine (a collective), which rank 1 joins
    # at the end (before, rank 0 waited for ever); rank 1 records its run (the folder is checked for it).
    output = tmp_path / "one-rank-empty"
    if data == "one shard":
        source, expected = ["--data", str(phantom_shards), "--split", "test"], 16
    else:
        source, expected = ["--data", str(_first_rows(labels_csv, 1, tmp_path / "one.csv"))], 1
    command = ["--checkpoint", str(tiny_checkpoint), *source, "--precision", "bfloat16", "--output", str(output)]
    _embed_on_two_ranks([*command, "--batch-size", "4"])
    assert {path.name[:8] for path in output.glob("part-*.npy")} == {"part-000"}
    assert sorted(path.name for path in output.glob("skipped-*.json")) == ["skipped-000.json", "skipped-001.json"]
    _, rows = _by_key(output)
    assert len(rows) == len({r["key"] for r in rows}) == expected
    assert json.loads((output / "info.json").read_text())["precision"] == "bfloat16"


@pytest.mark.slow  # several seconds (the fast suite keeps under 5 minutes)
def test_a_finished_folder_embedded_again_has_nothing_to_do(tiny_checkpoint, labels_csv, tmp_path, capsys):
    # A table's loader with no batch left: Lightning skips the predict loop; the run still ends as done.
    table = _first_rows(labels_csv, 5, tmp_path / "five.csv")
    command = ["embed", "--checkpoint", str(tiny_checkpoint), "--data", str(table), "--output", str(tmp_path / "e")]
    assert main(command) == 0
    capsys.readouterr()
    assert main(command) == 0
    assert "(nothing left to embed)" in capsys.readouterr().out
    assert len(read_embeddings(tmp_path / "e")[1]) == 5


_KILLED_EMBED = """
import os, signal, sys
import convirt.embeddings.store as store
from convirt.cli.main import main

write, parts = store._write_part, []

def write_then_die(*args, **kwargs):
    write(*args, **kwargs)
    parts.append(args[1])
    if len(parts) == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: the next batch is never written

store._write_part = write_then_die
sys.exit(main(sys.argv[2:]))
"""


def test_embed_killed_with_sigkill_resumes_through_its_own_skip_path(tiny_checkpoint, labels_csv, tmp_path):
    # `convirt embed` itself is killed once its third part is on disk; the same command run again
    # reads the keys of the complete parts, skips those images, and embeds only the rest.
    command = [
        "embed",
        "--checkpoint",
        str(tiny_checkpoint),
        "--data",
        str(labels_csv),
        "--batch-size",
        "4",
        "--chunk-size",
        "8",
    ]
    assert main([*command, "--output", str(tmp_path / "whole")]) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_EMBED, "3", *command, "--output", str(tmp_path / "cut")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    first = read_embeddings(tmp_path / "cut")[1]
    assert len(first) == 24  # three parts of 8
    assert main([*command, "--output", str(tmp_path / "cut")]) == 0
    vectors, rows = read_embeddings(tmp_path / "cut")
    assert rows[:24] == first  # the parts of the killed run are kept as they were
    assert len(rows) == len({r["key"] for r in rows}) == 96  # the rest once each, nothing twice
    a, rows_a = _by_key(tmp_path / "whole")
    b, rows_b = _by_key(tmp_path / "cut")
    assert [r["key"] for r in rows_a] == [r["key"] for r in rows_b] and np.allclose(a, b, atol=1e-6)


@pytest.mark.slow  # embeds, indexes and queries twice (about 25 s on 2 cores)
def test_query_can_leave_out_the_query_patient(tiny_checkpoint, labels_csv, tmp_path):
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    assert main(["embed", "--checkpoint", str(tiny_checkpoint), "--data", str(labels_csv), "--output", str(emb)]) == 0
    assert main(["index", "build", "--embeddings", str(emb), "--output", str(idx)]) == 0
    _, rows = read_embeddings(emb)
    query = rows[0]

    def hits(*extra):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "convirt.cli.main",
                "index",
                "query",
                "--index",
                str(idx),
                "--image",
                query["path"],
                "-k",
                "4",
                "--json",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    plain = hits()
    assert plain[0]["key"] == query["key"] and plain[0]["score"] == pytest.approx(1.0, abs=1e-4)
    others = hits("--exclude-same-patient")
    assert len(others) == 4 and all(hit["patient_id"] != query["patient_id"] for hit in others)


def test_text_only_shards_embed_their_reports_and_refuse_images(tiny_checkpoint, tmp_path):
    from convirt.data.schema import Row
    from convirt.data.writer import write_shards

    rows = [
        Row(
            key=f"r{i}",
            image_path="",
            text=f"FINDINGS: Finding number {i}. IMPRESSION: Normal {i}.",
            patient_id=f"p{i}",
        )
        for i in range(7)
    ]
    shards = tmp_path / "shards"
    write_shards(rows, shards, text_only=True, val_fraction=0, test_fraction=0, progress=False)
    out = tmp_path / "txt"
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(tiny_checkpoint),
                "--data",
                str(shards),
                "--split",
                "train",
                "--texts",
                "--batch-size",
                "3",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    vectors, meta = _by_key(out)
    assert vectors.shape == (7, 32) and [m["key"] for m in meta] == [f"r{i}" for i in range(7)]
    assert meta[0]["text"] == "Finding number 0. Normal 0."
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(tiny_checkpoint),
                "--data",
                str(shards),
                "--split",
                "train",
                "--output",
                str(tmp_path / "img"),
            ]
        )
        == 2
    )


def test_embed_reads_a_chexpert_table_with_its_format_images_and_uncertain_options(
    tiny_checkpoint, phantom_csv, tmp_path
):
    # The table lists paths relative to an image root elsewhere (--images), is read as CheXpert
    # (--format) and keeps uncertain findings as positives (--uncertain ones): all three must
    # reach the batch builder, as they do for zeroshot and probe.
    import csv
    import shutil

    from convirt.data.labels import CHEXPERT_FINDINGS

    root = tmp_path / "archive"
    images = sorted(phantom_csv.parent.rglob("*.png"))[:6]
    table = tmp_path / "tables" / "valid.csv"
    table.parent.mkdir()
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["Path", "AP/PA", *CHEXPERT_FINDINGS])
        writer.writeheader()
        for i, image in enumerate(images):
            relative = f"valid/patient{i:05d}/study1/view1_frontal.png"
            (root / relative).parent.mkdir(parents=True)
            shutil.copy(image, root / relative)
            writer.writerow({"Path": relative, "AP/PA": "PA", "Cardiomegaly": "-1", "Edema": "1" if i % 2 else ""})
    out = tmp_path / "emb"
    command = ["embed", "--checkpoint", str(tiny_checkpoint), "--data", str(table), "--output", str(out)]
    assert main([*command, "--format", "chexpert", "--images", str(root), "--uncertain", "ones"]) == 0
    vectors, rows = _by_key(out)
    assert vectors.shape == (6, 32) and all(row["path"].startswith(str(root)) for row in rows)
    assert [row["labels"] for row in rows] == [
        ["Cardiomegaly", "Edema"] if i % 2 else ["Cardiomegaly"] for i in range(6)
    ]
    assert {row["source"] for row in rows} == {"chexpert"}
