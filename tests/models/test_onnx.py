"""`convirt export --format onnx` and the onnxruntime runtime: the same vectors as PyTorch, one-line refusals."""

import ast
import json
from pathlib import Path

import pytest
import torch

from convirt.cli.main import main
from convirt.data.inputs import build_eval_batches
from convirt.embeddings.encode import Encoder
from convirt.models.checkpoint import LoadedModel
from convirt.models.factory import create_model, embed_dim_of
from convirt.models.onnx_export import MIN_COSINE, OPSET, OnnxMismatchError, check_against_torch, export_onnx
from convirt.models.onnx_runtime import load_onnx_model
from convirt.models.sources import load_model


def least_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).min())


def assert_runtimes_agree(torch_model, onnx_model, shards, split="train"):
    """On batches of 1 and 7 read from shards: the unnormalised features of images (and reports, for a dual
    encoder), and the vectors of the one embedding path, of onnxruntime within MIN_COSINE of PyTorch's."""
    modalities = ("image", "text") if torch_model.has_text else ("image",)
    assert onnx_model.has_text == torch_model.has_text
    tokenizer = torch_model.tokenizer
    if tokenizer is not None:
        assert torch.equal(onnx_model.tokenizer(["clear lungs."]), tokenizer(["clear lungs."]))
    pad = tokenizer.tokenizer.pad_token_id if tokenizer is not None else None
    for size in (1, 7):
        batches = build_eval_batches(str(shards), torch_model.preprocess_cfg, tokenizer, size, split=split)
        batch = next(iter(batches))
        assert len(batch["key"]) == size
        with torch.no_grad():
            for modality in modalities:
                encode = "encode_image" if modality == "image" else "encode_text"
                unnormalised = getattr(onnx_model.model, encode)(batch[modality])
                expected = getattr(torch_model.model, encode)(batch[modality])
                assert least_cosine(unnormalised, expected) >= MIN_COSINE
                assert torch.allclose(unnormalised.norm(dim=-1), expected.norm(dim=-1), rtol=1e-3)  # not normalised
        # The one embedding path (reports trimmed of their shared padding) over either runtime.
        for modality in modalities:
            got = Encoder(onnx_model.model, pad_id=pad).batch(batch, modality)
            want = Encoder(torch_model.model, pad_id=pad).batch(batch, modality)
            assert least_cosine(torch.from_numpy(got), torch.from_numpy(want)) >= MIN_COSINE


def test_export_writes_graphs_tokenizer_preprocessing_and_provenance(onnx_export, tiny_checkpoint):
    folder, printed = onnx_export
    names = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert {"image.onnx", "text.onnx", "onnx.json", "convirt.json", "tokenizer/tokenizer_config.json"} <= names
    meta = json.loads((folder / "onnx.json").read_text())
    torch_model = load_model(str(tiny_checkpoint))
    assert meta["opset"] == OPSET and f"opset {OPSET}" in printed
    assert meta["preprocess_cfg"] == {**torch_model.preprocess_cfg}
    assert set(meta["preprocess_cfg"]) >= {"size", "mean", "std", "interpolation", "resize_mode"}
    assert meta["tokenizer"]["kind"] == "hf" and meta["tokenizer"]["context_length"] == 32
    assert min(meta["check"]["least_cosine"].values()) >= MIN_COSINE
    provenance = json.loads((folder / "convirt.json").read_text())
    assert provenance["model_name"] == "test-tiny" and len(provenance["checkpoint_sha256"]) == 64
    import onnx

    for name, dims in (("image.onnx", ["batch", 3, 64, 64]), ("text.onnx", ["batch", "length"])):
        graph = onnx.load(str(folder / name), load_external_data=False)
        assert {entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")} == {OPSET}
        shape = graph.graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in shape][1:] == dims[1:] and shape[0].dim_param  # dynamic batch


def test_onnxruntime_gives_pytorchs_vectors_on_shard_images_and_reports(onnx_export, tiny_checkpoint, phantom_shards):
    assert_runtimes_agree(load_model(str(tiny_checkpoint)), load_onnx_model(onnx_export[0]), phantom_shards)


def test_a_vit_image_tower_exports_alone_with_pytorchs_vectors(tiny_text_model, phantom_shards, tmp_path):
    """test-tiny-vit's image tower (its text tower is test-tiny's, exported above): an image-only export."""
    name = "test-tiny-vit"
    model = create_model(name, pretrained=False, text_model_path=tiny_text_model).eval()
    loaded = LoadedModel(model, None, name, tiny_text_model, "", embed_dim_of(name))
    made = export_onnx(loaded, tmp_path / "vit")
    assert set(made.least_cosine) == {"image"} and made.least_cosine["image"] >= MIN_COSINE
    assert not (made.folder / "text.onnx").exists()
    exported = load_onnx_model(made.folder)
    assert exported.tokenizer is None and not exported.has_text
    assert_runtimes_agree(loaded, exported, phantom_shards)


