import json

import numpy as np
import pytest
from scipy.special import expit

from convirt.zeroshot.calibration import (
    Calibration,
    check_not_fitted_on,
    fit_calibration,
    fit_platt,
    fit_temperature,
)
from convirt.zeroshot.folds import validation_split
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
    with pytest.raises(ValueError, match="'Edema': a calibration needs positives and negatives"):
        fit_temperature(np.zeros(5), np.full(5, 0.3), "Edema")
