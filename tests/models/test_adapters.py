import io
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
import yaml

from convirt.models import create_model
from convirt.models.adapters import (
    KINDS,
    AdapterConfig,
    TowerAdapter,
    adapter_state_dict,
    add_adapters,
    format_trainable,
    load_adapter_state_dict,
    merge_adapters,
    trainable_parameters,
)
from tests.conftest import TINY_MODEL

pytest.importorskip("peft")

# test-tiny: a timm EfficientNet and a BERT; test-tiny-vit: a timm ViT; open_clip: its own ViT and text transformer
IMAGE_SIZE = {TINY_MODEL: 64, "test-tiny-vit": 160, "open_clip": 32}
ADAPTER_PREFIXES = ("lora_", "hada_", "lokr_", "ia3_")


def _model(name, text_model, seed=0):
    import open_clip

    torch.manual_seed(seed)
    if name == "open_clip":
        vision = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16}
        text = {"context_length": 16, "vocab_size": 40, "width": 32, "heads": 2, "layers": 2}
        return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    return create_model(name, pretrained=False, text_model_path=text_model)


def _batch(name, seed=1):
    generator = torch.Generator().manual_seed(seed)
    size = IMAGE_SIZE[name]
    return torch.randn(3, 3, size, size, generator=generator), torch.randint(5, 30, (3, 16), generator=generator)


def _embed(model, images, texts):
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(texts, normalize=True)


def _is_adapter(key):
    return any(part.startswith(ADAPTER_PREFIXES) for part in key.split("."))


def _perturb_adapters(model):
    """Random adapter weights, so that the adapted model differs from its base (LoRA starts at zero)."""
    with torch.no_grad():
        for key, tensor in adapter_state_dict(model).items():
            if _is_adapter(key):
                tensor.add_(0.5 * torch.randn_like(tensor))


def _agree(embeddings, adapted, base):
    """Cosine >= 0.9999 with the adapted embeddings, and 100 times closer to them than the base's are."""
    for a, b, c in zip(embeddings, adapted, base):
        assert (a * b).sum(-1).min() >= 0.9999
        assert (a - b).norm() <= 0.01 * (b - c).norm()


def test_only_the_adapters_heads_and_logit_scale_train(tiny_text_model):
    model = add_adapters(_model(TINY_MODEL, tiny_text_model), AdapterConfig())
    trainable = {key for key, p in model.named_parameters() if p.requires_grad}
    heads = {key for key, _ in model.named_parameters() if key.startswith(("visual.head.", "text.proj."))}
    adapters = {key for key, _ in model.named_parameters() if _is_adapter(key)}
    assert any(".conv_pw." in key for key in adapters) and any(".query." in key for key in adapters)
    assert trainable == adapters | heads | {"logit_scale"}
    assert set(adapter_state_dict(model)) == trainable

    before = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    images, texts = _batch(TINY_MODEL)
    for _ in range(2):  # LoRA's A gets no gradient until B has left zero
        image, text = model.encode_image(images, normalize=True), model.encode_text(texts, normalize=True)
        logits = model.logit_scale.exp() * image @ text.T
        labels = torch.arange(len(logits))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    assert any("running_mean" in key for key in before)  # batch-norm statistics are base tensors too
    assert [key for key in before if key not in trainable and not torch.equal(before[key], after[key])] == []
    assert [key for key in trainable if torch.equal(before[key], after[key])] == []


