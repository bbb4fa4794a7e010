"""Shards without a convirt manifest, as img2dataset and open_clip's pipelines write them (written here by
webdataset's own TarWriter): embedded to the vectors of the same images in a convirt shard folder, the
inference said in one line, trained on, and evaluated by a bench suite."""

import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from convirt.cli.main import main
from convirt.data.fields import parse_fields
from convirt.data.foreign import open_foreign_shards
from convirt.data.inputs import build_eval_batches
from convirt.data.shards import shard_urls
from convirt.embeddings import read_embeddings
from tests.conftest import TINY_MODEL, tiny_datamodule

# Unpickling this raises: a sample whose pyd field were decoded would be skipped as corrupt.
PICKLE = b"\x80\x04K"


def convirt_samples(shards, split):
    """The raw samples (bytes) of a split of a convirt shard folder, in order."""
    return [dict(s) for s in wds.WebDataset(shard_urls(shards, split), shardshuffle=False, empty_check=False)]


def as_rgb_png(jpeg: bytes) -> bytes:
    """The grey JPEG's decoded pixels as an RGB PNG (lossless: grey again when convirt decodes it)."""
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("L").convert("RGB").save(out, format="PNG")
    return out.getvalue()


def write_foreign(folder, samples, names=("00000.tar", "00001.tar"), image="jpg", text="txt", labels=True):
    """img2dataset-like tars: image, text and a json of caption, url, key, status (and labels, ';'-joined)."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(samples) // len(names))
    for number, name in enumerate(names):
        with wds.TarWriter(str(folder / name)) as sink:
            for i, sample in enumerate(samples[number * per : (number + 1) * per]):
                meta = json.loads(sample["json"])
                record = {
                    "caption": sample["txt"].decode(),
                    "url": f"https://example.org/{i}.jpg",
                    "key": f"{number:05d}{i:04d}",
                    "status": "success",
                    **({"labels": ";".join(meta["labels"])} if labels else {}),
                }
                pixels = as_rgb_png(sample["jpg"]) if image == "png" else sample["jpg"]
                sink.write(
                    {"__key__": sample["__key__"], image: pixels, text: sample["txt"], "json": record, "pyd": PICKLE}
                )
    return folder


@pytest.fixture(scope="module")
def test_samples(phantom_shards):
    return convirt_samples(phantom_shards, "test")


PREPROCESS = {"size": 32, "interpolation": "bilinear", "resize_mode": "shortest", "mean": [0.5] * 3, "std": [0.5] * 3}


def _batches(data, **options):
    batches = list(build_eval_batches(data, PREPROCESS, None, 16, **options))
    return {
        "key": [k for b in batches for k in b["key"]],
        "image": torch.cat([b["image"] for b in batches]),
        "text": [t for b in batches for t in b["raw_text"]],
        "labels": [m["labels"] for b in batches for m in b["meta"]],
        "skipped": sum(b["skipped"] for b in batches),
        "meta": batches[0]["meta"][0],
    }


def test_foreign_shards_give_the_batches_of_the_same_images_in_a_convirt_folder(phantom_shards, test_samples, tmp_path):
    own = _batches(phantom_shards, split="test")
    plain = write_foreign(tmp_path / "img2dataset", test_samples)
    # Color PNGs and captions, the fields named; the split asked is read as all (the tars name none).
    named = write_foreign(tmp_path / "png", test_samples, ("a.tar",), image="png", text="caption")
    for folder, fields in ((plain, None), (named, parse_fields(["image=png", "text=caption"]))):
        found = _batches(folder, split="test", fields=fields)
        assert found["key"] == own["key"] and found["skipped"] == 0  # no pyd field was unpickled
        assert torch.equal(found["image"], own["image"])
        assert found["labels"] == own["labels"] and found["text"] == own["text"]
        assert "url" in found["meta"] and "key" not in found["meta"]  # the json's key is not the sample's
    # A pipe: pattern (as for shards in an object store: `pipe:aws s3 cp ... -`) reads the same samples.
    piped = _batches(f"pipe:cat {plain}/{{00000..00001}}.tar", split="test")
    assert piped["key"] == own["key"] and torch.equal(piped["image"], own["image"]) and piped["skipped"] == 0
    # Unnamed, the first sample's png is found among the defaults (jpg, jpeg, png, webp): the first present wins.
    assert open_foreign_shards(named).fields.image[0] == "png"
    with pytest.raises(ValueError, match="has no webp field for image .*caption, json, png, pyd"):
        open_foreign_shards(named, parse_fields(["image=webp"]))


def _tiny(folder, names, fields=("jpg", "txt", "json"), per=3):
    folder.mkdir(parents=True)
    for name in names:
        with wds.TarWriter(str(folder / name)) as sink:
            for i in range(per):
                sink.write({"__key__": f"{name[:-4]}-{i}", **{f: b"{}" for f in fields}})
    return folder


def test_what_is_inferred_is_said_in_one_line(tmp_path):
    plain = open_foreign_shards(_tiny(tmp_path / "plain", ["00000.tar", "00001.tar"]))
    line = plain.describe("test")
    assert "\n" not in line and line.startswith("shards without a manifest: 2 tars in a folder")
    assert "images from .jpg, texts from .txt, metadata from .json" in line and "no labels in the metadata" in line
    assert "splits: none in the tar names, all 2 read as one ('test' asked, read as all)" in line
    assert plain.urls("test") == plain.urls("train") == list(plain.tars) and plain.count() == 6

    split = open_foreign_shards(_tiny(tmp_path / "split", ["train-0.tar", "train-1.tar", "val-0.tar"]))
    assert "splits by tar name: train 2 tars, val 1 tars, test 0 tars; reading val" in split.describe("val")
    assert split.count("train") == 6 and [t.rsplit("/", 1)[-1] for t in split.urls("val")] == ["val-0.tar"]
    with pytest.raises(ValueError, match="no test shards in .*named by split"):
        split.urls("test")
    with pytest.raises(ValueError, match="mixes tars named by split .* with others \\(extra.tar\\)"):
        open_foreign_shards(_tiny(tmp_path / "mixed", ["train-0.tar", "extra.tar"]))

    images_only = open_foreign_shards(_tiny(tmp_path / "cls", ["00000.tar"], fields=("webp", "cls")))
    assert "images from .webp, no texts, no metadata" in images_only.describe()
    with pytest.raises(ValueError, match="training needs the text field, and the first sample .* has cls, webp"):
        images_only.require("text", "training")
    pattern = open_foreign_shards(str(tmp_path / "split" / "train-{0..1}.tar"))
    assert "2 tars in a pattern or URL" in pattern.describe() and len(pattern.urls("test")) == 2
    with pytest.raises(ValueError, match="pattern or URL: its samples are not counted"):
        pattern.count()
    remote = open_foreign_shards("s3://bucket/shard-{0..3}.tar")
    assert "first of .jpg/.jpeg/.png/.webp; text: first of .txt/.caption/.text" in remote.describe()
    with pytest.raises(ValueError, match="unknown field role 'label'; known: image, text, meta"):
        parse_fields(["label=cls"])


def test_zero_shot_refuses_samples_without_labels_naming_what_is_missing():
    from convirt.zeroshot.evaluate import aligned_labels

    with pytest.raises(ValueError, match="zero-shot evaluation needs labels, and no sample's metadata has a 'labels'"):
        aligned_labels([{"caption": "clear lungs"}], ["Edema"], None)


@pytest.mark.slow
def test_embed_gives_the_vectors_of_the_convirt_folder_and_says_what_it_inferred(
    phantom_shards, test_samples, tiny_checkpoint, tmp_path, capsys
):
    folder = write_foreign(tmp_path / "shards", test_samples, ("train-0.tar", "test-0.tar", "test-1.tar"))
    common = ["embed", "--model", str(tiny_checkpoint), "--batch-size", "16", "--output"]
    assert main([*common, str(tmp_path / "own"), "--data", str(phantom_shards)]) == 0
    assert main([*common, str(tmp_path / "foreign"), "--data", str(folder)]) == 0  # --split test: the test- tars
    said = capsys.readouterr().err
    assert "convirt: shards without a manifest: 3 tars in a folder; images from .jpg, texts from .txt" in said
    assert "labels from the metadata's 'labels'; splits by tar name: train 1 tars, val 0 tars, test 2 tars" in said
    own, foreign = (read_embeddings(tmp_path / name) for name in ("own", "foreign"))
    train = {s["__key__"] for s in test_samples[: -(-len(test_samples) // 3)]}  # what train-0.tar holds
    kept = [i for i, row in enumerate(own[1]) if row["key"] not in train]
    assert [row["key"] for row in foreign[1]] == [own[1][i]["key"] for i in kept]
    assert np.allclose(foreign[0], own[0][kept], atol=1e-6)
    # A pattern of png + caption tars, the fields named, reads the same images (its split asked is ignored).
    named = write_foreign(tmp_path / "png", test_samples, ("p-0.tar", "p-1.tar"), image="png", text="caption")
    pattern = str(named / "p-{0..1}.tar")
    assert (
        main([*common, str(tmp_path / "png-emb"), "--data", pattern, "--field", "image=png", "--field", "text=caption"])
        == 0
    )
    assert "2 tars in a pattern or URL; images from .png, texts from .caption" in capsys.readouterr().err
    assert np.allclose(read_embeddings(tmp_path / "png-emb")[0], own[0], atol=1e-6)
    # Zero-shot evaluation of shards whose json has no labels is refused in one line naming what is missing.
    unlabelled = write_foreign(tmp_path / "unlabelled", test_samples, labels=False)
    zeroshot = [
        "zeroshot",
        "--model",
        str(tiny_checkpoint),
        "--data",
        str(unlabelled),
        "--output",
        str(tmp_path / "zs"),
    ]
    assert main(zeroshot) == 2
    assert "zero-shot evaluation needs labels, and no sample's metadata has a 'labels' field" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_trains_on_foreign_shards_split_by_tar_name(phantom_shards, tiny_text_model, tmp_path, monkeypatch):
    # `convirt fit` itself, the fields named in the config (data.fields) as a user would.
    import convirt.training.datamodule as datamodule

    said_lines: list[str] = []  # what the data module says (its stream handlers vary with the tests run before)
    say = datamodule.rank_zero_info
    monkeypatch.setattr(
        datamodule, "rank_zero_info", lambda line, *a, **k: said_lines.append(line) or say(line, *a, **k)
    )
    train, val = convirt_samples(phantom_shards, "train"), convirt_samples(phantom_shards, "val")
    folder = write_foreign(tmp_path / "shards", train, ("train-0.tar", "train-1.tar"), image="png", text="caption")
    write_foreign(folder, val, ("val-0.tar",), image="png", text="caption")
    config = tmp_path / "fit.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"model_name": TINY_MODEL, "pretrained": False, "text_model_path": tiny_text_model},
                "data": {"shards": str(folder), "fields": {"image": "png", "text": "caption"}, "batch_size": 8},
                "trainer": {"max_steps": 2, "limit_val_batches": 1, "val_check_interval": 2, "precision": "32-true"},
            }
        )
    )
    quiet = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0"]
    run = ["fit", "--config", str(config), *quiet, "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main([*run, "--trainer.accelerator", "cpu", "--model.warmup_steps", "1"]) == 0
    (checkpoint,) = (tmp_path / "run").rglob("*.ckpt")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    said = f"splits by tar name: train 2 tars, val 1 tars, test 0 tars; reading train; {len(train)} samples counted"
    assert any(said in line for line in said_lines), said_lines
    data = tiny_datamodule(folder, tiny_text_model, fields={"image": "png", "text": "caption"})
    data.setup("test")
    with pytest.raises(ValueError, match="no test shards in .*named by split"):
        data.test_dataloader()


@pytest.mark.slow
def test_a_bench_suite_evaluates_foreign_shards_and_skips_label_protocols_without_labels(
    phantom_shards, test_samples, tiny_checkpoint, tmp_path
):
    import yaml

    from convirt.bench.runner import run_bench
    from convirt.bench.suite import load_suite
    from convirt.embeddings.run import embed_to_folder

    protocols = {"zeroshot": {}, "knn": {"k": 5}, "image_text": {}}
    write_foreign(tmp_path / "labelled", test_samples, image="png", text="caption")
    write_foreign(tmp_path / "unlabelled", test_samples, labels=False)
    tasks = [
        {"name": "own", "data": str(phantom_shards), "descriptors": "phantom", "protocols": protocols},
        {
            "name": "foreign",
            "data": "labelled",
            "fields": {"image": "png"},
            "descriptors": "phantom",
            "protocols": protocols,
        },
        {"name": "no-labels", "data": "unlabelled/0000{0..1}.tar", "descriptors": "phantom", "protocols": protocols},
    ]
    path = tmp_path / "foreign.yaml"
    path.write_text(yaml.safe_dump({"name": "foreign", "tasks": tasks}))
    result = run_bench(
        load_suite(path, tmp_path),
        [str(tiny_checkpoint)],
        tmp_path / "bench",
        lambda *a, **k: embed_to_folder(*a, **{**k, "progress": False}),
        bootstrap=20,
    )
    values = {(r["task"], r["protocol"], r["metric"]): r["value"] for r in result.rows}
    for (task, protocol, metric), value in values.items():
        if task == "own":
            assert values["foreign", protocol, metric] == pytest.approx(value, abs=1e-6)
    assert {p for t, p, _ in values if t == "no-labels"} == {"image_text"}
    reasons = {protocol: reason for _, task, protocol, reason in result.skipped if task == "no-labels"}
    assert set(reasons) == {"zeroshot", "knn"} and "no sample's metadata has a 'labels' field" in reasons["knn"]


def test_a_corrupt_metadata_member_is_skipped_with_its_key_field_and_reason(test_samples, tmp_path, caplog):
    import logging

    folder = write_foreign(tmp_path / "bad", test_samples[:3], ("00000.tar",))
    with wds.TarWriter(str(folder / "00001.tar")) as sink:  # json that does not parse
        sink.write({"__key__": "broken", "jpg": test_samples[0]["jpg"], "txt": b"report", "json": b"{bad json"})
    with caplog.at_level(logging.WARNING, logger="convirt.data.stream"):
        found = _batches(folder)
    assert found["skipped"] == 1 and len(found["key"]) == 3
    said = [r.getMessage() for r in caplog.records if "skipping a corrupt sample" in r.getMessage()]
    assert said == [
        "skipping a corrupt sample: sample 'broken', field 'json': JSONDecodeError: Expecting property "
        "name enclosed in double quotes: line 1 column 2 (char 1)"
    ]


def test_gzipped_tars_read_as_the_plain_ones(test_samples, tmp_path):
    import gzip
    import shutil

    plain = write_foreign(tmp_path / "plain", test_samples)
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for number, tar in enumerate(sorted(plain.glob("*.tar"))):
        name = tar.name.replace(".tar", ".tar.gz" if number == 0 else ".tgz")
        with open(tar, "rb") as source, gzip.open(zipped / name, "wb") as target:
            shutil.copyfileobj(source, target)
    shards = open_foreign_shards(zipped)
    assert [t.rsplit("/", 1)[-1] for t in shards.urls("test")] == ["00000.tar.gz", "00001.tgz"]
    assert shards.count() == len(test_samples)
    a, b = _batches(plain), _batches(zipped)
    assert a["key"] == b["key"] and torch.equal(a["image"], b["image"]) and a["text"] == b["text"]
