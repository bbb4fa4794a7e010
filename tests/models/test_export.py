"""`convirt export` writes a folder open_clip loads back (local-dir:) with identical embeddings."""

import json

import open_clip
import torch

from convirt.cli.main import main
from convirt.models import load_checkpoint


def test_export_round_trip_through_open_clip(tiny_checkpoint, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(out)]) == 0
    assert {"open_clip_config.json", "open_clip_pytorch_model.bin", "config.json", "convirt.json"} <= {
        p.name for p in out.iterdir()}
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    loaded = load_checkpoint(tiny_checkpoint)
    model.eval()
    torch.manual_seed(0)
    images = torch.randn(3, 3, 64, 64)
    texts = ["There is cardiomegaly.", "No pleural effusion.", "normal chest"]
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), loaded.model.encode_image(images), atol=1e-6)
        assert torch.equal(tokenizer(texts), loaded.tokenizer(texts))
        assert torch.allclose(model.encode_text(tokenizer(texts)), loaded.model.encode_text(loaded.tokenizer(texts)),
                              atol=1e-6)
        assert torch.allclose(model.logit_scale, loaded.model.logit_scale)
    provenance = json.loads((out / "convirt.json").read_text())
    assert provenance["model_name"] == "test-tiny" and len(provenance["checkpoint_sha256"]) == 64
    # convirt itself reads the folder too.
    from convirt.models import create_model

    again = create_model(f"local-dir:{out}").eval()
    with torch.no_grad():
        assert torch.allclose(again.encode_image(images), loaded.model.encode_image(images), atol=1e-6)