def test_the_trainable_share_is_reported_per_tower(tiny_text_model):
    model = _model("test-tiny-vit", tiny_text_model)
    base = {key: p.numel() for key, p in model.named_parameters()}
    config = AdapterConfig(image=TowerAdapter(rank=4), text=None, train_heads=False, train_logit_scale=False)
    counts = trainable_parameters(add_adapters(model, config))
    adapters = {key: p.numel() for key, p in model.named_parameters() if _is_adapter(key)}
    assert adapters and all(key.startswith("visual.trunk.blocks.") for key in adapters)
    image_base = sum(n for key, n in base.items() if key.startswith("visual."))
    text_base = sum(n for key, n in base.items() if key.startswith("text."))
    assert counts["image"] == (sum(adapters.values()), image_base + sum(adapters.values()))
    assert counts["text"] == (text_base, text_base)  # a tower without an adapter is left as it was
    assert counts["other"] == (0, 1)
    # a rank-4 LoRA on a Linear(i, o) has 4 * (i + o) weights
    linears = [m for key, m in model.visual.trunk.named_modules() if key.endswith(("qkv", "attn.proj", "fc1", "fc2"))]
    assert sum(adapters.values()) == sum(4 * (m.in_features + m.out_features) for m in linears)
    assert format_trainable(counts).startswith(f"image {sum(adapters.values()):,} of ")


@pytest.mark.parametrize(
    "name,kind",
    [(TINY_MODEL, "lora"), ("test-tiny-vit", "lora"), ("open_clip", "lora")]
    + [pytest.param(TINY_MODEL, kind, marks=pytest.mark.slow) for kind in KINDS if kind != "lora"],
)
def test_merged_model_equals_the_adapted_one_with_the_base_keys(name, kind, tiny_text_model, tmp_path):
    from safetensors.torch import load_file, save_file

    model = _model(name, tiny_text_model)
    base_shapes = {key: tensor.shape for key, tensor in model.state_dict().items()}
    images, texts = _batch(name)
    base_embeddings = _embed(model.eval(), images, texts)
    add_adapters(model, AdapterConfig(image=TowerAdapter(kind=kind), text=TowerAdapter(kind=kind)))
    _perturb_adapters(model)
    adapted = _embed(model, images, texts)
    assert all((a - b).norm() > 1e-4 for a, b in zip(adapted, base_embeddings))  # the adapters do something

    merged = merge_adapters(model)
    assert merged is model and not any(_is_adapter(key) for key in merged.state_dict())
    assert {key: tensor.shape for key, tensor in merged.state_dict().items()} == base_shapes
    assert all(p.requires_grad for p in merged.parameters())
    _agree(_embed(merged, images, texts), adapted, base_embeddings)

    save_file({key: t.contiguous() for key, t in merged.state_dict().items()}, tmp_path / "merged.safetensors")
    fresh = _model(name, tiny_text_model, seed=5)
    fresh.load_state_dict(load_file(tmp_path / "merged.safetensors"), strict=True)
    _agree(_embed(fresh.eval(), images, texts), adapted, base_embeddings)


def test_adapter_state_dict_round_trips_and_is_strict(tiny_text_model):
    config = AdapterConfig(image=TowerAdapter(kind="dora", rank=4), text=TowerAdapter(rank=2, targets=["query"]))
    trained = add_adapters(_model(TINY_MODEL, tiny_text_model), config)
    _perturb_adapters(trained)
    buffer = io.BytesIO()
    torch.save(adapter_state_dict(trained), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert not any(".base_layer." in key for key in state) and len(state) < len(trained.state_dict()) / 2

    rebuilt = add_adapters(_model(TINY_MODEL, tiny_text_model, seed=1), AdapterConfig.from_dict(config.as_dict()))
    rebuilt.load_state_dict(trained.state_dict())  # stands in for the same pretrained base
    with torch.no_grad():
        for tensor in adapter_state_dict(rebuilt).values():
            tensor.zero_()
    load_adapter_state_dict(rebuilt, state)
    assert all(torch.equal(tensor, state[key]) for key, tensor in adapter_state_dict(rebuilt).items())
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), trained.state_dict().values()))

    key = next(iter(state))
    with pytest.raises(ValueError, match=r"missing 1 \(" + key):
        load_adapter_state_dict(rebuilt, {k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match=r"unexpected 1 \(visual.extra\)"):
        load_adapter_state_dict(rebuilt, {**state, "visual.extra": torch.zeros(1)})
    other_rank = add_adapters(_model(TINY_MODEL, tiny_text_model), AdapterConfig(text=TowerAdapter(rank=2)))
    with pytest.raises(ValueError, match="other shape .*build the model with the AdapterConfig it was saved with"):
        load_adapter_state_dict(other_rank, state)


def test_config_round_trips_through_json_and_rejects_bad_values():
    config = AdapterConfig(image=TowerAdapter(kind="ia3", targets=["conv_pw"]), text=None, train_heads=False)
    assert AdapterConfig.from_dict(json.loads(json.dumps(config.as_dict()))) == config
    assert AdapterConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.as_dict()))) == config  # Lightning's hparams
    with pytest.raises(ValueError, match="adapter rank must be a positive integer, got 0"):
        TowerAdapter(rank=0)
    with pytest.raises(ValueError, match="unknown adapter kind 'lorra'; known: lora, dora, loha, lokr, ia3"):
        TowerAdapter(kind="lorra")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        TowerAdapter(dropout=1.0)
    with pytest.raises(ValueError, match="non-empty list of module-name suffixes"):
        TowerAdapter(targets="qkv")
    with pytest.raises(ValueError, match=r"unknown adapter config keys \['rank'\]"):
        AdapterConfig.from_dict({"rank": 4})


