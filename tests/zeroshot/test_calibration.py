import json

import numpy as np
import pytest
from scipy.special import expit

from convirt.zeroshot.calibration import (
    Calibration,
    FittedRowsError,
    UnfittableFinding,
    check_not_fitted_on,
    fit_calibration,
    fit_platt,
    fit_temperature,
)
from convirt.zeroshot.folds import row_hashes, validation_split
from convirt.zeroshot.operating_points import choose_operating_point
from convirt.zeroshot.reliability import expected_calibration_error


def _scores(n=20_000, seed=0, temperature=2.5, a=None, b=0.0):
    """Labels drawn from sigmoid(z); reported scores sigmoid(z * T0), or sigmoid((z - b) / a) for Platt."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    labels = (rng.random(n) < expit(z)).astype(int)
    reported = z * temperature if a is None else (z - b) / a
    return labels, expit(reported)


def test_temperature_scaling_recovers_a_known_temperature():
    labels, probs = _scores(temperature=2.5)
    assert fit_temperature(labels, probs) == pytest.approx(2.5, rel=0.1)
    labels, probs = _scores(temperature=0.5, seed=1)  # underconfident scores: T < 1
    assert fit_temperature(labels, probs) == pytest.approx(0.5, rel=0.1)


def test_platt_scaling_recovers_a_known_slope_and_intercept():
    labels, probs = _scores(a=0.6, b=-0.8)  # the true probability is sigmoid(0.6 * logit - 0.8)
    a, b = fit_platt(labels, probs)
    assert a == pytest.approx(0.6, abs=0.06) and b == pytest.approx(-0.8, abs=0.08)


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibrating_on_a_validation_fold_lowers_ece_on_the_test_fold(method):
    labels, probs = _scores(n=20_000, seed=2, temperature=3.0)
    ids = [f"img{i}" for i in range(labels.size)]
    patients = [f"p{i // 2}" for i in range(labels.size)]
    val, test = validation_split(patients, 0.3, seed=0, labels=labels)
    fitted = fit_calibration(
        labels[val, None], probs[val, None], ["Edema"], [ids[i] for i in val], method=method, seed=0
    )
    assert fitted.fold.n == val.size and fitted.fold.positives == {"Edema": int(labels[val].sum())}
    before = expected_calibration_error(labels[test], probs[test])
    after = expected_calibration_error(labels[test], fitted.apply("Edema", probs[test]))
    assert before > 0.08 and after < 0.02


def _small():
    labels, probs = _scores(n=600, seed=3)
    matrix = np.c_[labels, labels[::-1]]
    return matrix, np.c_[probs, probs[::-1]], [f"img{i}" for i in range(labels.size)]


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_save_and_load_round_trip(tmp_path, method):
    labels, probs, ids = _small()
    fitted = fit_calibration(labels, probs, ["Edema", "Atelectasis"], ids, method=method, seed=7)
    loaded = Calibration.load(fitted.save(tmp_path / "calibration.json"))
    assert loaded == fitted
    assert np.array_equal(loaded.apply("Atelectasis", probs[:, 1]), fitted.apply("Atelectasis", probs[:, 1]))
    text = (tmp_path / "calibration.json").read_text()
    assert json.loads(text)["format"] == "convirt-calibration/1" and "img1" not in text  # no row id written


def test_load_refuses_other_formats_and_bad_parameters(tmp_path):
    labels, probs, ids = _small()
    path = fit_calibration(labels, probs, ["Edema", "Atelectasis"], ids).save(tmp_path / "c.json")
    payload = json.loads(path.read_text())
    path.write_text(json.dumps({**payload, "format": "convirt-calibration/9"}))
    with pytest.raises(ValueError, match="not a calibration file: format 'convirt-calibration/9'"):
        Calibration.load(path)
    payload["parameters"]["Edema"]["temperature"] = -1.0
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="bad parameters for 'Edema'"):
        Calibration.load(path)


def test_a_calibration_refuses_the_rows_it_was_fitted_on():
    labels, probs, ids = _small()
    fitted = fit_calibration(labels[:400], probs[:400], ["Edema", "Atelectasis"], ids[:400])
    check_not_fitted_on(fitted, ids[400:])  # the other rows: allowed
    with pytest.raises(ValueError, match="1 of the 201 rows to report on were used to fit this calibration"):
        check_not_fitted_on(fitted, ids[399:])


def test_unknown_method_finding_and_one_class_are_refused():
    labels, probs, ids = _small()
    with pytest.raises(ValueError, match="unknown calibration method 'isotonic'; known: temperature, platt"):
        fit_calibration(labels, probs, ["Edema", "Atelectasis"], ids, method="isotonic")
    fitted = fit_calibration(labels, probs, ["Edema", "Atelectasis"], ids)
    with pytest.raises(ValueError, match="no calibration for 'Cardiomegaly'; calibrated: Edema, Atelectasis"):
        fitted.apply("Cardiomegaly", probs[:, 0])
    with pytest.raises(UnfittableFinding, match="'Edema': a calibration needs positives and negatives"):
        fit_temperature(np.zeros(5), np.full(5, 0.3), "Edema")
    with pytest.raises(UnfittableFinding, match="'Atelectasis': a calibration needs positives and negatives"):
        fit_calibration(np.c_[labels[:, 0], np.zeros(len(ids))], probs, ["Edema", "Atelectasis"], ids)


def test_a_calibration_refuses_the_rows_it_was_fitted_on_with_advice_a_cli_user_can_follow():
    labels, probs, ids = _small()
    fitted = fit_calibration(labels[:400], probs[:400], ["Edema", "Atelectasis"], ids[:400])
    with pytest.raises(
        FittedRowsError,
        match=r"^100 of the 300 rows to report on were used to fit this calibration \(fold [0-9a-f]{12}\): evaluate"
        " other images than the calibration was fitted on, or fit a new one \\(convirt zeroshot without"
        " --calibration fits one on a validation fold of its images\\)$",
    ):
        check_not_fitted_on(fitted, ids[300:])


@pytest.mark.parametrize("fit", [fit_temperature, fit_platt])
def test_scores_that_fall_as_the_finding_becomes_likelier_are_unfittable(fit):
    labels, probs = _scores(n=2000, seed=4, temperature=1.0)
    with pytest.raises(UnfittableFinding, match="'Edema': .*not calibrated") as raised:
        fit(labels, 1 - probs, "Edema")  # anti-correlated with the labels
    assert isinstance(raised.value, ValueError) and "\n" not in str(raised.value)
    if fit is fit_platt:
        assert "likelier on the validation fold (Platt slope -" in str(raised.value)
    else:
        assert "ran into its upper bound (T 1.1e+03)" in str(raised.value)


def test_a_fold_the_scores_separate_completely_is_named_as_such_and_platt_stays_finite():
    labels = np.r_[np.zeros(27), np.ones(3)].astype(int)
    probs = np.r_[np.linspace(0.1, 0.3, 27), [0.6, 0.7, 0.8]]
    with pytest.raises(UnfittableFinding, match="separate the classes of the validation fold completely"):
        fit_temperature(labels, probs, "Edema")
    a, b = fit_platt(labels, probs, "Edema")  # Platt's smoothed targets: no runaway slope
    assert 0 < a < 5 and np.isfinite(b)


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_fit_calibration_names_the_finding_it_cannot_fit(method):
    labels, probs, ids = _small()
    flipped = np.c_[probs[:, 0], 1 - probs[:, 1]]
    with pytest.raises(UnfittableFinding, match="^'Atelectasis': "):
        fit_calibration(labels, flipped, ["Edema", "Atelectasis"], ids, method=method)


@pytest.mark.parametrize("fit", [fit_temperature, fit_platt])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_probabilities_are_refused_with_the_finding_named(fit, bad):
    labels, probs = _scores(n=200, seed=5)
    probs[[3, 7]] = bad
    with pytest.raises(ValueError, match="^'Edema': 2 of 200 probabilities are NaN or infinite; leave") as raised:
        fit(labels, probs, "Edema")
    assert not isinstance(raised.value, UnfittableFinding)  # bad input, not a finding to leave uncalibrated


def _patients_fold():
    """600 rows, two images per patient; the first 400 rows (200 patients) fitted."""
    labels, probs, ids = _small()
    patients = [f"p{i // 2}" for i in range(len(ids))]
    fitted = fit_calibration(labels[:400], probs[:400], ["Edema", "Atelectasis"], ids[:400], patient_ids=patients[:400])
    return fitted, ids, patients


def test_a_calibration_refuses_other_images_of_the_patients_it_was_fitted_on():
    fitted, ids, patients = _patients_fold()
    assert fitted.fold.patient_hashes == tuple(row_hashes(patients[:400])) and len(fitted.fold.patient_hashes) == 200
    check_not_fitted_on(fitted, ids[400:], patients[400:])  # other images of other patients: allowed
    # 300 new image keys; 12 of them are other images of 6 fitted patients.
    keys = [f"new{i}" for i in range(300)]
    owners = [f"p{i // 2}" for i in range(12)] + [f"other{i}" for i in range(288)]
    with pytest.raises(
        FittedRowsError,
        match=r"^12 of the 300 rows to report on \(6 patients\) share a patient with the rows this calibration"
        r" was fitted on \(fold [0-9a-f]{12}\): report on other patients, or fit a new one",
    ):
        check_not_fitted_on(fitted, keys, owners)
    check_not_fitted_on(fitted, keys)  # without the rows' patients only image keys can be compared


def test_patient_ids_are_compared_only_when_both_sides_have_them():
    labels, probs, ids = _small()
    patients = [f"p{i // 2}" for i in range(len(ids))]
    unrecorded = fit_calibration(labels[:400], probs[:400], ["Edema", "Atelectasis"], ids[:400])
    assert unrecorded.fold.patient_hashes == ()
    check_not_fitted_on(unrecorded, [f"new{i}" for i in range(10)], patients[:10])
    fitted, _, _ = _patients_fold()
    with pytest.raises(ValueError, match="3 patient ids for 2 row ids"):
        check_not_fitted_on(fitted, ["new0", "new1"], ["p0", "p1", "p2"])
    with pytest.raises(ValueError, match="399 patient ids for 400 row ids"):
        fit_calibration(labels[:400], probs[:400], ["Edema", "Atelectasis"], ids[:400], patient_ids=patients[:399])


def test_patient_hashes_are_saved_and_files_without_them_still_load(tmp_path):
    fitted, ids, patients = _patients_fold()
    path = fitted.save(tmp_path / "calibration.json")
    loaded = Calibration.load(path)
    assert loaded == fitted and loaded.fold.patient_hashes == fitted.fold.patient_hashes
    assert '"p1"' not in path.read_text()  # hashes, never the ids
    payload = json.loads(path.read_text())
    del payload["fold"]["patient_hashes"]  # a file written before patients were recorded
    path.write_text(json.dumps(payload))
    old = Calibration.load(path)
    assert old.fold.patient_hashes == () and old.fold.row_hashes == fitted.fold.row_hashes
    check_not_fitted_on(old, ["new0"], ["p0"])


def test_load_reads_operating_points_under_their_canonical_rule_names(tmp_path):
    labels, probs, ids = _small()
    point = choose_operating_point(labels[:, 0], probs[:, 0], "sensitivity>=0.9")
    assert point.rule == "sensitivity>=0.90"
    payload = json.loads(
        fit_calibration(labels, probs, ["Edema", "Atelectasis"], ids).save(tmp_path / "c.json").read_text()
    )
    stored = {"threshold": point.threshold, "achieved": point.achieved, "n": point.n, "positives": point.positives}
    payload["operating_points"] = {"Edema": {"Sensitivity >= 0.9": {**stored, "rule": "Sensitivity >= 0.9"}}}
    (tmp_path / "c.json").write_text(json.dumps(payload))
    loaded = Calibration.load(tmp_path / "c.json")
    assert loaded.operating_points == {"Edema": {"sensitivity>=0.90": point}}
    payload["operating_points"]["Edema"]["sensitivity>=0.90"] = {**stored, "rule": "sensitivity>=0.90"}
    (tmp_path / "c.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="not a calibration file: operating point 'sensitivity>=0.90' given twice"):
        Calibration.load(tmp_path / "c.json")
