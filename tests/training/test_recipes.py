"""The README's recipes for continuing published models, run offline on small local stand-ins.

`configs/continue_biomedclip_lora.yaml` starts from `hf-hub:microsoft/BiomedCLIP-...` exactly as
written: the test puts a tiny model of BiomedCLIP's shape (a timm ViT and a BERT, as an open_clip
folder) into a Hugging Face cache under that name. `configs/continue_chexzero.yaml` starts from an
OpenAI-format state dict with CheXzero's statistics: here a tiny one of that format. Only paths and
sizes are changed for the test (shards, output folders, steps); the model sections run as shipped.
"""

import json
import shutil
from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from convirt.cli.main import main
from convirt.models import load_checkpoint
from convirt.training.module import save_initial_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


def _run_recipe(name: str, tmp_path: Path, shards: Path, **model: object) -> Path:
    config = yaml.safe_load((CONFIGS / name).read_text())
    config["model"].update(model)
    config["trainer"].update(accelerator="cpu", max_steps=3, max_epochs=1, logger=False, enable_progress_bar=False)
    config["trainer"]["default_root_dir"] = str(tmp_path / "fit")
    config["trainer"]["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0},
        }
    ]
    config["data"].update(shards=str(shards), batch_size=8, num_workers=0, shuffle_buffer=16)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", "--config", str(path), "--trainer.limit_val_batches", "1"]) == 0
    return tmp_path / "ckpt" / "last.ckpt"


@pytest.mark.slow
def test_continue_biomedclip_with_lora_from_the_hub_name(phantom_shards, tiny_text_model, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # A BiomedCLIP-shaped stand-in (timm ViT + BERT) exported as an open_clip folder, cached as the hub would.
    checkpoint = save_initial_checkpoint(str(tmp_path / "vit.ckpt"), "test-tiny-vit", False, tiny_text_model)
    folder = tmp_path / "stand-in"
    assert main(["export", "--model", checkpoint, "--output", str(folder)]) == 0
    repo = tmp_path / "hub" / f"models--{BIOMEDCLIP.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / ("1" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    last = _run_recipe("continue_biomedclip_lora.yaml", tmp_path, phantom_shards)
    trained = load_checkpoint(last)
    assert trained.init["source"] == f"hf-hub:{BIOMEDCLIP}"
    assert trained.adapter["config"]["image"]["rank"] == 16 and trained.adapter["config"]["text"]["rank"] == 16
    assert any("lora_A" in key for key in trained.model.state_dict())
    out = tmp_path / "export"
    assert main(["export", "--model", str(last), "--output", str(out)]) == 0
    merged = open_clip.create_model(f"local-dir:{out}").eval()
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(merged.encode_image(images), trained.model.encode_image(images))
    assert cosine.min() >= 0.9999
    card = (out / "README.md").read_text()
    assert "Started from `hf-hub:" in card and "Trained with adapters (image: lora rank 16 alpha 32" in card


@pytest.mark.slow
def test_continue_chexzero_format_weights_with_full_fine_tuning(phantom_shards, tmp_path):
    arch = "convirt-test-recipe-openai-tiny"
    (tmp_path / f"{arch}.json").write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "quick_gelu": True,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(tmp_path)
    torch.manual_seed(0)
    weights = tmp_path / "chexzero-like.pt"
    torch.save(open_clip.create_model(arch).state_dict(), weights)  # the OpenAI layout CheXzero releases
    recipe = yaml.safe_load((CONFIGS / "continue_chexzero.yaml").read_text())["model"]["init"]
    statistics = recipe.partition("?")[2]  # CheXzero's own mean and std, as the recipe gives them
    last = _run_recipe(
        "continue_chexzero.yaml", tmp_path, phantom_shards, init=f"open_clip:{arch}@{weights}?{statistics}"
    )
    trained = load_checkpoint(last)
    assert trained.preprocess_cfg["mean"] == (0.398, 0.398, 0.398) and trained.preprocess_cfg["std"] == (0.327,) * 3
    start = open_clip.create_model(arch, pretrained=str(weights)).state_dict()
    changed = [key for key, value in trained.model.state_dict().items() if not torch.equal(value, start[key])]
    assert any(key.startswith("visual.transformer") for key in changed)  # full fine-tuning: the towers move
    assert any(key.startswith("transformer.") for key in changed)
