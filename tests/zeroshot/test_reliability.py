import numpy as np
import pytest

from convirt.zeroshot.reliability import brier_score, expected_calibration_error, reliability_bins, reliability_diagram


def _calibrated(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    return (rng.random(n) < p).astype(int), p


def test_ece_of_calibrated_scores_is_near_zero_and_of_overconfident_ones_is_not():
    y, p = _calibrated()
    assert expected_calibration_error(y, p) < 0.02
    assert expected_calibration_error(y, p, strategy="quantile") < 0.02
    overconfident = np.where(p > 0.5, 1 - (1 - p) ** 2, p**2)  # pushed towards 0 and 1
    assert expected_calibration_error(y, overconfident) > 0.08


def test_bins_by_hand():
    # 15 equal-width bins: 0.05 and 0.06 share bin 0, 0.5 is bin 7, 1.0 is in the last bin.
    y, p = np.array([0, 1, 1, 1]), np.array([0.05, 0.06, 0.5, 1.0])
    table = reliability_bins(y, p)
    assert table.counts.tolist() == [2] + [0] * 6 + [1] + [0] * 6 + [1]
    assert table.mean_predicted[0] == pytest.approx(0.055) and table.observed[0] == 0.5
    # ECE: (2/4)|0.5-0.055| + (1/4)|1-0.5| + (1/4)|1-1|
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.445 + 0.25 * 0.5)
    assert reliability_bins(y, p, bins=2, strategy="quantile").counts.tolist() == [2, 2]
    assert brier_score(y, p) == pytest.approx((0.05**2 + 0.94**2 + 0.5**2 + 0) / 4)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown binning 'equal'; known: uniform, quantile"):
        reliability_bins([0, 1], [0.1, 0.9], strategy="equal")
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        expected_calibration_error([0, 1], [0.1, 1.5])


def test_reliability_diagram_writes_a_png(tmp_path):
    y, p = _calibrated(2000)
    returned = reliability_diagram(y, {"before": p**2, "after": p}, tmp_path / "edema.png", title="Edema")
    assert returned is None and (tmp_path / "edema.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
