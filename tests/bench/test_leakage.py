"""The leakage audit finds planted copies of test images in training data and flags no distinct image."""

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from convirt.bench.runner import run_bench
from convirt.bench.suite import Suite, Task
from convirt.data.signatures import read_signatures
from convirt.embeddings.run import embed_to_folder
from convirt.models.checkpoint import _run_of
from convirt.retrieval.duplicates import find_duplicates

TEST = 40  # the first 40 phantom images are the test set, the other 40 are distinct training images


def _embed(*args, **kwargs):
    return embed_to_folder(*args, **{**kwargs, "progress": False})


def _write_table(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "labels", "patient_id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A test table and a training table holding distinct images plus planted copies of test images:
    the same file, the same pixels re-encoded, a 3/4 resize saved as JPEG, a JPEG at full size and a
    contrast change. Phantoms of 256 px, a radiograph's smallest usual size (the suite's 96 px
    phantoms keep too little detail for a resized copy to be told from a look-alike)."""
    from convirt.data.sources.phantom import write_phantom

    out = tmp_path_factory.mktemp("planted")
    phantom_csv = write_phantom(out / "phantom", num_samples=2 * TEST, seed=5, size=256, progress=False)
    rows = list(csv.DictReader(open(phantom_csv, newline="", encoding="utf-8")))
    for row in rows:
        row["image"] = str(phantom_csv.parent / row["image"])
        row.pop("view"), row.pop("source")
    test, train = rows[:TEST], rows[TEST:]
    copies = out / "copies"
    copies.mkdir()
    image = [Image.open(test[i]["image"]).convert("L") for i in range(5)]
    shutil.copy(test[0]["image"], copies / "same-file.png")
    image[1].save(copies / "same-pixels.png", compress_level=0)
    small = image[2].resize((image[2].width * 3 // 4, image[2].height * 3 // 4), Image.Resampling.LANCZOS)
    small.save(copies / "resized.jpg", quality=75)
    image[3].save(copies / "reencoded.jpg", quality=70)
    ImageEnhance.Contrast(image[4]).enhance(1.2).save(copies / "contrast.png")
    planted_rows = [
        {"image": str(copies / name), "labels": test[i]["labels"], "patient_id": f"copy-{i}", "text": test[i]["text"]}
        for i, name in enumerate(["same-file.png", "same-pixels.png", "resized.jpg", "reencoded.jpg", "contrast.png"])
    ]
    return _write_table(out / "test.csv", test), _write_table(out / "train.csv", train + planted_rows), test


def test_every_planted_copy_is_found_and_no_distinct_image_is_flagged(planted):
    test_csv, train_csv, test = planted
    test_signed, train_signed = read_signatures(test_csv), read_signatures(train_csv)
    found = find_duplicates(
        test_signed.digests,
        test_signed.thumbnails,
        train_signed.digests,
        train_signed.thumbnails,
        test_details=test_signed.details,
        train_details=train_signed.details,
    )
    kinds = {test_signed.keys[d.test]: (d.kind, train_signed.keys[d.train].split("copies_")[-1]) for d in found}
    keys = [test_signed.keys[i] for i in range(5)]
    assert kinds == {
        keys[0]: ("exact", "same-file"),
        keys[1]: ("exact", "same-pixels"),
        keys[2]: ("near", "resized"),
        keys[3]: ("near", "reencoded"),
        keys[4]: ("near", "contrast"),
    }
    with pytest.raises(ValueError, match="both the test and the training"):
        find_duplicates(
            test_signed.digests,
            test_signed.thumbnails,
            train_signed.digests,
            train_signed.thumbnails,
            test_embeddings=test_signed.thumbnails,
        )


def test_bench_audits_against_training_shards_and_can_leave_the_copies_out(
    planted, tiny_checkpoint, tmp_path, monkeypatch
):
    from convirt.data.sources import read_rows
    from convirt.data.writer import write_shards

    test_csv, train_csv, test = planted
    shards = tmp_path / "train-shards"
    # Everything in the training split: the shards resize every image, so all five copies are near ones now.
    write_shards(
        read_rows("csv", str(train_csv)), shards, image_size=192, val_fraction=0, test_fraction=0, progress=False
    )
    task = Task(name="planted", data=test_csv, labels=["Nodule"], protocols={"knn": {"k": 5}})
    suite = Suite("leak", 1, [task], tmp_path / "leak.yaml")
    first = run_bench(suite, [str(tiny_checkpoint)], tmp_path / "bench", _embed, bootstrap=20, train_shards=shards)
    counts = {r["metric"]: r["value"] for r in first.rows if r["protocol"] == "leakage"}
    assert counts == {"leaked": 5, "exact": 0, "near": 5}
    knn = next(r for r in first.rows if r["protocol"] == "knn")
    assert knn["n"] == TEST
    # The found pairs are kept with the result, and excluding them re-scores kNN on the 35 left.
    stored = json.loads(next((tmp_path / "bench" / "results").glob("*/planted/leakage-s0.json")).read_text())
    assert sorted(p["train_key"].split("copies_")[-1] for p in stored["pairs"]) == sorted(
        ["same-file", "same-pixels", "resized", "reencoded", "contrast"]
    )
    second = run_bench(
        suite,
        [str(tiny_checkpoint)],
        tmp_path / "bench",
        _embed,
        bootstrap=20,
        train_shards=shards,
        exclude_leaked=True,
    )
    assert second.embedded == []  # the audit's signatures and embeddings came from the cache
    assert next(r for r in second.rows if r["protocol"] == "knn")["n"] == TEST - 5
    with pytest.raises(ValueError, match="not a shard folder"):
        run_bench(suite, [str(tiny_checkpoint)], tmp_path / "b2", _embed, train_shards=tmp_path)
    # A checkpoint that records its training shards is audited by default; audit=False (--no-audit) skips it.
    import convirt.bench.runner as runner

    monkeypatch.setattr(runner, "_recorded_shards", lambda loaded: str(shards))
    recorded = run_bench(suite, [str(tiny_checkpoint)], tmp_path / "bench", _embed, bootstrap=20)
    assert {r["metric"]: r["value"] for r in recorded.rows if r["protocol"] == "leakage"}["leaked"] == 5
    unaudited = run_bench(suite, [str(tiny_checkpoint)], tmp_path / "bench", _embed, bootstrap=20, audit=False)
    assert [r["protocol"] for r in unaudited.rows if r["protocol"] == "leakage"] == []
    assert next(r for r in unaudited.rows if r["protocol"] == "knn")["n"] == TEST
    with pytest.raises(ValueError, match="need the leakage audit"):
        run_bench(suite, [str(tiny_checkpoint)], tmp_path / "b3", _embed, train_shards=shards, audit=False)


def test_a_checkpoint_records_the_shards_it_was_trained_on():
    state = {"convirt_run": {"precision": "32-true"}, "datamodule_hyper_parameters": {"shards": "artifacts/x/shards"}}
    assert _run_of(state) == {"precision": "32-true", "train_shards": "artifacts/x/shards"}
    assert _run_of({}) == {}
