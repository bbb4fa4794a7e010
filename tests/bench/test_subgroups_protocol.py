"""The subgroups protocol: zero-shot AUROC per subgroup of the metadata a task declares, the gap first."""

import numpy as np
import pytest

from convirt.bench.clinical_protocols import subgroups
from convirt.bench.suite import Task
from convirt.data.inputs import read_image_rows
from convirt.embeddings.encode import EmbeddingOutput, embed_image_files
from convirt.models.sources import load_model
from tests.conftest import SHARED_DATA, requires_shared_data


def test_subgroup_rows_by_sex_and_age_band_with_the_gap_first(labels_csv, tiny_checkpoint):
    loaded = load_model(str(tiny_checkpoint))
    rows = read_image_rows(labels_csv)
    vectors = embed_image_files(loaded.model, [row.image_path for row in rows], loaded.preprocess_cfg)
    ages = np.random.default_rng(0).integers(20, 95, len(rows))
    meta = [{**row.metadata(), "sex": "MF"[i % 2], "age": str(age)} for i, (row, age) in enumerate(zip(rows, ages))]
    images = EmbeddingOutput(vectors, keys=[row.key for row in rows], meta=meta)
    task = Task(name="phantom", data=labels_csv, descriptors="phantom", labels=["Cardiomegaly"])
    options = {"columns": ["sex", "age_band"], "min_size": 10, "min_positives": 2}
    found = subgroups(loaded, task, options, images, None, seed=0, bootstrap=50)
    metrics = [row["metric"] for row in found]
    assert metrics[0] == "sex/gap/Cardiomegaly"  # the headline first
    assert metrics[1:4] == ["sex/worst/Cardiomegaly", "age_band/gap/Cardiomegaly", "age_band/worst/Cardiomegaly"]
    by_metric = {row["metric"]: row for row in found}
    worst = by_metric["sex/worst/Cardiomegaly"]
    assert worst["value"] == by_metric[f"sex/{worst['group']}/auroc/Cardiomegaly"]["value"]
    assert worst["value"] == min(by_metric[f"sex/{g}/auroc/Cardiomegaly"]["value"] for g in "FM")
    gap = by_metric["sex/gap/Cardiomegaly"]["value"]
    assert gap == pytest.approx(
        abs(by_metric["sex/F/auroc/Cardiomegaly"]["value"] - by_metric["sex/M/auroc/Cardiomegaly"]["value"])
    )
    assert by_metric["sex/F/auroc/Cardiomegaly"]["n"] + by_metric["sex/M/auroc/Cardiomegaly"]["n"] == len(rows)
    bands = {m.split("/")[1] for m in metrics if m.startswith("age_band/")} - {"gap", "worst"}
    assert bands <= {"<40", "40-60", "60-80", ">=80"} and len(bands) >= 3
    for row in found:
        assert row["value"] is None or 0 <= row["value"] <= 1 or "/gap/" in row["metric"]
    with pytest.raises(ValueError, match="unknown subgroup columns \\['patient_id'\\]"):
        subgroups(loaded, task, {"columns": ["patient_id"]}, images, None, seed=0, bootstrap=0)


def test_the_suites_declare_subgroups_where_the_data_carries_them():
    from convirt.bench.suite import load_suite

    shared = {task.name: task for task in load_suite("shared").tasks}
    nih = shared["nih-pneumonia"].protocols
    assert nih["subgroups"]["columns"] == ["sex", "age_band", "view"] and {"calibration", "operating_points"} <= set(
        nih
    )
    assert "subgroups" not in shared["kermany-pneumonia"].protocols  # no sex, age or view there
    public = {task.name: task for task in load_suite("public").tasks}
    for name in ("chestxray14-test", "rsna-pneumonia", "siim-pneumothorax", "vindr-cxr-test-pneumonia"):
        assert public[name].protocols["subgroups"]["columns"] == ["sex", "age_band", "view"], name
    for task in public.values():
        if "zeroshot" in task.protocols:
            assert {"calibration", "operating_points"} <= set(task.protocols), task.name


@requires_shared_data("cxr-eval", "labels.csv")
def test_every_nih_row_of_the_shared_data_has_what_its_subgroups_need():
    from convirt.zeroshot.subgroups import UNKNOWN, age_band

    rows = read_image_rows(SHARED_DATA / "cxr-eval" / "labels.csv", {"source": "nih-chestxray14"})
    assert len(rows) == 476
    assert {row.sex for row in rows} == {"F", "M"} and {row.view for row in rows} == {"AP", "PA"}
    assert UNKNOWN not in {age_band(row.age) for row in rows}
