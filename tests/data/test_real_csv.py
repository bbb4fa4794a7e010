"""The CSV reader and shard writer on the real COVID-19 image-report pairs in ../shared/data."""

import itertools

import pytest

from convirt.data.sources import read_rows
from convirt.data.writer import write_shards
from tests.conftest import SHARED_DATA, requires_shared_data

PAIRS = SHARED_DATA / "covid-pairs" / "pairs.csv"


@pytest.mark.shared_data
@requires_shared_data("covid-pairs", "pairs.csv")
def test_real_pairs_convert_to_shards(tmp_path):
    rows = list(itertools.islice(read_rows("csv", str(PAIRS)), 40))
    assert all(row.text and row.patient_id and row.image_path.endswith((".jpg", ".png")) for row in rows)
    manifest = write_shards(rows, tmp_path, image_size=128, shard_size=16, progress=False)
    assert manifest["samples"] + sum(manifest["dropped"].values()) == 40
    assert manifest["samples"] >= 35
    labels = set().union(*(set(info["labels"]) for info in manifest["splits"].values()))
    assert "COVID-19" in labels
