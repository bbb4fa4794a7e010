"""The whole spine through the `convirt` command on a tiny config: shards -> fit -> zeroshot -> index."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from convirt.cli.main import main
from tests.conftest import TINY_MODEL


def _config(tmp_path: Path, shards: Path, text_model: str) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 2,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path / "fit"),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(tmp_path / "ckpt"),
                        "save_last": True,
                        "save_top_k": 0,
                        "enable_version_counter": False,
                    },
                }
            ],
        },
        "model": {
            "model_name": TINY_MODEL,
            "pretrained": False,
            "text_model_path": text_model,
            "learning_rate": 1e-3,
            "warmup_steps": 2,
        },
        "data": {"shards": str(shards), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 16},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_spine_end_to_end(tmp_path, phantom_csv, tiny_text_model, capsys):
    shards = tmp_path / "shards"
    assert (
        main(
            [
                "shards",
                "--input",
                str(phantom_csv),
                "--output",
                str(shards),
                "--image-size",
                "72",
                "--shard-size",
                "25",
                "--test-fraction",
                "0.3",
            ]
        )
        == 0
    )
    assert main(["fit", "--config", str(_config(tmp_path, shards, tiny_text_model))]) == 0
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    assert (tmp_path / "fit" / "config.yaml").is_file()  # the resolved config is saved with the run
    # The config names no precision: the one chosen for this CPU (timed where bf16 is native, else
    # 32-true) is used, saved with the run and in the checkpoint with how it was chosen.
    from convirt._hardware import cpu_info
    from convirt.models.checkpoint import read_run

    saved = yaml.safe_load((tmp_path / "fit" / "config.yaml").read_text())["trainer"]
    run = read_run(ckpt)
    chosen = run["precision_choice"]["precision"]
    assert saved["precision"] == chosen == run["precision"] and run["cpu"]["capability"] and run["device"] == "cpu"
    assert chosen == "32-true" or cpu_info().native_bf16
    assert any("PrecisionRecord" in str(c.get("class_path")) for c in saved["callbacks"])

    assert (
        main(
            [
                "zeroshot",
                "--checkpoint",
                str(ckpt),
                "--descriptors",
                "phantom",
                "--data",
                str(shards),
                "--output",
                str(tmp_path / "zs"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    assert set(metrics["descriptors"]["auroc"]) == {
        "Cardiomegaly",
        "Pleural Effusion",
        "Pneumothorax",
        "Nodule/Mass",
        "Consolidation",
        "Edema",
    }
    assert metrics["names"]["mean_auroc"] is None or 0 <= metrics["names"]["mean_auroc"] <= 1
    explanation = json.loads((tmp_path / "zs" / "explanations.jsonl").read_text().splitlines()[0])
    assert "blunted costophrenic angle" in explanation["findings"]["Pleural Effusion"]["observations"]

    assert main(["embed", "--checkpoint", str(ckpt), "--data", str(shards), "--output", str(tmp_path / "emb")]) == 0
    assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--output", str(tmp_path / "idx")]) == 0
    image = next((phantom_csv.parent / "images").glob("*.png"))
    capsys.readouterr()
    assert main(["index", "query", "--index", str(tmp_path / "idx"), "--image", str(image), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[2]["score"]
    assert (
        main(
            [
                "index",
                "query",
                "--index",
                str(tmp_path / "idx"),
                "--text",
                "Enlarged cardiac silhouette.",
                "-k",
                "2",
                "--json",
            ]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert (
        main(["index", "eval", "--index", str(tmp_path / "idx"), "-k", "2", "--output", str(tmp_path / "ret.json")])
        == 0
    )
    retrieval = json.loads((tmp_path / "ret.json").read_text())
    assert 0 <= retrieval["precision_at_2"] <= 1 and retrieval["same_patient_excluded"]
    assert {"map_at_2", "recall_at_2"} <= set(retrieval)

    # An index built in two parts and merged answers like the whole one.
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(shards),
                "--split",
                "train",
                "--output",
                str(tmp_path / "emb_train"),
            ]
        )
        == 0
    )
    assert (
        main(["index", "build", "--embeddings", str(tmp_path / "emb_train"), "--output", str(tmp_path / "idx_train")])
        == 0
    )
    assert (
        main(
            [
                "index",
                "merge",
                "--inputs",
                str(tmp_path / "idx"),
                str(tmp_path / "idx_train"),
                "--output",
                str(tmp_path / "idx_all"),
            ]
        )
        == 0
    )
    merged = (tmp_path / "idx_all" / "metadata.jsonl").read_text().splitlines()
    assert len(merged) == len((tmp_path / "idx" / "metadata.jsonl").read_text().splitlines()) + len(
        (tmp_path / "idx_train" / "metadata.jsonl").read_text().splitlines()
    )
    assert (
        main(
            [
                "report",
                "--zeroshot",
                str(tmp_path / "zs"),  # the command's output folder (its metrics.json is read)
                "--retrieval",
                str(tmp_path / "ret.json"),
                "--output",
                str(tmp_path / "metrics.json"),
            ]
        )
        == 0
    )
    assert "mean_auroc" in json.loads((tmp_path / "metrics.json").read_text())["zeroshot"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["shards", "--input", "/nonexistent.csv", "--output", "/tmp/x"], "CSV not found: /nonexistent.csv"),
        (
            ["zeroshot", "--checkpoint", "/nonexistent.ckpt", "--data", "/tmp", "--output", "/tmp/x"],
            "model source not found: /nonexistent.ckpt",
        ),
        (["index", "eval", "--index", "/nonexistent"], "no index at /nonexistent"),
        (
            ["zeroshot", "--checkpoint", "x", "--descriptors", "chexpret", "--data", "/tmp", "--output", "/tmp/x"],
            "unknown descriptor set 'chexpret'",
        ),
        (["phantom", "--output", "/tmp/x", "--num-samples", "0"], "num_samples must be positive"),
        (["shards", "--input", "x.csv"], "convirt shards needs --output"),
        (["index", "query", "--index", "/nonexistent", "--image", "x.png"], "no index at /nonexistent"),
    ],
)
def test_bad_input_gives_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("convirt: error:") and message in err


def test_damaged_checkpoint_is_named(tmp_path, capsys):
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(tmp_path / "bad.ckpt"),
                "--data",
                str(tmp_path),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "bad.ckpt is not a readable checkpoint" in err and err.count("\n") == 0


def test_empty_data_is_an_error(tmp_path, capsys):
    (tmp_path / "rows.csv").write_text("image,text\n")
    assert main(["shards", "--input", str(tmp_path / "rows.csv"), "--output", str(tmp_path / "out")]) == 2
    assert "no usable samples" in capsys.readouterr().err


def test_unknown_model_name_in_fit_config(tmp_path, phantom_shards):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"model_name": "vit-huge"},
                "data": {"shards": str(phantom_shards)},
                "trainer": {"logger": False, "default_root_dir": str(tmp_path)},
            }
        )
    )
    # A process of its own, as a user runs it (Lightning's log handlers outlive pytest's capture).
    result = subprocess.run(
        [sys.executable, "-m", "convirt.cli.main", "fit", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("convirt: error: unknown model 'vit-huge'") and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "model, message",
    [
        ({"model_nam": "test-tiny"}, "does not accept option 'model.model_nam'"),
        ({"learning_rate": "abc"}, "model.learning_rate"),
    ],
)
def test_bad_config_keys_and_values_give_one_line(tmp_path, phantom_shards, capsys, model, message):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": model, "data": {"shards": str(phantom_shards)}}))
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0 and err.startswith("convirt: error:")