def test_the_export_check_refuses_graphs_that_disagree(onnx_export, tiny_checkpoint):
    folder, _ = onnx_export
    torch_model, runtime = load_model(str(tiny_checkpoint)), load_onnx_model(folder).model
    assert min(check_against_torch(torch_model, runtime).values()) >= MIN_COSINE
    weight = torch_model.model.visual.head.proj.weight
    with torch.no_grad():  # a near miss: vectors at cosine ~0.9996 to the graph's, which a 0.999 check would pass
        weight.add_(0.03 * weight.abs().mean() * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(OnnxMismatchError, match=r"the ONNX image tower disagrees with PyTorch \(least cosine"):
        check_against_torch(torch_model, runtime)


def test_embed_with_the_onnx_runtime_writes_torchs_vectors(onnx_export, tiny_checkpoint, phantom_shards, tmp_path):
    from convirt.embeddings import read_embeddings

    folder, _ = onnx_export
    base = ["embed", "--data", str(phantom_shards), "--split", "test", "--batch-size", "7"]
    assert main([*base, "--model", str(tiny_checkpoint), "--output", str(tmp_path / "torch")]) == 0
    assert main([*base, "--runtime", "onnx", "--model", str(folder), "--output", str(tmp_path / "onnx")]) == 0
    (want, want_rows), (got, got_rows) = read_embeddings(tmp_path / "torch"), read_embeddings(tmp_path / "onnx")
    assert [r["key"] for r in got_rows] == [r["key"] for r in want_rows]
    assert least_cosine(torch.from_numpy(got), torch.from_numpy(want)) >= MIN_COSINE
    info = json.loads((tmp_path / "onnx" / "info.json").read_text())
    # The same embedding space: an index of torch vectors takes queries of either runtime.
    assert info["checkpoint_sha256"] == json.loads((folder / "convirt.json").read_text())["checkpoint_sha256"]


def test_runtime_mixups_and_a_missing_onnxruntime_are_refused_in_one_line(
    onnx_export, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    folder, _ = onnx_export
    base = ["embed", "--data", str(tmp_path), "--output", str(tmp_path / "out")]
    assert main([*base, "--model", str(folder)]) == 2
    assert "is an ONNX export: run it with --runtime onnx" in capsys.readouterr().err
    assert main([*base, "--runtime", "onnx", "--model", str(tiny_checkpoint)]) == 2
    assert "not an ONNX export folder (no image.onnx): write one with `convirt export --format onnx" in (
        capsys.readouterr().err
    )
    assert main([*base, "--runtime", "onnx", "--model", str(folder), "--devices", "2"]) == 2
    assert "--runtime onnx embeds in this process" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if not installed
    assert main([*base, "--runtime", "onnx", "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime is not installed: pip install 'convirt[onnx]'" in err and len(err.strip().splitlines()) == 1


def test_no_module_imports_onnx_when_convirt_is_imported():
    """onnx, onnxscript and onnxruntime are optional (`convirt[onnx]`): imported inside functions only."""
    package = Path(__file__).resolve().parents[2] / "convirt"
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("onnx", "onnxruntime", "onnxscript") for n in names), path


DEMO = Path(__file__).resolve().parents[2] / "artifacts" / "demo"


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO / "checkpoints" / "last.ckpt").is_file(), reason="no demo checkpoint: run `make demo`")
def test_the_demo_model_exports_with_pytorchs_vectors_on_its_shards(tmp_path):
    folder = tmp_path / "demo-onnx"
    assert (
        main(
            ["export", "--format", "onnx", "--model", str(DEMO / "checkpoints" / "last.ckpt"), "--output", str(folder)]
        )
        == 0
    )
    assert_runtimes_agree(
        load_model(str(DEMO / "checkpoints" / "last.ckpt")), load_onnx_model(folder), DEMO / "shards", "test"
    )


@pytest.mark.slow
def test_an_int8_image_tower_fingerprints_apart_and_is_refused_too_far_from_pytorch(tiny_checkpoint, tmp_path):
    folder = tmp_path / "int8"
    assert (
        main(
            [
                "export",
                "--format",
                "onnx",
                "--checkpoint",
                str(tiny_checkpoint),
                "--quantize",
                "int8",
                "--output",
                str(folder),
            ]
        )
        == 0
    )
    meta, provenance = (json.loads((folder / name).read_text()) for name in ("onnx.json", "convirt.json"))
    assert meta["quantized"]["image"].startswith("int8") and 0.99 <= meta["quantized"]["least_cosine"] < MIN_COSINE
    quantized = load_onnx_model(folder)
    # Vectors of its own: a fingerprint of its own, so that an index of the float model's vectors refuses it.
    assert quantized.weights_sha256 == meta["weights_sha256"] != provenance["checkpoint_sha256"]
    assert quantized.model.encode_image(torch.zeros(2, 3, 64, 64)).shape == (2, 32)
    with pytest.raises(OnnxMismatchError, match="int8 moves this image tower's vectors too far"):
        export_onnx(
            load_model(str(tiny_checkpoint)), tmp_path / "refused", quantize="int8", quantized_min_cosine=0.99999
        )
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_an_open_clip_text_tower_with_its_bpe_tokenizer_exports(tmp_path):
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    torch.manual_seed(0)
    vision = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text).eval()
    preprocess = {
        "size": 32,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bilinear",
        "resize_mode": "shortest",
    }
    loaded = LoadedModel(model, SimpleTokenizer(context_length=16), "tiny-clip", None, "", 32, preprocess=preprocess)
    made = export_onnx(loaded, tmp_path / "clip")
    assert json.loads((made.folder / "onnx.json").read_text())["tokenizer"] == {
        "kind": "open_clip_simple",
        "context_length": 16,
        "clean": "lower",
    }
    again = load_onnx_model(made.folder)
    texts = ["a small left pleural effusion", "no acute findings"]
    assert torch.equal(again.tokenizer(texts), loaded.tokenizer(texts))
    with torch.no_grad():
        assert (
            least_cosine(again.model.encode_text(again.tokenizer(texts)), model.encode_text(loaded.tokenizer(texts)))
            >= MIN_COSINE
        )
