"""`convirt zeroshot` and `convirt probe` on a label CSV without reports."""

import json
from pathlib import Path

import pytest
import yaml

from convirt.cli.main import main
from convirt.zeroshot import load_zeroshot_folder


def test_zeroshot_on_a_label_csv_writes_metrics_with_cis_and_roc(tiny_checkpoint, labels_csv, tmp_path):
    out = tmp_path / "zs"
    assert (
        main(
            [
                "zeroshot",
                "--checkpoint",
                str(tiny_checkpoint),
                "--descriptors",
                "phantom",
                "--data",
                str(labels_csv),
                "--bootstrap",
                "30",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    edema = metrics["ensemble"]["findings"]["Edema"]
    assert set(metrics) >= {"descriptors", "names", "ensemble", "positives"}
    assert edema["auroc_ci"][0] <= edema["auroc"] <= edema["auroc_ci"][1]
    assert {"auprc", "f1", "sensitivity", "specificity", "threshold"} <= set(edema)
    # No threshold was chosen on the evaluated images: without a threshold split, no F1 at one.
    assert edema["threshold_source"].startswith("none") and edema["f1"] is None
    # Calibration and operating points: fitted on a validation fold of the patients, reported on the others.
    calibration = metrics["calibration"]
    assert calibration["fitted_here"] and calibration["files"]["calibration"] == "calibration.json"
    assert calibration["fitted_on"]["n"] + calibration["reported_on"] == 96
    assert calibration["reported_rows"].startswith(f"the test side: {calibration['reported_on']} of 96 images")
    assert "15 equal-width bins" in calibration["binning"]
    # This untrained model's Edema scores fall as Edema becomes likelier: left uncalibrated, said why.
    assert "Platt slope" in calibration["not_fitted"]["Edema"] and "Edema" not in calibration["findings"]
    name, found = next(iter(calibration["findings"].items()))
    assert set(found["operating_points"]) == {"youden", "sensitivity>=0.90", "sensitivity>=0.95", "specificity>=0.90"}
    assert 0 <= found["ece"]["after"] <= 1 and found["brier_ci"]["before"][0] <= found["brier_ci"]["before"][1]
    assert found["n"] == calibration["reported_on"]
    png = out / calibration["files"]["reliability"][list(calibration["findings"]).index(name)]
    assert png.parent.name == "reliability" and png.stat().st_size > 5_000
    # Subgroups: this table has no sex, age or view, so none by default.
    assert metrics["subgroups"] == {}
    assert (out / "roc.png").stat().st_size > 10_000
    assert len((out / "predictions.csv").read_text().splitlines()) == 97
    # The library reads the whole folder back: the same metrics, one row per image, aligned arrays.
    folder = load_zeroshot_folder(out)
    assert folder.metrics == metrics and len(folder.keys) == 96 == len(folder.explanations)
    assert folder.findings == list(metrics["positives"]) and folder.probabilities.shape == folder.labels.shape
    assert int((folder.labels == 1).sum(0)[folder.findings.index("Edema")]) == metrics["positives"]["Edema"]
    assert ((folder.probabilities >= 0) & (folder.probabilities <= 1)).all()


def test_label_and_descriptor_mismatch_lists_both_sets(tiny_checkpoint, labels_csv, tmp_path, capsys):
    common = [
        "zeroshot",
        "--checkpoint",
        str(tiny_checkpoint),
        "--data",
        str(labels_csv),
        "--output",
        str(tmp_path / "zs"),
    ]
    assert main([*common, "--descriptors", "pneumonia"]) == 2
    error = capsys.readouterr().err
    assert "labels without a descriptor finding" in error and "descriptor findings: ['Pneumonia']" in error
    assert "labels in the data: ['Cardiomegaly'" in error
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "findings": {
                    "Edema": {"observations": ["haze", "lines"]},
                    "Fracture": {"observations": ["broken rib", "callus"]},
                }
            }
        )
    )
    assert main([*common, "--descriptors", str(extra), "--labels", "Edema", "Fracture"]) == 2
    assert "descriptor findings missing from the labels: ['Fracture']" in capsys.readouterr().err
    # Naming the labels scores those findings only (CheXpert's test set labels 5 of its 14 findings).
    assert main([*common, "--descriptors", str(extra), "--labels", "Edema"]) == 0
    assert list(load_zeroshot_folder(tmp_path / "zs").metrics["positives"]) == ["Edema"]
    assert main([*common, "--descriptors", str(extra), "--labels", "Edema", "Nodule"]) == 2
    assert "labels without a descriptor finding: ['Nodule']" in capsys.readouterr().err


