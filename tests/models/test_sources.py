"""`--model SOURCE`: every form of model a user holds loads and embeds as its own native loader does.

The tests make a tiny model in each format themselves (nothing is downloaded): a `convirt fit`
checkpoint, an open_clip folder, an OpenAI-format CLIP state dict (the format CheXzero releases),
a Hugging Face text model inside a model, a timm test model as a weights file and as a folder,
and the registry's pretrained towers.
"""

import json
import time

import open_clip
import pytest
import torch

from convirt._io import file_sha256
from convirt.cli.main import main
from convirt.data.transforms import image_side
from convirt.embeddings import load_embedding_folder
from convirt.models import load_checkpoint, model_fingerprint
from convirt.models.features import text_trunk_features
from convirt.models.pretrained import PretrainedUnavailableError
from convirt.models.sources import REGISTRY_SEED, load_model

TEXTS = ["There is cardiomegaly.", "No pleural effusion.", "normal chest"]

# An OpenAI-CLIP layout (open_clip's own ViT and text transformer, QuickGELU), small; widths of 64
# because the OpenAI state-dict reader infers one head per 64 channels.
_OPENAI_TINY = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}


def _images(size: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 3, size, size)


@pytest.fixture(scope="module")
def openai_state_dict(tmp_path_factory):
    """An OpenAI-format state dict file and the architecture name registered with open_clip."""
    folder = tmp_path_factory.mktemp("openai-arch")
    (folder / "convirt-test-openai-tiny.json").write_text(json.dumps(_OPENAI_TINY))
    open_clip.add_model_config(folder)
    torch.manual_seed(1)
    model = open_clip.create_model("convirt-test-openai-tiny")
    path = folder / "clip_weights.pt"
    torch.save(model.state_dict(), path)
    return "convirt-test-openai-tiny", path


def test_a_fit_checkpoint_loads_as_load_checkpoint_does(tiny_checkpoint):
    loaded, native = load_model(tiny_checkpoint), load_checkpoint(tiny_checkpoint)
    images = _images(64)
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(images), native.model.encode_image(images))
    fingerprint = model_fingerprint(loaded)
    assert fingerprint["source"] == str(tiny_checkpoint)
    assert fingerprint["checkpoint_sha256"] == file_sha256(tiny_checkpoint) and fingerprint["dim"] == loaded.embed_dim


def test_an_open_clip_folder_loads_as_open_clip_loads_it(tiny_checkpoint, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--model", str(tiny_checkpoint), "--output", str(out)]) == 0
    native, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    native.eval()
    images = _images(64)
    for source in (str(out), f"local-dir:{out}"):
        loaded = load_model(source)
        with torch.no_grad():
            assert torch.allclose(loaded.model.encode_image(images), native.encode_image(images), atol=1e-6)
            tokens = loaded.tokenizer(TEXTS)
            assert torch.allclose(loaded.model.encode_text(tokens), native.encode_text(tokens), atol=1e-6)
        assert loaded.preprocess_cfg["size"] == open_clip.get_model_preprocess_cfg(native)["size"]
        assert model_fingerprint(loaded)["checkpoint_sha256"] == file_sha256(out / "open_clip_model.safetensors")
    # Its Hugging Face text trunk is the tiny BERT as transformers itself runs it, under the config's mean pooling.
    from transformers import AutoConfig, AutoModel

    bert = AutoModel.from_config(AutoConfig.from_pretrained(out), add_pooling_layer=False).eval()
    prefix = "text.transformer."
    bert.load_state_dict({k[len(prefix) :]: v for k, v in loaded.model.state_dict().items() if k.startswith(prefix)})
    tokens = loaded.tokenizer(TEXTS)
    mask = (tokens != bert.config.pad_token_id).long()
    with torch.no_grad():
        hidden = bert(input_ids=tokens, attention_mask=mask).last_hidden_state
        ours = text_trunk_features(loaded.model, tokens)
    assert torch.allclose(ours, (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), atol=1e-5)


def test_an_openai_format_state_dict_loads_as_the_openai_reader_builds_it(openai_state_dict):
    arch, path = openai_state_dict
    loaded = load_model(f"open_clip:{arch}@{path}")
    # The native reader of OpenAI-format weights infers the architecture from the state dict alone
    # (and casts to float16, as OpenAI's release did: the float32 weights are loaded again to compare).
    weights = torch.load(path, weights_only=True)
    native = open_clip.model.build_model_from_openai_state_dict(dict(weights)).float()
    native.load_state_dict(weights)
    native.eval()
    images = _images(32)
    tokens = open_clip.get_tokenizer(arch)(TEXTS)
    assert torch.equal(loaded.tokenizer(TEXTS), tokens)
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_image(images), native.encode_image(images), atol=1e-5)
        assert torch.allclose(loaded.model.encode_text(tokens), native.encode_text(tokens), atol=1e-5)
    assert loaded.embed_dim == 16 and image_side(loaded.preprocess_cfg) == 32
    assert model_fingerprint(loaded)["checkpoint_sha256"] == file_sha256(path)


