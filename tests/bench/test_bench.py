"""`convirt bench`: a suite over several models, each image embedded once, results reused on a rerun."""

import json

import pytest
import yaml

from convirt._io import file_sha256
from convirt.bench.runner import run_bench
from convirt.bench.suite import list_suites, load_suite
from convirt.cli.main import main
from convirt.data.shards import read_manifest
from convirt.embeddings.run import embed_to_folder

PROTOCOLS = {
    "zeroshot": {},
    "prompts": {},
    "knn": {"k": 5},
    "retrieval": {"k": 5},
    "probe": {"fractions": [1.0]},
    "image_text": {},
    "reports": {},
    "calibration": {},
    "operating_points": {"rules": ["sensitivity>=0.90", "youden"]},
}


def _embed(*args, **kwargs):
    return embed_to_folder(*args, **{**kwargs, "progress": False})


@pytest.fixture()
def suite_file(phantom_shards, tmp_path):
    spec = {
        "name": "tiny",
        "version": 2,
        "tasks": [
            {
                "name": "phantom",
                "data": str(phantom_shards),
                "split": "test",
                "descriptors": "phantom",
                "protocols": PROTOCOLS,
            },
            {
                "name": "absent",
                "data": str(tmp_path / "nowhere"),
                "obtain": "see datasets/absent",
                "protocols": {"knn": {}},
            },
        ],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture()
def timm_weights(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    path = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_bench_runs_every_protocol_and_a_rerun_embeds_and_computes_nothing(
    suite_file, phantom_shards, tiny_checkpoint, timm_weights, tmp_path
):
    suite = load_suite(suite_file)
    models = [str(tiny_checkpoint), f"timm:test_vit@{timm_weights}"]
    out = tmp_path / "bench"
    first = run_bench(suite, models, out, _embed, seeds=(0, 1), bootstrap=50)
    # The checkpoint's images and reports, the image-only model's images: three folders.
    assert len(first.embedded) == 3
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows == first.rows
    by = {(r["model"], r["protocol"]) for r in rows}
    assert {("tiny.ckpt", p) for p in PROTOCOLS} <= by
    image_only = f"timm:test_vit@{timm_weights}"
    assert {(image_only, p) for p in ("knn", "retrieval", "probe")} <= by
    assert not {(image_only, p) for p in ("zeroshot", "prompts", "image_text", "reports")} & by
    reasons = {(s[0], s[1], s[2]): s[3] for s in first.skipped}
    assert "image-only" in reasons[image_only, "phantom", "zeroshot"]
    assert "see datasets/absent" in reasons["tiny.ckpt", "absent", ""]
    # Every row says what it measured: value with its CI, n, seed, settings, data hash, version.
    headline = next(r for r in rows if r["model"] == "tiny.ckpt" and r["protocol"] == "zeroshot")
    test_images = read_manifest(phantom_shards)["splits"]["test"]["samples"]
    assert headline["metric"] == "descriptors/mean_auroc" and headline["n"] == test_images
    assert headline["ci_low"] <= headline["value"] <= headline["ci_high"]
    assert (
        len(headline["data_sha256"]) == 64
        and headline["suite_version"] == 2
        and headline["settings"]["bootstrap"] == 50
    )
    assert {r["seed"] for r in rows if r["protocol"] == "probe"} == {0, 1}
    assert {r["seed"] for r in rows if r["protocol"] == "knn"} == {0}
    retrieval = next(r for r in rows if r["model"] == "tiny.ckpt" and r["metric"] == "map_at_5")
    # mAP counts the queries that have a relevant image; every CI is a bootstrap over queries.
    assert 0 < retrieval["n"] <= test_images and retrieval["ci_low"] <= retrieval["value"] <= retrieval["ci_high"]
    recall = next(r for r in rows if r["model"] == "tiny.ckpt" and r["metric"] == "image_to_text/recall_at_5")
    assert recall["n"] == test_images and recall["ci_low"] <= recall["value"] <= recall["ci_high"]
    assert headline["data_files"] == {"manifest.json": file_sha256(phantom_shards / "manifest.json")}
    # Prompt robustness: the mean over phrasings lies between the means of the worst and best phrasing.
    spread = {r["metric"]: r["value"] for r in rows if r["model"] == "tiny.ckpt" and r["protocol"] == "prompts"}
    assert spread["worst_auroc"] <= spread["mean_auroc"] <= spread["best_auroc"]
    # The reports scored zero-shot on their own embeddings, as many as the images.
    report = next(r for r in rows if r["model"] == "tiny.ckpt" and r["protocol"] == "reports")
    assert report["metric"] == "descriptors/mean_auroc" and report["n"] == test_images
    # Linear and kNN probes, each at its label fractions.
    probes = {r["metric"].split("/")[0] for r in rows if r["model"] == "tiny.ckpt" and r["protocol"] == "probe"}
    assert probes == {"linear@1", "knn@1"}
    board = (out / "leaderboard.md").read_text()
    assert (
        board.startswith("**phantom**\n") and "| model | " in board and "zero-shot (descriptors): mean AUROC" in board
    )
    assert "| tiny.ckpt |" in board and "**0." in board  # the best of a column in bold
    assert (out / "leaderboard.csv").read_text().count("\n") == 1 + len({(r["model"], r["protocol"]) for r in rows})

    # Figures: a bar chart per task, zero-shot ROC curves where a model scored zero-shot, and the
    # calibration's reliability diagram per model and finding (the image-only timm model has none).
    reliability = sorted(p.name for p in first.figures if "-reliability-" in p.name)
    assert reliability and all(name.startswith("phantom-tiny.ckpt-reliability-") for name in reliability)
    calibrated = {
        r["metric"].partition("/")[2]
        for r in rows
        if r["protocol"] == "calibration" and r["metric"].startswith(("a/", "temperature/"))  # fitted findings
    }
    names = {f"phantom-tiny.ckpt-reliability-{name.replace('/', '-')}.png" for name in calibrated}
    assert reliability == sorted(names)
    assert sorted(p.name for p in first.figures if p.name not in reliability) == ["phantom-bars.png", "phantom-roc.png"]
    assert all(p.stat().st_size > 5000 for p in first.figures)

    again = run_bench(suite, models, out, _embed, seeds=(0, 1), bootstrap=50)
    assert again.embedded == [] and again.computed == [] and again.rows == first.rows
    # Another setting of one protocol recomputes that protocol only, from the cached embeddings.
    suite.tasks[0].protocols["knn"] = {"k": 3}
    changed = run_bench(suite, models, out, _embed, seeds=(0, 1), bootstrap=50)
    assert changed.embedded == [] and sorted(p.name for p in changed.computed) == ["knn-s0.json", "knn-s0.json"]


def test_bench_command_prints_the_leaderboard(suite_file, phantom_shards, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--suite",
                str(suite_file),
                "--model",
                str(tiny_checkpoint),
                "--output",
                str(out),
                "--bootstrap",
                "20",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| tiny.ckpt |" in printed and "skipped tiny.ckpt / absent" in printed
    # The bench's zero-shot figures are those of `convirt zeroshot` on the same images (float32 both).
    zeroshot = ["zeroshot", "--model", str(tiny_checkpoint), "--descriptors", "phantom", "--data", str(phantom_shards)]
    assert main([*zeroshot, "--bootstrap", "20", "--output", str(tmp_path / "zs")]) == 0
    alone = json.loads((tmp_path / "zs" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for method in ("descriptors", "names", "ensemble"):
        bench = next(r["value"] for r in rows if r["protocol"] == "zeroshot" and r["metric"] == f"{method}/mean_auroc")
        assert bench == pytest.approx(alone[method]["mean_auroc"], abs=1e-6)
    # Calibration too: the same fold and the same figures as `convirt zeroshot`'s on the same images.
    bench_ece = next(r for r in rows if r["protocol"] == "calibration" and r["metric"] == "ece_after")
    bench_brier = next(r for r in rows if r["protocol"] == "calibration" and r["metric"] == "brier_after")
    assert bench_brier["value"] == pytest.approx(alone["calibration"]["mean"]["brier"]["after"], abs=1e-6)
    assert bench_ece["value"] == pytest.approx(alone["calibration"]["mean"]["ece"]["after"], abs=1e-6)
    assert bench_ece["n"] == alone["calibration"]["reported_on"]
    assert "calibration: mean Brier score after" in printed
    assert "sensitivity>=0.90 (chosen on validation): specificity on test" in printed
    # The exported model's card carries these results (the rows of its own weights), not typed-in figures.
    exported = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_checkpoint), "--output", str(exported), "--bench", str(out)]) == 0
    card = (exported / "README.md").read_text()
    headline = next(r for r in rows if r["protocol"] == "zeroshot" and r["metric"] == "descriptors/mean_auroc")
    value = f"{headline['value']:.3f} [{headline['ci_low']:.3f}, {headline['ci_high']:.3f}]"
    assert f"| tiny (2) | phantom | zeroshot | descriptors/mean_auroc | {value} |" in card
    assert "| tiny (2) | phantom | calibration | brier_after |" in card
    assert "| tiny (2) | phantom | operating_points | sensitivity>=0.90/specificity/" in card
    assert "local-dir:" in card and "not a diagnostic device" in card
    assert main(["export", "--model", str(tiny_checkpoint), "--output", str(exported), "--bench", str(tmp_path)]) != 0


def test_suites_are_checked_when_read(tmp_path):
    assert "phantom" in list_suites()
    assert load_suite("phantom", tmp_path).tasks[0].data == tmp_path / "artifacts/demo/shards"
    with pytest.raises(ValueError, match="unknown suite 'nope'; shipped: .*phantom"):
        load_suite("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tasks": [{"name": "t", "data": ".", "protocols": {"segmentation": {}}}]}))
    with pytest.raises(ValueError, match="unknown protocols \\['segmentation'\\]"):
        load_suite(bad)


