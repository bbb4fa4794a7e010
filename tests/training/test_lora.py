"""`--model.adapter lora`: a run trains adapters (peft) on a fixed base and its checkpoints hold them.

The base is a `convirt fit` checkpoint (`--model.init`): only the adapters and heads change, the
trainable share is reported and recorded, checkpoints hold no base weights, a checkpoint of another
base is refused, the merged export loads in open_clip where peft is not installed and embeds as
the adapted model does, and a run killed mid-epoch resumes to the same adapter weights.
"""

import subprocess
import sys

import lightning as L
import pytest
import torch

from convirt.cli.main import main
from convirt.models import load_checkpoint
from convirt.models.adapters import adapter_state_dict, trainable_parameters
from convirt.training import ContrastiveModule
from tests.conftest import TINY_MODEL, quiet_trainer, tiny_datamodule


def _lora(checkpoint, text_model, **options):
    settings = {"learning_rate": 1e-2, "tower_learning_rate": 1e-2, "warmup_steps": 1, "adapter": "lora"}
    return ContrastiveModule(TINY_MODEL, text_model_path=text_model, init=str(checkpoint), **{**settings, **options})


@pytest.fixture(scope="module")
def lora_run(tiny_checkpoint, tiny_text_model, phantom_shards, tmp_path_factory):
    """Three LoRA steps from the tiny checkpoint; its last checkpoint and the module."""
    out = tmp_path_factory.mktemp("lora-run")
    L.seed_everything(0, verbose=False)
    module = _lora(tiny_checkpoint, tiny_text_model)
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(out), save_last=True, save_top_k=0)
    trainer = quiet_trainer(str(out), max_steps=3, limit_val_batches=0, enable_checkpointing=True, callbacks=[saver])
    trainer.fit(module, datamodule=tiny_datamodule(phantom_shards, tiny_text_model, init=str(tiny_checkpoint)))
    return out / "last.ckpt", module


def test_only_the_adapters_and_heads_train_and_the_share_is_reported(lora_run, tiny_checkpoint):
    checkpoint, module = lora_run
    base = load_checkpoint(tiny_checkpoint).model.state_dict()
    trained = load_checkpoint(checkpoint)
    assert trained.adapter["config"]["image"]["kind"] == "lora"
    state = trained.model.state_dict()
    kept = set(adapter_state_dict(trained.model))
    assert any("lora_A" in key for key in kept) and any(".head." in key or ".proj" in key for key in kept)
    for key, value in state.items():
        if key not in kept and "lora_" not in key:  # the base: exactly as the source had it
            assert torch.equal(value, base[key.replace(".base_layer", "")]), key
    assert all(state[key].abs().sum() > 0 for key in kept if "lora_B" in key)  # B starts at 0: it trained
    # The checkpoint holds the trained weights only, with the base's hash; its run records the share.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    buffers = state.keys() - {name for name, _ in trained.model.named_parameters()}
    assert {key.removeprefix("model.") for key in saved["state_dict"]} == kept | buffers  # no base weight
    assert not any("base_layer.weight" in key for key in saved["state_dict"])
    assert len(saved["convirt_adapter"]["base_sha256"]) == 64
    counts = {tower: tuple(value) for tower, value in saved["convirt_run"]["parameters"].items()}
    assert counts == trainable_parameters(module.model)
    assert 0 < counts["image"][0] < counts["image"][1] and 0 < counts["text"][0] < counts["text"][1]
    held = sum(value.numel() for key, value in saved["state_dict"].items() if key.removeprefix("model.") in kept)
    assert sum(a for a, _ in counts.values()) == held


def test_adapters_of_another_base_are_refused(lora_run, tiny_checkpoint, tiny_text_model, tmp_path):
    checkpoint, _ = lora_run
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["convirt_adapter"]["base_sha256"] = "0" * 64
    torch.save(saved, tmp_path / "other-base.ckpt")
    with pytest.raises(ValueError, match="trained on a base with weights SHA-256 000000000000"):
        load_checkpoint(tmp_path / "other-base.ckpt")
    with pytest.raises(ValueError, match="base is frozen already"):
        _lora(tiny_checkpoint, tiny_text_model, lock_image_tower=True)


_WITHOUT_PEFT = """
import sys
sys.modules["peft"] = None  # importing peft fails here
import open_clip, torch
model, _, _ = open_clip.create_model_and_transforms("local-dir:" + sys.argv[1])
tokens = open_clip.get_tokenizer("local-dir:" + sys.argv[1])(["No pleural effusion.", "Cardiomegaly."])
images = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save((model.eval().encode_image(images), model.encode_text(tokens)), sys.argv[3])
"""


