"""The embedding precision policy: float32 on CPUs, a reduced precision only where shown to agree,
recorded with the vectors and checked wherever two sets of vectors meet."""

import json

import numpy as np
import pytest
import torch

import convirt.embeddings.encode as encode
from convirt._embedding_space import check_same_space
from convirt.embeddings.encode import Encoder
from convirt.embeddings.precision import EmbeddingPrecision, planned_precision
from convirt.embeddings.run import embed_to_folder

FLOAT32 = {"model_name": "m", "dim": 3, "precision": "float32", "device": "cpu", "precision_agreement": None}


class _Linear(torch.nn.Module):
    """A model whose bf16 rounding moves its vectors as much as ``noise`` says."""

    def __init__(self, noise: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(12, 3))
        self.noise = noise

    def encode_image(self, images, normalize=False):
        features = images.flatten(1)[:, :12] @ self.weight
        if torch.is_autocast_cpu_enabled():  # what reduced precision does to this model
            features = features + self.noise * torch.randn_like(features)
        return features


def _images(n=6):
    torch.manual_seed(1)
    return torch.randn(n, 3, 2, 2)


def test_cpus_embed_in_float32_whatever_their_bf16():
    plan = planned_precision("cpu")
    assert (plan.dtype, plan.device, plan.reduced) == ("float32", "cpu", False)
    encoder = Encoder(_Linear(noise=1.0))
    encoder.images(_images())
    assert encoder.precision("image").dtype == "float32"


@pytest.mark.parametrize("noise, kept", [(0.0, "bfloat16"), (1.0, "float32")])
def test_a_reduced_candidate_is_kept_only_where_the_first_batch_agrees(monkeypatch, noise, kept):
    # The candidate of a CUDA device, here on the CPU: the first batch is made both ways and compared.
    monkeypatch.setattr(
        encode, "planned_precision", lambda device, requested=None: EmbeddingPrecision("bfloat16", "cpu", None, "x")
    )
    model = _Linear(noise)
    encoder = Encoder(model)
    first = encoder.images(_images())
    made = encoder.precision("image")
    assert made.dtype == kept
    with torch.no_grad():
        full = torch.nn.functional.normalize(model.encode_image(_images()), dim=-1).numpy()
    if kept == "float32":
        assert made.agreement is None and "float32" in made.reason and np.allclose(first, full, atol=1e-6)
    else:
        assert made.agreement >= 0.999
    encoder.images(_images())  # later batches stay at the settled precision
    assert encoder.precision("image") == made


def test_the_ranks_of_a_run_decide_together(monkeypatch):
    monkeypatch.setattr(
        encode, "planned_precision", lambda device, requested=None: EmbeddingPrecision("bfloat16", "cpu", None, "x")
    )
    encoder = Encoder(_Linear(noise=0.0))
    encoder.combine_agreement = lambda value: min(value, 0.5)  # another rank's batch disagreed
    encoder.images(_images())
    assert encoder.precision("image").dtype == "float32"


def test_precisions_meet_only_where_shown_to_agree():
    check_same_space(FLOAT32, dict(FLOAT32))
    agreed = {**FLOAT32, "precision": "bfloat16", "device": "cuda", "precision_agreement": 0.9995}
    check_same_space(FLOAT32, agreed)  # a GPU's bf16 vectors that agreed with float32, queried on a CPU
    for unproven in (
        {**agreed, "precision_agreement": None},
        {**agreed, "precision_agreement": 0.95},
        {**FLOAT32, "precision": "bf16-mixed"},  # a folder made before agreement was measured
    ):
        with pytest.raises(ValueError, match=r"made at float32 on cpu; these are made at (bf16-mixed|bfloat16)"):
            check_same_space(FLOAT32, unproven)
    check_same_space({**FLOAT32, "precision": "bf16-mixed"}, {**FLOAT32, "precision": "bfloat16"})  # one precision
    check_same_space({"model_name": "m", "dim": 3}, agreed)  # made before the precision was recorded


def test_an_index_refuses_queries_of_an_unproven_precision(labels_csv, tiny_checkpoint, tmp_path, capsys):
    from convirt.cli.main import main

    assert (
        main(["embed", "--model", str(tiny_checkpoint), "--data", str(labels_csv), "--output", str(tmp_path / "e")])
        == 0
    )
    info_path = tmp_path / "e" / "info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "precision": "bf16-mixed", "device": "cpu"}))  # an older bf16 folder
    assert main(["index", "build", "--embeddings", str(tmp_path / "e"), "--output", str(tmp_path / "i")]) == 0
    image = next((tmp_path / "e").glob("*.jsonl")).read_text().splitlines()[0]
    path = json.loads(image)["path"]
    capsys.readouterr()
    assert (
        main(["index", "query", "--index", str(tmp_path / "i"), "--image", path, "--model", str(tiny_checkpoint)]) == 2
    )
    assert "not shown to agree" in capsys.readouterr().err
    # A resume of that folder at float32 is refused the same way, before it writes a vector.
    parts = sorted((tmp_path / "e").glob("part-*"))
    new = [{"image": _images(1), "key": ["new"], "meta": [{}]}]
    with pytest.raises(ValueError, match="not shown to agree"):
        embed_to_folder(
            _Linear(0.0), lambda done: new, tmp_path / "e", {"model_name": info["model_name"]}, progress=False
        )
    assert sorted((tmp_path / "e").glob("part-*")) == parts
    # With nothing left to embed, nothing is mixed: the folder is left as it is.
    embed_to_folder(_Linear(0.0), lambda done: [], tmp_path / "e", {"model_name": info["model_name"]}, progress=False)
    assert json.loads(info_path.read_text())["precision"] == "bf16-mixed"


def test_a_resume_records_every_precision_the_folder_holds(tmp_path, monkeypatch):
    # Vectors of a GPU's bf16 (shown to agree), resumed in float32 on a CPU: both recorded, the weaker kept.
    def batches(keys):
        return lambda done: [{"image": _images(len(keys)), "key": keys, "meta": [{}] * len(keys)}]

    monkeypatch.setattr(
        encode, "planned_precision", lambda device, requested=None: EmbeddingPrecision("bfloat16", "cuda", None, "x")
    )
    embed_to_folder(_Linear(0.0), batches(["a", "b"]), tmp_path / "f", {"model_name": "m"}, progress=False)
    made = json.loads((tmp_path / "f" / "info.json").read_text())
    assert made["precision"] == "bfloat16" and made["precision_agreement"] >= 0.999
    monkeypatch.undo()
    embed_to_folder(_Linear(0.0), batches(["c"]), tmp_path / "f", {"model_name": "m"}, progress=False)
    info = json.loads((tmp_path / "f" / "info.json").read_text())
    assert info["precision"] == "bfloat16" and info["precisions"] == ["bfloat16", "float32"]
    assert info["precision_agreement"] == made["precision_agreement"]
