"""`--model.init SOURCE`: a run starts from any model source bench accepts, as that source is.

One test per source form (a `convirt fit` checkpoint, an export folder, an open_clip `local-dir:`
folder, an OpenAI-format `.pt`, `hf-hub:` through a local cache the test makes, a timm image tower
with a registry text tower): before its first step the run embeds the shards' images and reports
as the source itself does (the model every evaluating command loads from it), with the source's
tokenizer and preprocessing. The slow tests train a few steps from each through `convirt fit`:
the loss falls, and the checkpoint names its start and rebuilds from it.
"""

import json
import shutil

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from convirt.cli.main import main
from convirt.data.inputs import build_eval_batches
from convirt.models import create_tokenizer, load_checkpoint
from convirt.models.initial import absolute_source, initial_model
from convirt.models.sources import load_model
from convirt.training import ContrastiveModule, ShardDataModule
from tests.conftest import TINY_MODEL

# open_clip's own ViT and text transformer (the OpenAI CLIP layout CheXzero releases), small.
_OPENAI_TINY = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}
_ARCH = "convirt-test-init-openai-tiny"
_HUB_REPO = "convirt-test/openai-tiny"
FORMS = ["checkpoint", "export", "local-dir", "openai-pt", "hf-hub", "timm"]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@pytest.fixture(scope="module")
def sources(tiny_checkpoint, tmp_path_factory):
    """Each source form, made here: form -> (source string, model_name, text_model_path)."""
    import timm

    root = tmp_path_factory.mktemp("init-sources")
    (root / f"{_ARCH}.json").write_text(json.dumps(_OPENAI_TINY))
    open_clip.add_model_config(root)
    torch.manual_seed(3)
    openai = open_clip.create_model(_ARCH)
    torch.save(openai.state_dict(), root / "clip_weights.pt")
    folder = root / "open-clip-folder"
    folder.mkdir()
    preprocess = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    config = {"model_cfg": _OPENAI_TINY, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in openai.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    # A Hugging Face hub cache holding the same folder, as `huggingface-cli download` leaves it.
    hub = root / "hub"
    snapshot = hub / f"models--{_HUB_REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    export = root / "exported"
    assert main(["export", "--model", str(tiny_checkpoint), "--output", str(export)]) == 0
    torch.manual_seed(4)
    trunk = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(root / "trunk.safetensors"))
    text = load_checkpoint(tiny_checkpoint).text_model_path
    # What each source is, built here without the loaders under test: the models themselves, their
    # tokenizers and preprocessing as the files state them.
    saved = load_checkpoint(tiny_checkpoint)  # `convirt fit`'s own reader of its checkpoints
    openai_preprocess = {
        "size": 32,
        "mean": tuple(open_clip.OPENAI_DATASET_MEAN),
        "std": tuple(open_clip.OPENAI_DATASET_STD),
    }
    folder_preprocess = {"size": 32, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    openai_tokens = open_clip.get_tokenizer(_ARCH)
    references = {
        "checkpoint": (saved.model, saved.tokenizer, saved.preprocess_cfg),
        "export": (saved.model, saved.tokenizer, saved.preprocess_cfg),
        "local-dir": (openai.eval(), openai_tokens, folder_preprocess),
        "openai-pt": (openai.eval(), openai_tokens, openai_preprocess),
        "hf-hub": (openai.eval(), openai_tokens, folder_preprocess),
        "timm": (trunk.eval(), None, {"size": timm.data.resolve_data_config(model=trunk)["input_size"][-1]}),
    }
    return {
        "_references": references,
        "checkpoint": (str(tiny_checkpoint), TINY_MODEL, None),
        "export": (str(export), TINY_MODEL, None),
        "local-dir": (f"local-dir:{folder}", TINY_MODEL, None),
        "openai-pt": (f"open_clip:{_ARCH}@{root / 'clip_weights.pt'}", TINY_MODEL, None),
        "hf-hub": (f"hf-hub:{_HUB_REPO}", TINY_MODEL, None),
        "timm": (f"timm:test_efficientnet@{root / 'trunk.safetensors'}", TINY_MODEL, text),
        "_hub": hub,
    }


@pytest.fixture
def hub_cache(sources, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(sources["_hub"]))


@pytest.mark.parametrize("form", FORMS)
def test_the_run_starts_as_the_source_embeds(form, sources, hub_cache, phantom_shards):
    source, model_name, text_model_path = sources[form]
    native = load_model(source)
    module = ContrastiveModule(model_name=model_name, text_model_path=text_model_path, init=source)
    module.eval()
    data = ShardDataModule(str(phantom_shards), model_name=model_name, text_model_path=text_model_path, init=source)
    data.setup("fit")
    reference, reference_tokenizer, reference_preprocess = sources["_references"][form]
    # The run reads its data with the source's preprocessing and tokenizer.
    assert data.preprocess == native.preprocess_cfg
    for key, value in reference_preprocess.items():
        if key not in ("size", "mean", "std"):
            assert data.preprocess[key] == value, key
            continue
        ours, theirs = np.broadcast_arrays(np.atleast_1d(data.preprocess[key]), np.atleast_1d(value))  # 64 is (64, 64)
        assert np.allclose(ours, theirs), key
    batch = next(iter(build_eval_batches(phantom_shards, native.preprocess_cfg, data.tokenizer, 7, split="test")))
    with torch.no_grad():
        if form == "timm":  # the source's trunk, under a new head beside the registry's text tower
            assert _cosines(module.model.visual.trunk(batch["image"]), reference(batch["image"])).min() >= 0.9999
            registry = create_tokenizer(model_name, text_model_path=text_model_path)(batch["raw_text"])
            assert torch.equal(batch["text"], registry[:, : batch["text"].shape[1]])
            return
        # The same token ids (the run's batches trim trailing padding).
        native_tokens = reference_tokenizer(batch["raw_text"])
        assert torch.equal(batch["text"], native_tokens[:, : batch["text"].shape[1]])
        image, text = module(batch["image"], batch["text"])
        assert _cosines(image, reference.encode_image(batch["image"])).min() >= 0.9999
        assert _cosines(text, reference.encode_text(native_tokens)).min() >= 0.9999
        assert torch.equal(module.model.logit_scale, reference.logit_scale)
    assert module.init_record["source"] == absolute_source(source)


def test_an_image_only_source_needs_a_text_tower(sources, phantom_shards):
    source = sources["timm"][0]
    with pytest.raises(ValueError, match="add --model.text_model_path DIR"):
        initial_model(source, TINY_MODEL, None)


def _batch_loss(model, batch) -> float:
    """The CLIP loss of one fixed batch (the same images and reports before and after training)."""
    from convirt.losses import create_loss

    with torch.no_grad():
        image = model.encode_image(batch["image"], normalize=True)
        text = model.encode_text(batch["text"], normalize=True)
        return float(create_loss("clip")(image, text, model.logit_scale.exp(), getattr(model, "logit_bias", None)))


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_a_fit_from_each_source_lowers_the_loss_and_names_its_start(
    form, sources, hub_cache, phantom_shards, tmp_path, capsys
):
    source, model_name, text_model_path = sources[form]
    model = {"model_name": model_name, "init": source, "learning_rate": 1e-3, "warmup_steps": 1}
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 3,
            "limit_val_batches": 1,
            "logger": False,
            "enable_progress_bar": False,
            "precision": "32-true",
            "default_root_dir": str(tmp_path / "fit"),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0},
                }
            ],
        },
        "model": {**model, **({"text_model_path": text_model_path} if text_model_path else {})},
        "data": {"shards": str(phantom_shards), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 16},
    }
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config))
    start = initial_model(source, model_name, text_model_path)
    batch = next(iter(build_eval_batches(phantom_shards, start.preprocess, start.tokenizer, 16, split="train")))
    before = _batch_loss(start.model.eval(), batch)
    assert main(["fit", "--config", str(path)]) == 0
    checkpoint = tmp_path / "ckpt" / "last.ckpt"
    trained = load_checkpoint(checkpoint)
    assert _batch_loss(trained.model, batch) < before
    # The checkpoint names its start and the start's weights; an export's model card says it too.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["init"] == absolute_source(source)
    assert trained.init == state["convirt_init"] == start.record
    assert trained.preprocess_cfg == start.preprocess
    out = tmp_path / "export"
    assert main(["export", "--model", str(checkpoint), "--output", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert f"Started from `{absolute_source(source)}`" in card
    exported, native = load_model(str(out)), trained
    images = batch["image"][:3]
    with torch.no_grad():
        assert _cosines(exported.model.encode_image(images), native.model.encode_image(images)).min() >= 0.9999


@pytest.mark.slow
@pytest.mark.multiprocess
def test_lock_gradcache_ddp_and_resume_keep_working_from_a_source(sources, phantom_shards, tmp_path):
    """open_clip's own towers (a `local-dir:` folder), image tower locked, GradCache sub-batches, two
    DDP ranks: the run resumed from its step-2 checkpoint reaches the uninterrupted run's weights."""
    from tests.training.test_ddp import _fit

    source = sources["local-dir"][0]
    model = {"model_name": TINY_MODEL, "init": source, "lock_image_tower": True, "sub_batch_size": 2}
    data = {"shards": str(phantom_shards), "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8}

    def config(out, max_steps, resume=None):
        callback = {
            "dirpath": str(out),
            "every_n_train_steps": 2,
            "save_top_k": -1,
            "filename": "{step}",
            "auto_insert_metric_name": False,
        }
        return {
            "seed_everything": 0,
            "trainer": {
                "accelerator": "cpu",
                "devices": 2,
                "strategy": "ddp",
                "default_root_dir": str(out),
                "max_steps": max_steps,
                "limit_val_batches": 0,
                "logger": False,
                "enable_progress_bar": False,
                "precision": "32-true",
                "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": callback}],
            },
            "model": model,
            "data": data,
            **({"ckpt_path": str(resume)} if resume else {}),
        }

    _fit(config(tmp_path / "whole", 4), tmp_path)
    # Resumed from the uninterrupted run's step-2 checkpoint (the same schedule: max_steps 4).
    _fit(config(tmp_path / "resumed", 4, tmp_path / "whole" / "2.ckpt"), tmp_path)
    whole = torch.load(tmp_path / "whole" / "4.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    resumed = torch.load(tmp_path / "resumed" / "4.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    start = initial_model(source, TINY_MODEL).model.state_dict()
    assert whole.keys() == resumed.keys()
    for name, value in whole.items():
        assert torch.allclose(value, resumed[name], atol=1e-6), name
        trunk = name.startswith("model.visual.") and name != "model.visual.proj"
        if trunk:  # locked: as the source had it
            assert torch.equal(value, start[name[len("model.") :]]), name
    assert not torch.equal(whole["model.visual.proj"], start["visual.proj"])  # its head trained


def test_the_towers_of_open_clips_own_model_train_at_the_tower_learning_rate(sources):
    from convirt.training.optimization import parameter_groups

    model = initial_model(sources["local-dir"][0], TINY_MODEL).model
    groups = parameter_groups(model, learning_rate=1.0, tower_learning_rate=0.5, weight_decay=0.0)
    rates = {id(p): group["lr"] for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    for name in ("visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.attn.in_proj_weight"):
        assert rates[id(named[name])] == 0.5, name
    for name in ("visual.proj", "text_projection", "logit_scale"):
        assert rates[id(named[name])] == 1.0, name
