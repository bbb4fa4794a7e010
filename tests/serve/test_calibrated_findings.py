"""Scores and calibrated probabilities in `convirt serve`: a finding shows its raw descriptor score always,
a calibrated probability only where the service's calibration file covers it, and whether that probability
passes the chosen operating point; the command refuses a bad file or a rule it lacks in one line."""

import dataclasses

import numpy as np
import pytest

from convirt.serve.app import create_app
from convirt.serve.calibrated import load_served_calibration
from convirt.serve.service import CaseService
from convirt.zeroshot.calibration import Calibration
from tests.serve.client import local_client
from tests.serve.conftest import RULE


def _diagnose(service, case=3):
    client = local_client(create_app(service))
    return client.post("/v1/diagnose", data={"case": str(case), "k": "4"}).json(), client.get("/v1/info").json()


def test_without_a_calibration_a_finding_has_a_score_and_no_probability(service):
    answer, info = _diagnose(service)
    assert info["calibration"] is None and answer["findings"]
    for finding in answer["findings"]:
        assert 0 <= finding["score"] <= 1 and finding["probability"] is None and finding["operating_point"] is None
        assert finding["observations"] and all(set(o) == {"observation", "score"} for o in finding["observations"])


def test_a_calibrated_finding_shows_its_probability_and_whether_it_passes(archive, service, calibration_file):
    loaded, folder, _ = archive
    calibration = Calibration.load(calibration_file)
    # The rule as an operator might type it: matched to the file's "sensitivity>=0.90".
    calibrated = CaseService(
        loaded, folder, "phantom", knn_k=5, calibration=calibration_file, operating_point="Sensitivity >= 0.9"
    )
    answer, info = _diagnose(calibrated)
    plain, _ = _diagnose(service)
    assert info["calibration"] == {
        "method": "platt",
        "findings": service.finding_names[:-1],
        "fitted_on": calibration.fold.n,
        "fold": calibration.fold.fingerprint[:12],
        "operating_point": RULE,
    }
    assert [f["score"] for f in answer["findings"]] == pytest.approx([f["score"] for f in plain["findings"]], abs=1e-6)
    *covered, left_out = answer["findings"]
    for finding in covered:
        expected = calibration.apply(finding["finding"], np.array([finding["score"]]))[0]
        assert finding["probability"] == pytest.approx(expected, abs=1e-6)
        assert abs(finding["probability"] - finding["score"]) > 1e-3  # the calibration moved it
        point = calibration.operating_points[finding["finding"]][RULE]
        assert finding["operating_point"] == {
            "rule": RULE,
            "threshold": pytest.approx(point.threshold),
            "passes": finding["probability"] >= point.threshold,
        }
    assert left_out["finding"] == service.finding_names[-1] and 0 <= left_out["score"] <= 1
    assert left_out["probability"] is None and left_out["operating_point"] is None


def test_passes_compares_the_probability_with_the_threshold_never_the_score(archive, service, calibration_file):
    loaded, folder, _ = archive
    calibration = Calibration.load(calibration_file)
    scores = {f["finding"]: f["score"] for f in _diagnose(service)[0]["findings"]}
    # Each threshold halfway between the finding's score and its probability: the two sides disagree.
    points = {}
    for name, rules in calibration.operating_points.items():
        probability = float(calibration.apply(name, np.array([scores[name]]))[0])
        points[name] = {
            **rules,
            "youden": dataclasses.replace(rules["youden"], threshold=(probability + scores[name]) / 2),
        }
    moved = dataclasses.replace(calibration, operating_points=points)
    # The Python API takes a calibration already loaded; the rule defaults to youden.
    answer, info = _diagnose(CaseService(loaded, folder, "phantom", knn_k=5, calibration=moved))
    assert info["calibration"]["operating_point"] == "youden"
    marked = [f for f in answer["findings"] if f["operating_point"] is not None]
    assert len(marked) == len(calibration.parameters)
    assert {f["operating_point"]["passes"] for f in marked} == {True, False}  # some probabilities above, some below
    for finding in marked:
        assert finding["operating_point"]["passes"] == (finding["probability"] > finding["score"])


def test_a_file_without_operating_points_marks_nothing_unless_a_rule_is_asked(calibration_file, service):
    bare = dataclasses.replace(Calibration.load(calibration_file), operating_points={})
    served = load_served_calibration(bare, None, service.finding_names)
    assert served is not None and served.rule is None and served.info()["operating_point"] is None
    assert served.fields(service.finding_names[0], 0.5)["operating_point"] is None
    with pytest.raises(ValueError, match="no operating point 'youden' for these findings; it has: none"):
        load_served_calibration(bare, "youden", service.finding_names)
    with pytest.raises(ValueError, match="calibrates none of this descriptor set's findings"):
        load_served_calibration(bare, None, ["Atelectasis"])
    assert load_served_calibration(None, None, service.finding_names) is None


def test_the_command_refuses_a_bad_calibration_or_a_rule_it_lacks_before_loading(
    archive, calibration_file, tmp_path, capsys
):
    from convirt.cli.main import main

    _, folder, _ = archive
    base = ["serve", "--model", "never-loaded.ckpt", "--index", str(folder), "--descriptors", "phantom"]
    (tmp_path / "bad.json").write_text('{"format": "something-else"}')
    (tmp_path / "garbage.json").write_bytes(b"\x89PNG not json")
    refusals = [
        (["--calibration", str(tmp_path / "missing.json")], "cannot read the calibration file"),
        (["--calibration", str(tmp_path / "bad.json")], "not a calibration file"),
        (["--calibration", str(tmp_path / "garbage.json")], "not a calibration file"),
        (["--calibration", str(calibration_file), "--operating-point", "best"], "unknown operating-point rule 'best'"),
        (
            ["--calibration", str(calibration_file), "--operating-point", "specificity>=0.95"],
            "it has: sensitivity>=0.90, sensitivity>=0.95, specificity>=0.90, youden",
        ),
        (["--operating-point", "youden"], "needs a --calibration file"),
    ]
    for extra, reason in refusals:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert reason in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert main([*base[:-2], "--calibration", str(calibration_file)]) == 2  # no descriptor set to calibrate
    assert "needs a descriptor set (--descriptors)" in capsys.readouterr().err


def test_a_calibration_of_other_findings_is_refused_when_the_service_starts(archive, calibration_file, tmp_path):
    loaded, folder, _ = archive
    fitted = Calibration.load(calibration_file)
    other = dataclasses.replace(fitted, parameters={"Atelectasis": next(iter(fitted.parameters.values()))})
    with pytest.raises(ValueError, match="calibrates none of this descriptor set's findings"):
        CaseService(loaded, folder, "phantom", calibration=other)


def test_a_calibration_of_another_model_or_descriptor_set_is_refused_when_the_service_starts(archive, calibration_file):
    loaded, folder, _ = archive
    fitted = Calibration.load(calibration_file)
    assert fitted.scores_from["descriptors"] == "phantom" and fitted.scores_from["model_name"] == loaded.model_name
    other_model = dataclasses.replace(fitted, scores_from={**fitted.scores_from, "checkpoint_sha256": "0" * 64})
    with pytest.raises(ValueError, match="the calibration was built with another model: checkpoint_sha256"):
        CaseService(loaded, folder, "phantom", calibration=other_model)
    other_set = dataclasses.replace(fitted, scores_from={**fitted.scores_from, "descriptors": "chexpert"})
    with pytest.raises(ValueError, match="fitted on the 'chexpert' descriptor set's scores, not 'phantom'"):
        CaseService(loaded, folder, "phantom", calibration=other_set)
