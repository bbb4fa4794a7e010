"""The subgroups protocol: zero-shot AUROC per subgroup of the metadata a task declares, the gap first."""

import numpy as np
import pytest

from convirt.bench.protocols import subgroups
from convirt.bench.suite import Task
from convirt.data.inputs import read_image_rows
from convirt.embeddings.encode import EmbeddingOutput, embed_image_files
from convirt.models.sources import load_model


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
    assert metrics[:2] == ["sex/gap/Cardiomegaly", "age_band/gap/Cardiomegaly"]  # the headline first
    by_metric = {row["metric"]: row for row in found}
    assert by_metric["sex/F/auroc/Cardiomegaly"]["n"] + by_metric["sex/M/auroc/Cardiomegaly"]["n"] == len(rows)
    bands = {m.split("/")[1] for m in metrics if m.startswith("age_band/") and "/gap/" not in m}
    assert bands <= {"<40", "40-60", "60-80", ">=80"} and len(bands) >= 3
    for row in found:
        assert row["value"] is None or 0 <= row["value"] <= 1 or "/gap/" in row["metric"]
    with pytest.raises(ValueError, match="unknown subgroup columns \\['patient_id'\\]"):
        subgroups(loaded, task, {"columns": ["patient_id"]}, images, None, seed=0, bootstrap=0)