def test_targets_peft_cannot_adapt_well_are_rejected(tiny_text_model):
    import open_clip

    def error(model, **tower):
        with pytest.raises(ValueError) as caught:
            add_adapters(model, AdapterConfig(image=TowerAdapter(**tower), text=None))
        return str(caught.value)

    tiny = _model(TINY_MODEL, tiny_text_model)
    message = error(tiny, targets=["conv_pw", "qkv"])
    assert message.startswith("image adapter target 'qkv' matches no layer of the timm:EfficientNet tower; its layers:")
    assert "conv_pwl" in message and "\n" not in message
    assert "'bn1' matches bn1 (BatchNormAct2d), not a layer peft adapts" in error(tiny, targets=["bn1"])
    clip = _model("open_clip", tiny_text_model)
    for target in ("attn", "out_proj"):
        assert "part of an nn.MultiheadAttention" in error(clip, targets=[target])
    assert not any(_is_adapter(key) for key in clip.state_dict())  # nothing injected before the error
    resnet = open_clip.CLIP(16, {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32}, {"width": 8, "layers": 1})
    message = error(resnet)
    assert message.startswith("no default adapter targets for the image tower (open_clip:ModifiedResNet); known types:")
    assert "name its layers with targets=[...]" in message
    add_adapters(tiny, AdapterConfig(text=None))
    assert "already has adapters; merge_adapters(model) first" in error(tiny)


@pytest.mark.slow
def test_merged_weights_load_where_peft_is_missing(tiny_text_model, tmp_path):
    from safetensors.torch import save_file

    model = _model(TINY_MODEL, tiny_text_model).eval()
    images, texts = _batch(TINY_MODEL)
    base = _embed(model, images, texts)
    _perturb_adapters(add_adapters(model, AdapterConfig()))
    adapted = _embed(model, images, texts)
    save_file({k: t.contiguous() for k, t in merge_adapters(model).state_dict().items()}, tmp_path / "m.safetensors")
    torch.save({"images": images, "texts": texts}, tmp_path / "batch.pt")
    script = f"""
        import sys
        sys.modules["peft"] = None  # any import of peft now fails
        import torch
        from safetensors.torch import load_file
        from convirt.models import create_model
        from convirt.models.adapters import merge_adapters  # importable (and a no-op here) without peft
        model = create_model({TINY_MODEL!r}, pretrained=False, text_model_path={tiny_text_model!r}).eval()
        model.load_state_dict(load_file({str(tmp_path / "m.safetensors")!r}), strict=True)
        model = merge_adapters(model)
        batch = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True)
        with torch.no_grad():
            out = model.encode_image(batch["images"], normalize=True), model.encode_text(batch["texts"], normalize=True)
        torch.save(out, {str(tmp_path / "out.pt")!r})
        try:
            import peft  # noqa: F401
        except ImportError:
            print("peft unavailable")
    """
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "peft unavailable" in run.stdout
    _agree(torch.load(tmp_path / "out.pt", weights_only=True), adapted, base)
