"""One image, one vector: every command's embedding path, the service's and open_clip's own loading
of the export give the same vector (cosine >= 0.9999), so an index, its queries, the bench and the
exported model can be used together. Run natively and under the AVX2 cap
(``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``): batch sizes differ between paths on purpose,
so the check does not lean on a BLAS product's last bits."""

import csv
import itertools
import json

import numpy as np
import open_clip
import torch
from PIL import Image

from convirt.bench.cache import cached_embeddings
from convirt.bench.suite import Task
from convirt.cli.common import eval_batches
from convirt.cli.main import main
from convirt.data.inputs import read_image_rows
from convirt.embeddings import embed_batches, read_embeddings
from convirt.embeddings.run import embed_to_folder
from convirt.models.sources import load_model
from convirt.serve.service import CaseService

AGREE = 0.9999


def _unit(vectors):
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_every_path_embeds_an_image_to_the_same_vector(labels_csv, tiny_checkpoint, tmp_path, capsys):
    rows = read_image_rows(labels_csv)[:11]  # 11: no path's batches line up with another's
    table = tmp_path / "images.csv"
    with open(labels_csv, newline="") as handle:
        header, *lines = list(csv.reader(handle))
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *lines[: len(rows)]])
    keys = [row.key for row in rows]
    loaded = load_model(str(tiny_checkpoint))
    made: dict[str, np.ndarray] = {}

    def by_key(vectors, order):
        found = dict(zip(order, vectors))
        return np.stack([found[key] for key in keys])

    # `convirt embed` (the folder every index is built from), batches of 4.
    assert main(["embed", "--model", str(tiny_checkpoint), "--data", str(table), "--batch-size", "4",
                 "--output", str(tmp_path / "emb")]) == 0  # fmt: skip
    vectors, embedded_rows = read_embeddings(tmp_path / "emb")
    made["convirt embed"] = by_key(vectors, [row["key"] for row in embedded_rows])
    assert json.loads((tmp_path / "emb" / "info.json").read_text())["precision"] == "float32"
    # `convirt zeroshot` and `convirt probe` (embed_batches over the command's batches), batches of 3.
    embedded = embed_batches(loaded.model, eval_batches(loaded, str(table), "test", 3), progress=False)
    made["convirt zeroshot / probe"] = by_key(embedded.embeddings, embedded.keys)
    # `convirt bench` (its embedding cache), batches of 5.
    task = Task("one-path", table)
    quiet = lambda *a, **k: embed_to_folder(*a, **{**k, "progress": False})  # noqa: E731
    cached = cached_embeddings(loaded, task, "image", tmp_path / "cache", quiet, batch_size=5)
    made["convirt bench"] = by_key(cached.embeddings, cached.keys)
    # `convirt index query`: each image, alone, against an index of `convirt embed`'s vectors; its
    # own entry comes first with the cosine of the two paths as its score.
    assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--output", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    query_scores = []
    for row in rows[:4]:
        assert main(["index", "query", "--index", str(tmp_path / "index"), "--image", row.image_path,
                     "--model", str(tiny_checkpoint), "-k", "1", "--json"]) == 0  # fmt: skip
        (hit,) = json.loads(capsys.readouterr().out)
        assert hit["key"] == row.key
        query_scores.append(hit["score"])
    assert min(query_scores) >= AGREE
    # `convirt serve`: an uploaded image, decoded by PIL.
    service = CaseService(loaded, tmp_path / "index")
    made["convirt serve"] = np.stack([service.embed_image(Image.open(row.image_path)) for row in rows])
    # The export, loaded by open_clip itself with its own transforms, as a user of the folder would.
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path / "export")]) == 0
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'export'}")
    model.eval()
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(row.image_path)) for row in rows])
        made["open_clip (export)"] = model.encode_image(pixels, normalize=True).numpy()

    for (a, first), (b, second) in itertools.combinations(made.items(), 2):
        cosines = (_unit(first) * _unit(second)).sum(axis=1)
        assert cosines.min() >= AGREE, f"{a} vs {b}: least cosine {cosines.min():.6f}"
    # The check can fail: different images are told apart by far more than its tolerance.
    reference = _unit(made["convirt embed"])
    others = reference @ reference.T - 2 * np.eye(len(rows))
    assert others.max() < 1 - 10 * (1 - AGREE)
