"""The leaderboard reads as a table for people: columns named in words, the CSV keeps the keys."""

import csv

import pytest

from convirt.bench.leaderboard import metric_name, write_leaderboard


@pytest.mark.parametrize(
    ("protocol", "metric", "name"),
    [
        ("probe", "linear@1/mean_auroc", "linear probe, 100% labels: mean AUROC"),
        ("probe", "knn@0.01/mean_auroc", "kNN probe, 1% labels: mean AUROC"),
        ("finetune", "finetune@0.1/mean_auroc", "fine-tuning, 10% labels: mean AUROC"),
        ("image_text", "image_to_text/recall_at_5", "image→text recall@5"),
        ("image_text", "text_to_image/recall_at_10", "text→image recall@10"),
        ("zeroshot", "descriptors/mean_auroc", "zero-shot (descriptors): mean AUROC"),
        ("reports", "names/mean_auroc", "zero-shot on reports (finding names): mean AUROC"),
        ("knn", "k10/mean_auroc", "kNN diagnosis (k=10): mean AUROC"),
        ("retrieval", "map_at_5", "image retrieval: mAP@5"),
        ("prompts", "mean_auroc", "prompt robustness: mean AUROC"),
        ("leakage", "leaked", "leakage: test images in training"),
        ("calibration", "ece_after", "calibration: mean ECE after"),
        ("calibration", "brier_before", "calibration: mean Brier score before"),
        ("subgroups", "sex/gap/Pneumonia", "subgroups by sex: AUROC gap, best - worst (Pneumonia)"),
        ("subgroups", "age_band/>=80/auroc/Pneumonia", "subgroup age_band >=80: AUROC (Pneumonia)"),
        ("subgroups", "sex/gap/Nodule/Mass", "subgroups by sex: AUROC gap, best - worst (Nodule/Mass)"),
        ("subgroups", "view/AP/auroc/Nodule/Mass", "subgroup view AP: AUROC (Nodule/Mass)"),
        (
            "operating_points",
            "youden/threshold/Nodule/Mass",
            "youden (chosen on validation): threshold chosen on validation (Nodule/Mass)",
        ),
        (
            "operating_points",
            "specificity>=0.90/ppv/Pneumonia",
            "specificity>=0.90 (chosen on validation): PPV on test (Pneumonia)",
        ),
        # A key of a shape not known here reads as before, never as a wrong name.
        ("zeroshot", "descriptors/auroc/Edema", "zeroshot descriptors/auroc/Edema"),
        ("newprotocol", "k3/mean_auroc", "newprotocol k3/mean_auroc"),
        ("probe", "linear@most/mean_auroc", "probe linear@most/mean_auroc"),
    ],
)
def test_metric_keys_read_as_words(protocol, metric, name):
    assert metric_name(protocol, metric) == name


def _row(model, protocol, metric, value, low=None, high=None, n=40):
    return {
        "model": model,
        "task": "phantom",
        "protocol": protocol,
        "metric": metric,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n": n,
    }


def test_the_leaderboard_names_its_columns_in_words_and_the_csv_keeps_the_keys(tmp_path):
    rows = [
        _row("a", "probe", "linear@1/mean_auroc", 0.8, 0.7, 0.9),
        _row("a", "probe", "linear@1/auroc/Edema", 0.6, 0.5, 0.7),  # not a headline: its protocol's second row
        _row("b", "probe", "linear@1/mean_auroc", 0.9, 0.85, 0.95),
        _row("a", "image_text", "image_to_text/recall_at_5", 0.5, 0.4, 0.6),
        _row("b", "image_text", "image_to_text/recall_at_5", 0.3, 0.2, 0.4),
        _row("a", "leakage", "leaked", 0),
        _row("b", "leakage", "leaked", 2),
    ]
    board = write_leaderboard(rows, ["a", "b"], tmp_path).read_text(encoding="utf-8")
    header = board.splitlines()[2]
    assert header == (
        "| model | image→text recall@5 | leakage: test images in training | linear probe, 100% labels: mean AUROC |"
    )
    assert "| a | **0.500 [0.400, 0.600]** | 0 of 40 | 0.800 [0.700, 0.900] |" in board
    assert "| b | 0.300 [0.200, 0.400] | 2 of 40 | **0.900 [0.850, 0.950]** |" in board
    with open(tmp_path / "leaderboard.csv", newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [(r["model"], r["protocol"], r["metric"]) for r in table] == [
        ("a", "image_text", "image_to_text/recall_at_5"),
        ("a", "leakage", "leaked"),
        ("a", "probe", "linear@1/mean_auroc"),
        ("b", "image_text", "image_to_text/recall_at_5"),
        ("b", "leakage", "leaked"),
        ("b", "probe", "linear@1/mean_auroc"),
    ]
    assert float(table[2]["value"]) == 0.8 and table[2]["name"] == "linear probe, 100% labels: mean AUROC"


def test_the_lowest_brier_score_is_the_best_and_subgroup_gaps_are_never_bolded(tmp_path):
    rows = [
        _row("a", "subgroups", "sex/gap/Pneumonia", 0.05, 0.01, 0.09),
        _row("b", "subgroups", "sex/gap/Pneumonia", 0.20, 0.12, 0.28),
        _row("c", "subgroups", "sex/gap/Pneumonia", None),  # fewer than two subgroups scored
        _row("a", "calibration", "brier_after", 0.21, 0.19, 0.23),
        _row("b", "calibration", "brier_after", 0.12, 0.10, 0.14),
    ]
    board = write_leaderboard(rows, ["a", "b", "c"], tmp_path).read_text(encoding="utf-8")
    lines = {line.split(" | ")[0]: line for line in board.splitlines() if line.startswith("| ")}
    # A model at chance has no gap between subgroups either: the smallest gap is shown, not crowned.
    assert "0.050 [0.010, 0.090]" in lines["| a"] and "**0.050" not in lines["| a"] and "n/a" in lines["| c"]
    assert "**0.120 [0.100, 0.140]**" in lines["| b"] and "**0.210" not in lines["| a"]


def test_a_headline_of_another_key_gets_its_own_column_never_anothers_cell(tmp_path):
    rows = [
        _row("a", "operating_points", "sensitivity>=0.90/specificity/Pneumonia", 0.40, 0.30, 0.50),
        _row("b", "operating_points", "sensitivity>=0.90/specificity/Effusion", 0.90, 0.80, 0.95),
    ]
    board = write_leaderboard(rows, ["a", "b"], tmp_path).read_text(encoding="utf-8")
    header = next(line for line in board.splitlines() if line.startswith("| model"))
    lines = {line.split(" | ")[0]: line.split(" | ")[1:] for line in board.splitlines() if line.startswith("| ")}
    columns = header.split(" | ")[1:]
    assert len(columns) == 2 and "(Effusion)" in columns[0] and "(Pneumonia)" in columns[1]
    assert lines["| a"][0].startswith("n/a") and lines["| b"][1].startswith("n/a")
    assert "0.900" in lines["| b"][0] and "0.400" in lines["| a"][1]
