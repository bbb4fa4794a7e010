import math

import numpy as np
import pytest

from convirt.zeroshot.metrics import auroc
from convirt.zeroshot.subgroups import age_band, subgroup_auroc


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (39.9, "<40"),
        (40, "40-60"),
        ("59", "40-60"),
        ("063Y", "60-80"),
        (80, ">=80"),
        ("006M", "<40"),
        (None, "unknown"),
        (float("nan"), "unknown"),
        ("", "unknown"),
        ("sixty", "unknown"),
        (-3, "unknown"),
        (200, "unknown"),
        (True, "unknown"),
    ],
)
def test_age_bands(age, band):
    assert age_band(age) == band


def test_age_bands_follow_the_given_edges():
    assert [age_band(a, bands=(18, 65)) for a in (10, 18, 64.5, 65)] == ["<18", "18-65", "18-65", ">=65"]


def _cohort(seed=0):
    """Three groups of 600 with a clear signal; group 'C' has its scores randomised; 'D' has 12 rows."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(["A", "B", "C", "D"], [600, 600, 600, 12])
    labels = (rng.random(groups.size) < 0.4).astype(int)
    scores = labels * 2.0 + rng.normal(size=groups.size)
    scores[groups == "C"] = rng.normal(size=600)
    return labels, scores, groups


def test_a_randomised_subgroup_scores_near_chance_and_its_gap_excludes_zero():
    labels, scores, groups = _cohort()
    out = subgroup_auroc(labels, scores, groups.tolist(), min_size=50, min_positives=10, bootstrap=300)
    by_name = {row.name: row for row in out.subgroups}
    assert abs(by_name["C"].auroc - 0.5) < 0.07
    for name in ("A", "B"):
        kept = groups == name
        assert by_name[name].auroc == pytest.approx(auroc(labels[kept], scores[kept])) and by_name[name].auroc > 0.85
        low, high = by_name[name].ci
        assert low < by_name[name].auroc < high
    assert out.worst == "C" and out.best in ("A", "B")
    assert out.gap == pytest.approx(by_name[out.best].auroc - by_name["C"].auroc)
    low, high = out.gap_ci
    assert 0 < low < out.gap < high


def test_small_subgroups_are_listed_but_not_scored():
    labels, scores, groups = _cohort()
    b_rows = np.flatnonzero(groups == "B")
    labels[b_rows] = 0
    labels[b_rows[:4]] = 1  # 4 positives: fewer than min_positives
    out = subgroup_auroc(labels, scores, groups.tolist(), min_size=50, min_positives=10, bootstrap=50)
    by_name = {row.name: row for row in out.subgroups}
    assert [row.name for row in out.subgroups] == ["A", "B", "C", "D"]
    assert by_name["D"].n == 12 and not by_name["D"].scored and math.isnan(by_name["D"].auroc)
    assert by_name["D"].reason == "12 rows, fewer than 50"
    assert not by_name["B"].scored and by_name["B"].reason.startswith("4 positives and 596 negatives")
    assert out.worst == "C" and out.best == "A"


def test_no_gap_with_one_scored_group_and_uncertain_rows_left_out():
    labels, scores, groups = _cohort()
    labels[:10] = -1
    scores[10:20] = np.nan
    out = subgroup_auroc(labels, scores, ["A"] * 600 + [None] * 1212, min_size=1300, bootstrap=20)
    assert [(row.name, row.n, row.scored) for row in out.subgroups] == [("A", 580, False), ("unknown", 1212, False)]
    assert out.worst is None and math.isnan(out.gap)
    one = subgroup_auroc(labels, scores, ["A"] * 600 + ["B"] * 1212, min_size=1000, bootstrap=20)
    assert one.worst == one.best == "B" and math.isnan(one.gap) and math.isnan(one.gap_ci[0])


def test_when_every_group_is_alike_the_gap_rarely_excludes_zero():
    """Six groups drawn alike: the best and worst are picked from the data, so the chosen pair's plain
    95% percentile interval excluded 0 in 15 of these 30 cohorts; adjusted for the 15 pairs, rarely."""
    rng = np.random.default_rng(1)
    excluded = 0
    trials = 30
    for _ in range(trials):
        labels = rng.random(600) < 0.4
        scores = labels + rng.normal(0, 1.0, 600)
        groups = np.repeat(list("ABCDEF"), 100)
        out = subgroup_auroc(labels.astype(int), scores, groups.tolist(), min_size=50, min_positives=10, bootstrap=200)
        assert out.gap_level == pytest.approx(1 - 0.05 / 15)
        excluded += out.gap_ci[0] > 0
    assert excluded <= 3, f"the gap's interval excluded 0 in {excluded} of {trials} cohorts of alike groups"


def test_the_unknown_group_is_listed_and_scored_but_never_ranked():
    labels, scores, groups = _cohort()
    named = np.where(groups == "C", None, groups)  # the randomised group's rows have no value
    out = subgroup_auroc(labels, scores, named.tolist(), min_size=10, min_positives=5, bootstrap=50)
    by_name = {row.name: row for row in out.subgroups}
    assert by_name["unknown"].scored and abs(by_name["unknown"].auroc - 0.5) < 0.1
    assert out.worst != "unknown" and out.best != "unknown"


def test_subgroup_columns_cut_ages_and_find_the_columns_present():
    from convirt.zeroshot.subgroups import present_columns, subgroup_columns

    labels, scores, groups = _cohort()
    metas = [{"sex": "MF"[i % 2], "age": str(20 + i % 70), "view": "PA"} for i in range(len(labels))]
    assert present_columns(metas) == ["sex", "age_band"]  # one view only: no subgroups by view
    found = subgroup_columns(labels[:, None], scores[:, None], ["X"], metas, ["sex", "age_band"], bootstrap=0)
    assert set(found) == {"sex", "age_band"} and {g.name for g in found["age_band"]["X"].subgroups} == {
        "<40",
        "40-60",
        "60-80",
        ">=80",
    }
    with pytest.raises(ValueError, match="unknown subgroup columns \\['patient_id'\\]"):
        subgroup_columns(labels[:, None], scores[:, None], ["X"], metas, ["patient_id"])
