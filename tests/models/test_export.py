"""`convirt export` writes a folder open_clip loads back (local-dir:) with identical embeddings."""

import json

import open_clip
import torch

from convirt.cli.main import main
from convirt.models import load_checkpoint


def test_export_round_trip_through_open_clip(tiny_checkpoint, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(out)]) == 0
    assert {"open_clip_config.json", "open_clip_model.safetensors", "config.json", "convirt.json"} <= {
        p.name for p in out.iterdir()
    }
    # The folder is replaced whole: an earlier export may be, a folder of other files or the input not.
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(out)]) == 0
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(tmp_path)]) == 2
    assert main(["export", "--model", str(out), "--output", str(out)]) == 2
    assert tiny_checkpoint.is_file() and (out / "convirt.json").is_file()
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
        assert torch.allclose(
            model.encode_text(tokenizer(texts)), loaded.model.encode_text(loaded.tokenizer(texts)), atol=1e-6
        )
        assert torch.allclose(model.logit_scale, loaded.model.logit_scale)
    provenance = json.loads((out / "convirt.json").read_text())
    assert provenance["model_name"] == "test-tiny" and len(provenance["checkpoint_sha256"]) == 64
    # convirt itself reads the folder too.
    from convirt.models import create_model

    again = create_model(f"local-dir:{out}").eval()
    with torch.no_grad():
        assert torch.allclose(again.encode_image(images), loaded.model.encode_image(images), atol=1e-6)


def test_export_embeds_stored_images_as_convirt_embed_does(tiny_checkpoint, phantom_shards, tmp_path):
    """What a user does with the folder: open_clip's own model AND transforms on PIL images read
    from the shards give `convirt embed`'s vectors (same preprocessing, not only same weights)."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from convirt.embeddings import read_embeddings

    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(out)]) == 0
    preprocess_cfg = json.loads((out / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert preprocess_cfg["interpolation"] == "bilinear" and preprocess_cfg["resize_mode"] == "shortest"
    # fp32 on both sides: the comparison is of the preprocessing, not of bf16 rounding.
    assert (
        main(
            [
                "embed",
                "--checkpoint",
                str(tiny_checkpoint),
                "--data",
                str(phantom_shards),
                "--split",
                "test",
                "--precision",
                "32-true",
                "--output",
                str(tmp_path / "emb"),
            ]
        )
        == 0
    )
    vectors, rows = read_embeddings(tmp_path / "emb")
    by_key = {row["key"]: vector for row, vector in zip(rows, vectors)}

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    _, _, bicubic = open_clip.create_model_and_transforms(f"local-dir:{out}", image_interpolation="bicubic")
    model.eval()
    images, keys = [], []
    for shard in sorted(phantom_shards.glob("test-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    images.append(Image.open(io.BytesIO(tar.extractfile(member).read())))
                    keys.append(member.name[: -len(".jpg")])
    assert len(keys) == len(by_key) > 5

    def cosines(transform):
        with torch.no_grad():
            features = model.encode_image(torch.stack([transform(image) for image in images]), normalize=True)
        expected = torch.from_numpy(np.stack([by_key[key] for key in keys]))
        return torch.nn.functional.cosine_similarity(features, expected, dim=1)

    assert float(cosines(preprocess).min()) >= 0.9999
    # The check can fail: open_clip's default (bicubic), which the export used to leave unstated, does not pass.
    assert float(cosines(bicubic).min()) < 0.9999