@pytest.mark.slow
def test_the_merged_export_loads_without_peft_and_embeds_as_the_adapted_model(lora_run, tmp_path):
    checkpoint, _ = lora_run
    out = tmp_path / "export"
    assert main(["export", "--model", str(checkpoint), "--output", str(out)]) == 0
    torch.manual_seed(0)
    images = torch.randn(5, 3, 64, 64)
    torch.save(images, tmp_path / "images.pt")
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PEFT, str(out), str(tmp_path / "images.pt"), str(tmp_path / "merged.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    adapted = load_checkpoint(checkpoint)
    with torch.no_grad():
        expected = adapted.model.encode_image(images)
        expected_text = adapted.model.encode_text(adapted.tokenizer(["No pleural effusion.", "Cardiomegaly."]))
    merged, merged_text = torch.load(tmp_path / "merged.pt")
    assert torch.nn.functional.cosine_similarity(merged, expected).min() >= 0.9999
    assert torch.nn.functional.cosine_similarity(merged_text, expected_text).min() >= 0.9999
    base = load_checkpoint(adapted.init["source"]).model
    with torch.no_grad():  # and the adapters moved it: the base embeds otherwise
        assert torch.nn.functional.cosine_similarity(base.encode_image(images), expected).min() < 0.9999


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_lora_run_killed_mid_epoch_resumes_to_the_same_adapter_weights(
    phantom_shards, tiny_text_model, tiny_checkpoint, tmp_path
):
    from tests.training.test_resume import killed_and_resumed

    killed_and_resumed(phantom_shards, tiny_text_model, tmp_path, 0, init=str(tiny_checkpoint), adapter="lora")


@pytest.mark.slow
def test_a_lora_run_on_the_registry_towers_rebuilds_its_base(tiny_text_model, phantom_shards, tmp_path):
    # Without --model.init the base is the registry's towers, their new layers seeded as
    # `--model NAME` builds them: the same base again when the checkpoint is loaded elsewhere.
    L.seed_everything(5, verbose=False)
    module = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, adapter="lora")
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(tmp_path), save_last=True, save_top_k=0)
    trainer = quiet_trainer(
        str(tmp_path), max_steps=2, limit_val_batches=0, enable_checkpointing=True, callbacks=[saver]
    )
    trainer.fit(module, datamodule=tiny_datamodule(phantom_shards, tiny_text_model))
    loaded = load_checkpoint(tmp_path / "last.ckpt")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_image(images), module.model.eval().encode_image(images), atol=1e-6)


def _fit_and_load(module, phantom_shards, text_model, out, **data):
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(out), save_last=True, save_top_k=0)
    trainer = quiet_trainer(str(out), max_steps=2, limit_val_batches=0, enable_checkpointing=True, callbacks=[saver])
    trainer.fit(module, datamodule=tiny_datamodule(phantom_shards, text_model, **data))
    return load_checkpoint(out / "last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["text-only adapters", "other tower locked"])
def test_a_tower_trained_without_adapters_reloads_as_trained(
    variant, tiny_checkpoint, tiny_text_model, phantom_shards, tmp_path
):
    # The image tower (batch norm) trains fully beside text adapters, or is locked beside them: its
    # weights and batch-norm statistics are in the checkpoint, and the model reloads as it was trained.
    options = {"adapter_towers": ["text"]} | ({"lock_image_tower": True} if variant == "other tower locked" else {})
    L.seed_everything(0, verbose=False)
    module = _lora(tiny_checkpoint, tiny_text_model, **options)
    loaded = _fit_and_load(module, phantom_shards, tiny_text_model, tmp_path, init=str(tiny_checkpoint))
    trained = module.model.state_dict()
    assert loaded.model.state_dict().keys() == trained.keys()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, trained[key]), key


@pytest.mark.slow
def test_lora_on_a_timm_start_reloads_and_a_lora_checkpoint_starts_a_run(
    tiny_checkpoint, tiny_text_model, phantom_shards, tmp_path
):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(4)
    trunk = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(tmp_path / "trunk.safetensors"))
    source = f"timm:test_efficientnet@{tmp_path / 'trunk.safetensors'}"
    L.seed_everything(0, verbose=False)
    module = ContrastiveModule(TINY_MODEL, text_model_path=tiny_text_model, init=source, adapter="lora")
    loaded = _fit_and_load(module, phantom_shards, tiny_text_model, tmp_path / "timm", init=source)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # its heads rebuild as they were built (seeded): the base hashes the same
        assert torch.allclose(loaded.model.encode_image(images), module.model.eval().encode_image(images), atol=1e-6)
    # A LoRA run's checkpoint starts another run with its adapters merged: every weight trains again.
    lora_checkpoint = str(tmp_path / "timm" / "last.ckpt")
    onward = ContrastiveModule(TINY_MODEL, text_model_path=tiny_text_model, init=lora_checkpoint)
    assert all(p.requires_grad for p in onward.model.parameters())
    assert not any("lora_" in key for key in onward.model.state_dict())
    with torch.no_grad():
        assert torch.allclose(onward.model.eval().encode_image(images), loaded.model.encode_image(images), atol=1e-5)