def test_probe_command(tiny_checkpoint, labels_csv, tmp_path):
    out = tmp_path / "probe"
    assert (
        main(
            [
                "probe",
                "--checkpoint",
                str(tiny_checkpoint),
                "--data",
                str(labels_csv),
                "--labels",
                "Cardiomegaly",
                "Edema",
                "--fractions",
                "0.1",
                "1",
                "--folds",
                "3",
                "--bootstrap",
                "20",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "metrics.json").read_text())
    assert [(p["probe"], p["fraction"]) for p in result["probes"]] == [
        ("linear", 0.1),
        ("linear", 1.0),
        ("knn", 0.1),
        ("knn", 1.0),
    ]
    assert 0 <= result["probes"][1]["findings"]["Edema"]["auroc"] <= 1 and result["folds"] == 3


def test_threshold_from_the_validation_split_and_figures(tiny_checkpoint, phantom_shards, tmp_path):
    out = tmp_path / "zs"
    assert (
        main(
            [
                "zeroshot",
                "--checkpoint",
                str(tiny_checkpoint),
                "--data",
                str(phantom_shards),
                "--split",
                "test",
                "--threshold-split",
                "val",
                "--bootstrap",
                "10",
                "--figures",
                "2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    finding = metrics["names"]["findings"]["Cardiomegaly"]
    assert finding["threshold_source"] == "youden on split val"
    assert len(list((out / "figures").glob("*-observations.png"))) == 2
    assert len(list((out / "figures").glob("*-saliency.png"))) == 2


def test_a_moved_text_model_folder_is_named_and_replaced_with_text_model(tiny_text_model, labels_csv, tmp_path, capsys):
    import shutil

    from convirt.training import save_initial_checkpoint

    copy = tmp_path / "texts" / "model"
    shutil.copytree(tiny_text_model, copy)
    checkpoint = save_initial_checkpoint(
        str(tmp_path / "a.ckpt"), "test-tiny", pretrained=False, text_model_path=str(copy)
    )
    shutil.rmtree(copy)
    common = [
        "probe",
        "--checkpoint",
        checkpoint,
        "--data",
        str(labels_csv),
        "--labels",
        "Edema",
        "--fractions",
        "1",
        "--probes",
        "knn",
        "--folds",
        "3",
        "--bootstrap",
        "10",
        "--output",
        str(tmp_path / "probe"),
    ]
    assert main(common) == 2
    error = capsys.readouterr().err
    assert f"trained with the local text model {copy}, which is not there" in error and "--text-model DIR" in error
    assert main([*common, "--text-model", tiny_text_model]) == 0
    assert (tmp_path / "probe" / "metrics.json").is_file()


def test_evaluation_commands_count_the_corrupt_samples_they_skipped(tiny_checkpoint, phantom_shards, tmp_path, capsys):
    import shutil

    from convirt.data.shards import shard_urls
    from tests.data.test_stream_sources import break_last_image

    shards = tmp_path / "shards"
    shutil.copytree(phantom_shards, shards)
    test_shard = Path(shard_urls(str(shards), "test")[0])
    break_last_image(test_shard, tmp_path / "broken.tar")
    shutil.move(tmp_path / "broken.tar", test_shard)
    common = ["--checkpoint", str(tiny_checkpoint), "--data", str(shards), "--split", "test"]
    assert (
        main(["zeroshot", *common, "--descriptors", "phantom", "--bootstrap", "0", "--output", str(tmp_path / "zs")])
        == 0
    )
    assert json.loads((tmp_path / "zs" / "metrics.json").read_text())["skipped_samples"] == 1
    assert main(["embed", *common, "--output", str(tmp_path / "emb")]) == 0
    assert json.loads((tmp_path / "emb" / "info.json").read_text())["skipped_samples"] == 1
    assert "(1 corrupt samples skipped)" in capsys.readouterr().out


@pytest.mark.slow  # six convirt zeroshot runs: in .ci/run's slow suite
def test_a_calibration_is_never_reported_on_the_images_it_was_fitted_on(
    tiny_checkpoint, tiny_text_model, phantom_shards, tmp_path, capsys
):
    from convirt.training import save_initial_checkpoint
    from convirt.zeroshot import descriptors

    common = ["zeroshot", "--checkpoint", str(tiny_checkpoint), "--data", str(phantom_shards), "--bootstrap", "0"]
    fitted = tmp_path / "fitted"
    assert main([*common, "--split", "train", "--output", str(fitted), "--operating-points", "youden"]) == 0
    saved = fitted / "calibration.json"
    # Its own images: refused, naming how many were in the fit.
    assert main([*common, "--split", "train", "--calibration", str(saved), "--output", str(tmp_path / "again")]) == 2
    assert "were used to fit this calibration" in capsys.readouterr().err
    # Other images: applied unchanged, reported on all of them, its operating point with it.
    assert main([*common, "--split", "test", "--calibration", str(saved), "--output", str(tmp_path / "test")]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert not metrics["calibration"]["fitted_here"] and metrics["calibration"]["reported_on"] == metrics["samples"]
    assert not (tmp_path / "test" / "calibration.json").exists()
    first = json.loads(saved.read_text())
    name = next(iter(first["operating_points"]))
    point = metrics["calibration"]["findings"][name]["operating_points"]["youden"]
    assert point["threshold"] == first["operating_points"][name]["youden"]["threshold"]
    assert first["scores_from"]["descriptors"] == "phantom" and len(first["scores_from"]["checkpoint_sha256"]) == 64
    # Another model's scores, or another descriptor set's: refused before anything is embedded.
    other = save_initial_checkpoint(
        str(tmp_path / "other.ckpt"), "test-tiny", pretrained=False, text_model_path=tiny_text_model, seed=1
    )
    elsewhere = ["--split", "test", "--calibration", str(saved), "--output", str(tmp_path / "other")]
    assert main(["zeroshot", "--checkpoint", other, *common[3:], *elsewhere]) == 2
    assert "the calibration was built with another model: checkpoint_sha256" in capsys.readouterr().err
    renamed = tmp_path / "mine.yaml"
    renamed.write_text(
        (Path(descriptors.__file__).parent / "descriptors" / "phantom.yaml")
        .read_text()
        .replace("name: phantom", "name: mine", 1)
    )
    assert main([*common, "--descriptors", str(renamed), *elsewhere]) == 2
    assert "fitted on the 'phantom' descriptor set's scores, not 'mine'" in capsys.readouterr().err
    # A threshold split that is the evaluated split is refused too.
    args = [*common, "--split", "test", "--threshold-split", "test", "--output", str(tmp_path / "same")]
    assert main(args) == 2
    assert "threshold split are also evaluated" in capsys.readouterr().err
    bad = [*common, "--split", "test", "--operating-points", "f1>=0.9", "--output", str(tmp_path / "bad")]
    assert main(bad) == 2
    assert "unknown operating-point rule" in capsys.readouterr().err
