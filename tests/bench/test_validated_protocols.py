"""The calibration and operating_points protocols: fitted and chosen on a validation fold of the
task's patients, reported on the others."""

import pytest

from convirt.bench.clinical_protocols import calibration, operating_points
from convirt.bench.leaderboard import LOWER_IS_BETTER, metric_name
from convirt.bench.suite import Task
from convirt.data.inputs import read_image_rows
from convirt.embeddings.encode import EmbeddingOutput, embed_image_files
from convirt.models.sources import load_model


@pytest.fixture(scope="module")
def embedded(labels_csv, tiny_checkpoint):
    loaded = load_model(str(tiny_checkpoint))
    rows = read_image_rows(labels_csv)
    vectors = embed_image_files(loaded.model, [row.image_path for row in rows], loaded.preprocess_cfg)
    images = EmbeddingOutput(vectors, keys=[row.key for row in rows], meta=[row.metadata() for row in rows])
    task = Task(name="phantom", data=labels_csv, descriptors="phantom", labels=["Cardiomegaly", "Edema"])
    return loaded, task, images


def test_calibration_rows_report_the_test_side_before_and_after(embedded):
    loaded, task, images = embedded
    result = calibration(loaded, task, {"fraction": 0.4, "method": "temperature"}, images, None, seed=3, bootstrap=40)
    found = result["rows"]
    by_metric = {row["metric"]: row for row in found}
    assert found[0]["metric"] == "brier_after"  # the headline: mean Brier score after calibration
    assert {"ece_before", "brier_after", "brier_before"} <= set(by_metric)
    fitted_on = by_metric["temperature/Edema"]["n"]
    reported_on = by_metric["ece_after"]["n"]
    assert fitted_on + reported_on == len(images.keys) and 0 < fitted_on < reported_on
    fitted_keys = set(images.keys) - set(result["scores"]["keys"])
    assert len(fitted_keys) == fitted_on
    for name in ("Cardiomegaly", "Edema"):
        for key in ("ece_before", "ece_after", "brier_before", "brier_after"):
            row = by_metric[f"{key}/{name}"]
            assert 0 <= row["value"] <= 1 and row["ci_low"] <= row["ci_high"] and row["n"] == reported_on
            assert 0 < row["positives"] < row["n"]
        assert by_metric[f"temperature/{name}"]["value"] > 0
    # The same seed draws the same fold, and the same figures.
    again = calibration(loaded, task, {"fraction": 0.4, "method": "temperature"}, images, None, seed=3, bootstrap=0)
    assert again["rows"][0]["value"] == pytest.approx(found[0]["value"])
    platt = calibration(loaded, task, {"fraction": 0.4}, images, None, seed=3, bootstrap=0)  # platt: the default
    assert {"a/Cardiomegaly", "b/Cardiomegaly"} <= {row["metric"] for row in platt["rows"]}
    # This untrained model's Edema scores fall as Edema becomes likelier: Platt refuses, and says so.
    refused = next(row for row in platt["rows"] if row["metric"] == "brier_after/Edema")
    assert refused["value"] is None and "Platt slope" in refused["reason"]
    # The held-out probabilities before and after go with the rows, for the reliability diagrams.
    curves = result["scores"]
    assert curves["findings"] == ["Cardiomegaly", "Edema"] and len(curves["labels"]) == reported_on
    assert len(curves["before"]) == len(curves["after"]) == reported_on and not set(curves["keys"]) & fitted_keys
    assert "calibration" in LOWER_IS_BETTER
    assert metric_name("calibration", "brier_after") == "calibration: mean Brier score after"


def test_operating_point_rows_per_rule_with_the_threshold_chosen_on_validation(embedded):
    loaded, task, images = embedded
    options = {"fraction": 0.4, "method": "temperature"}  # this untrained model's Edema refuses Platt
    found = operating_points(loaded, task, options, images, None, seed=3, bootstrap=40)
    assert found[0]["metric"] == "sensitivity>=0.90/specificity/Cardiomegaly"  # the headline
    by_metric = {row["metric"]: row for row in found}
    for rule in ("sensitivity>=0.90", "sensitivity>=0.95", "specificity>=0.90", "youden"):
        for name in ("Cardiomegaly", "Edema"):
            for rate in ("sensitivity", "specificity", "ppv", "npv"):
                row = by_metric[f"{rule}/{rate}/{name}"]
                assert row["value"] is None or 0 <= row["value"] <= 1
            threshold = by_metric[f"{rule}/threshold/{name}"]
            assert threshold["n"] + by_metric[f"{rule}/sensitivity/{name}"]["n"] == len(images.keys)
    assert by_metric["youden/sensitivity/Edema"]["metric"] == "youden/sensitivity/Edema"
    assert metric_name("operating_points", found[0]["metric"]) == (
        "sensitivity>=0.90 (chosen on validation): specificity on test (Cardiomegaly)"
    )
    one = operating_points(loaded, task, {**options, "rules": ["Youden"]}, images, None, seed=3, bootstrap=0)
    assert {row["metric"].split("/")[0] for row in one} == {"youden"}  # rules by their canonical name
    with pytest.raises(ValueError, match="unknown operating-point rule"):
        operating_points(loaded, task, {"rules": ["f1"]}, images, None, seed=3, bootstrap=0)


@pytest.mark.parametrize(
    ("protocol", "options", "message"),
    [
        ("calibration", {"method": "isotonic"}, "method 'isotonic': platt or temperature"),
        ("calibration", {"fraction": 1.5}, "fraction 1.5 is not between 0 and 1"),
        ("operating_points", {"rules": ["sensitivity>=90"]}, "unknown operating-point rule"),
        ("subgroups", {"columns": ["race"]}, "unknown subgroup columns \\['race'\\]"),
        ("subgroups", {"bands": [60, 40]}, "bands \\[60.0, 40.0\\]: ages in increasing order"),
        ("subgroups", {"min_size": 0}, "min_size 0: at least 1"),
    ],
)
def test_a_suite_with_a_bad_evaluation_option_is_refused_when_read(tmp_path, protocol, options, message):
    import yaml

    from convirt.bench.suite import load_suite

    task = {"name": "t", "data": "x.csv", "descriptors": "phantom", "protocols": {protocol: options}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "version": 1, "tasks": [task]}))
    with pytest.raises(ValueError, match=f"task 't', protocol {protocol}: {message}"):
        load_suite(path)