@pytest.mark.slow  # three runs of the command in subprocesses: about 50 s on 2 cores
def test_bench_killed_with_sigkill_resumes_to_the_same_results(phantom_shards, tiny_checkpoint, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = {
        "name": "resume",
        "tasks": [
            {
                "name": "phantom",
                "data": str(phantom_shards),
                "descriptors": "phantom",
                "protocols": {"zeroshot": {}, "probe": {"fractions": [1.0]}, "knn": {"k": 5}},
            }
        ],
    }
    suite = tmp_path / "resume.yaml"
    suite.write_text(yaml.safe_dump(spec, sort_keys=False))  # protocols run in the order written
    command = [
        sys.executable,
        "-m",
        "convirt.cli.main",
        "bench",
        "--suite",
        str(suite),
        "--model",
        str(tiny_checkpoint),
    ]
    # Four results: zeroshot-s0, probe-s0, probe-s1, knn-s0. The probes (seconds each) come right
    # after the zero-shot result, so the kill lands while they are computed.
    command += ["--bootstrap", "100", "--seeds", "0", "1", "--output"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    killed = tmp_path / "killed"
    child = subprocess.Popen([*command, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(killed.glob("results/*/phantom/zeroshot-s0.json")) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert not (killed / "results.jsonl").exists(), "the run ended before it was killed"
    done = {p.name for p in killed.glob("results/*/phantom/*.json")}
    # Killed between results: some stored (so that the resumed run has some to reuse), some not.
    assert "zeroshot-s0.json" in done and len(done) < 4, done
    resumed = subprocess.run([*command, str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # At a line's start (the first line when nothing, not even a progress bar, was printed before it).
    assert f"\n{4 - len(done)} results computed, 0 embedding folders made" in "\n" + resumed.stdout
    whole = subprocess.run([*command, str(tmp_path / "whole")], env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0 and "\n4 results computed, 1 embedding folders made" in "\n" + whole.stdout
    assert (killed / "results.jsonl").read_text() == (tmp_path / "whole" / "results.jsonl").read_text()


def test_the_public_suite_runs_what_is_there_and_says_how_to_get_the_rest(phantom_csv, tiny_checkpoint, tmp_path):
    import csv
    import shutil

    root = tmp_path / "archives"
    folder = root / "shenzhen" / "CXR_png"
    folder.mkdir(parents=True)
    rows = list(csv.DictReader(open(phantom_csv, newline="", encoding="utf-8")))[:24]
    for i, row in enumerate(rows):  # the Shenzhen layout: CHNCXR_NNNN_{0,1}.png, 1 = tuberculosis
        shutil.copy(phantom_csv.parent / row["image"], folder / f"CHNCXR_{i:04d}_{i % 2}.png")
    suite = load_suite("public", root)
    result = run_bench(suite, [str(tiny_checkpoint)], tmp_path / "bench", _embed, bootstrap=20)
    reasons = {task: reason for _, task, protocol, reason in result.skipped if not protocol}
    assert set(reasons) == {t.name for t in suite.tasks} - {"shenzhen-tb"}
    assert "test_list.txt" in reasons["chestxray14-test"] and str(root / "chexpert") in reasons["chexpert-test"]
    shenzhen = [r for r in result.rows if r["task"] == "shenzhen-tb"]
    assert {r["protocol"] for r in shenzhen} == {
        "zeroshot",
        "prompts",
        "knn",
        "retrieval",
        "probe",
        "calibration",
        "operating_points",
    }
    headline = next(r for r in shenzhen if r["protocol"] == "zeroshot")
    assert headline["n"] == 24 and "_1 Tuberculosis" in headline["label_policy"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tasks": [{"name": "t", "data": ".", "label_format": "dicom-sr"}]}))
    with pytest.raises(ValueError, match="label_format must be one of"):
        load_suite(bad)


def test_a_task_labelling_some_of_its_descriptor_findings_scores_those(phantom_shards, tiny_checkpoint, tmp_path):
    # CheXpert's test set labels 5 of the chexpert set's 14 findings; Open-i's reports 2 of them.
    spec = {
        "name": "subset",
        "tasks": [
            {
                "name": "two-findings",
                "data": str(phantom_shards),
                "split": "test",
                "labels": ["Cardiomegaly", "Edema"],
                "descriptors": "phantom",
                "protocols": {"zeroshot": {}, "prompts": {}, "reports": {}},
            }
        ],
    }
    path = tmp_path / "subset.yaml"
    path.write_text(yaml.safe_dump(spec))
    rows = run_bench(load_suite(path), [str(tiny_checkpoint)], tmp_path / "bench", _embed, bootstrap=20).rows
    assert {r["protocol"] for r in rows} == {"zeroshot", "prompts", "reports"}
    per_finding = {r["metric"].split("/")[-1] for r in rows if r["protocol"] == "zeroshot" and "/auroc/" in r["metric"]}
    assert per_finding == {"Cardiomegaly", "Edema"}