def test_a_source_can_override_its_preprocessing_as_chexzero_needs(openai_state_dict):
    from convirt.bench.cache import model_key

    arch, path = openai_state_dict
    plain = load_model(f"open_clip:{arch}@{path}")
    # CheXzero normalised with its own statistics (101.48 / 83.44 on the 0-255 scale), not OpenAI's.
    source = f"open_clip:{arch}@{path}?mean=0.398,0.398,0.398&std=0.327,0.327,0.327"
    chexzero = load_model(source)
    assert chexzero.preprocess_cfg["mean"] == (0.398,) * 3 and chexzero.preprocess_cfg["std"] == (0.327,) * 3
    assert plain.preprocess_cfg["mean"] != chexzero.preprocess_cfg["mean"]
    assert chexzero.source == source and model_key(chexzero) != model_key(plain)  # embeddings cached apart
    with pytest.raises(ValueError, match="unknown preprocessing 'gamma'"):
        load_model(f"open_clip:{arch}@{path}?gamma=2")
    with pytest.raises(ValueError, match="mean takes 3 numbers"):
        load_model(f"open_clip:{arch}@{path}?mean=0.5")


def test_a_timm_model_loads_as_an_image_only_encoder(tmp_path, phantom_shards, capsys):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    native = timm.create_model("test_vit", pretrained=False, num_classes=0).eval()
    weights = tmp_path / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in native.state_dict().items()}, str(weights))
    folder = tmp_path / "timm-folder"
    timm.models.save_for_hf(native, str(folder))
    size = timm.data.resolve_data_config(model=native)["input_size"][-1]
    images = _images(size)
    for source in (f"timm:test_vit@{weights}", str(folder)):
        loaded = load_model(source)
        assert loaded.tokenizer is None and not loaded.has_text and loaded.embed_dim == native.num_features
        with torch.no_grad():
            assert torch.allclose(loaded.model.encode_image(images), native(images), atol=1e-6)
        assert loaded.preprocess_cfg["size"] == size
    # It embeds images through the command; zero-shot and text embedding are refused by name.
    out = tmp_path / "emb"
    assert (
        main(["embed", "--model", f"timm:test_vit@{weights}", "--data", str(phantom_shards), "--output", str(out)]) == 0
    )
    embedded = load_embedding_folder(out)
    assert embedded.info["model_name"] == "timm:test_vit" and embedded.vectors.shape[1] == native.num_features
    capsys.readouterr()
    zeroshot = ["zeroshot", "--model", f"timm:test_vit@{weights}", "--descriptors", "phantom"]
    assert main([*zeroshot, "--data", str(phantom_shards), "--output", str(tmp_path / "zs")]) != 0
    error = capsys.readouterr().err
    assert "zero-shot diagnosis needs a text tower" in error and "image-only encoder" in error
    assert main(["embed", "--model", str(folder), "--data", str(phantom_shards), "--texts", "--output", str(out)]) != 0
    assert "image-only encoder" in capsys.readouterr().err


def test_a_registry_name_loads_its_pretrained_towers_untrained():
    from convirt.models import create_model

    loaded = load_model("demo-effnet-minilm")
    torch.manual_seed(REGISTRY_SEED)  # the new projection heads: the same on every load of the name
    native = create_model("demo-effnet-minilm", pretrained=True).eval()
    torch.manual_seed(123)
    assert torch.equal(load_model("demo-effnet-minilm").model.visual.head.proj.weight, native.visual.head.proj.weight)
    images = _images(loaded.preprocess_cfg["size"])
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(images), native.encode_image(images))
    fingerprint = model_fingerprint(loaded)
    assert fingerprint["source"] == "demo-effnet-minilm" and fingerprint["checkpoint_sha256"] is None


def test_a_hub_source_offline_fails_at_once_naming_a_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailableError) as error:
        load_model("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    assert time.perf_counter() - start < 30
    assert "huggingface-cli download microsoft/BiomedCLIP" in str(error.value) and "local-dir:DIR" in str(error.value)
    with pytest.raises(PretrainedUnavailableError, match=r"open_clip:ViT-B-32@/path/weights.pt"):
        load_model("open_clip:ViT-B-32@openai")
    with pytest.raises(PretrainedUnavailableError, match="timm:NAME@/path"):
        load_model("timm:resnet18")


def test_bad_sources_say_what_a_source_is(tmp_path, openai_state_dict):
    with pytest.raises(ValueError, match="unknown model source 'chexzero'.*open_clip:ARCH@"):
        load_model("chexzero")
    with pytest.raises(FileNotFoundError, match="model source not found"):
        load_model(str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="not a model folder"):
        load_model(str(tmp_path))
    # A bare state dict passed as a file: the message names how to give its architecture.
    with pytest.raises(ValueError, match=r"open_clip:ARCH@.*clip_weights\.pt"):
        load_model(str(openai_state_dict[1]))
    with pytest.raises(ValueError, match="unknown timm model"):
        load_model("timm:no_such_net")
