"""What a training run starts from: any model source (``--model.init SOURCE``) as a trainable dual encoder.

A run names its start in one string, the same ``SOURCE`` every evaluating command takes
(:func:`convirt.models.sources.load_model`): a ``convirt fit`` checkpoint, an export or open_clip
folder, ``hf-hub:``, ``open_clip:ARCH@weights.pt`` (CheXzero's OpenAI-format state dict), a
registry name, or a timm image tower. The run gets that source's towers and logit scale as they
are, with its own preprocessing, tokenizer and context length. A timm source has no text tower:
the run pairs it with the text tower and projection heads of the registry entry ``model_name``
(the Hugging Face model of ``text_model_path``), and its image trunk pools as the source did.

What the run started from is recorded (:attr:`InitialModel.record`: the source and the SHA-256
of its weights) in every checkpoint and in the model card of its export; a checkpoint rebuilds
its architecture by loading that source again, then loads its own weights over it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import set_model_preprocess_cfg
from torch import nn

from convirt.models.checkpoint import LoadedModel
from convirt.models.factory import OPEN_CLIP, create_model, create_tokenizer, get_model_config, list_models

TEXT_FOLDER_HINT = "add --model.text_model_path DIR (a Hugging Face text model folder)"


@dataclass
class InitialModel:
    """A run's starting dual encoder, with what its data and its export need."""

    model: nn.Module
    tokenizer: Any
    # The name the model answers to (registry name, ``local-dir:``, ``hf-hub:``, ``open_clip:`` name).
    model_name: str
    # Its image preprocessing (size, mean, std, interpolation, resize_mode), as open_clip names them.
    preprocess: dict[str, Any]
    # The open_clip-format ``{"model_cfg", "preprocess_cfg"}`` that rebuilds it (``convirt export`` writes it).
    config: dict[str, Any]
    # What it started from: ``source``, ``model_name``, ``weights_sha256`` (recorded in checkpoints).
    record: dict[str, Any]


def absolute_source(source: str) -> str:
    """A source with its local path made absolute (``local-dir:`` and ``@weights`` included), so
    that a checkpoint finds it again from any directory; hub and registry names unchanged."""
    name, mark, query = source.partition("?")
    for prefix in ("local-dir:", "timm:local-dir:"):
        if name.startswith(prefix):
            name = prefix + os.path.abspath(name[len(prefix) :])
            break
    else:
        head, at, tail = name.partition("@")
        if at and tail and os.path.exists(tail):
            name = f"{head}@{os.path.abspath(tail)}"
        elif not at and os.path.exists(name):
            name = os.path.abspath(name)
    return name + mark + query


def initial_model(source: str, model_name: str, text_model_path: str | None = None) -> InitialModel:
    """The dual encoder a run starts from, loaded from ``source`` with its weights.

    Args:
        source: Any model source (:func:`convirt.models.sources.describe_sources`).
        model_name: The registry entry whose text tower and projection heads pair with an
            image-only (timm) source; unused for a source with both towers.
        text_model_path: The Hugging Face text model folder of that text tower (a timm source
            needs it); for a ``convirt fit`` checkpoint source, its moved text-model folder.

    Raises:
        ValueError: A source that cannot be trained as it is (an image-only tower without
            ``text_model_path``), or one that names no source form.
        FileNotFoundError: A path that is not there.
        PretrainedUnavailableError: Hub weights that cannot be fetched (offline).
    """
    from convirt.models.fingerprint import model_fingerprint
    from convirt.models.sources import ImageOnlyEncoder, hub_weights_sha256, load_model

    loaded = load_model(source, text_model_path=text_model_path)
    if loaded.adapter:  # a LoRA run's checkpoint: its adapters folded in, every weight a plain one again
        from convirt.models.adapters import merge_adapters

        merge_adapters(loaded.model)
    fingerprint = model_fingerprint(loaded)
    record = {
        "source": source,
        "model_name": loaded.model_name,
        "weights_sha256": fingerprint["checkpoint_sha256"] or hub_weights_sha256(source),
    }
    key = (absolute_source(source), model_name, text_model_path)
    if isinstance(loaded.model, ImageOnlyEncoder):
        return _remember(_with_registry_text(loaded, source, model_name, text_model_path, record), key)
    if not hasattr(loaded.model, "logit_scale"):
        raise ValueError(f"{source} has no logit scale: a run starts from a contrastive dual encoder")
    model_cfg = _model_cfg(loaded)
    set_model_preprocess_cfg(
        loaded.model, {**open_clip.get_model_preprocess_cfg(loaded.model), **loaded.preprocess_cfg}
    )
    return _remember(
        InitialModel(
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            model_name=loaded.model_name,
            preprocess=loaded.preprocess_cfg,
            config={"model_cfg": model_cfg, "preprocess_cfg": loaded.preprocess_cfg},
            record=record,
        ),
        key,
    )


def _model_cfg(loaded: LoadedModel) -> dict[str, Any]:
    """The open_clip ``model_cfg`` of a loaded dual encoder, wherever its architecture is written."""
    if loaded.config is not None:  # a checkpoint that itself started from a source
        return dict(loaded.config["model_cfg"])
    name = loaded.model_name
    if name in list_models():
        return get_model_config(name)["model_cfg"]
    if name.startswith(OPEN_CLIP):
        name = name[len(OPEN_CLIP) :].partition("@")[0]
    config = open_clip.get_model_config(name)
    if not config:
        raise ValueError(f"{loaded.source}: open_clip knows no architecture config for {name!r}")
    return dict(config)


def _with_registry_text(
    loaded: LoadedModel, source: str, model_name: str, text_model_path: str | None, record: dict[str, Any]
) -> InitialModel:
    """An image-only (timm) source's trunk under the image head of registry entry ``model_name``,
    beside that entry's text tower: the trunk pools as the source did (``timm_pool: ""``)."""
    if not text_model_path:
        raise ValueError(
            f"{source} is an image-only encoder and a run trains image and text together: {TEXT_FOLDER_HINT}, "
            f"whose text tower and projection heads come from --model.model_name ({model_name})"
        )
    if not Path(text_model_path).is_dir():
        raise FileNotFoundError(f"text model folder not found: {text_model_path} (--model.text_model_path)")
    config = get_model_config(model_name)
    if "hf_model_name" not in config["model_cfg"]["text_cfg"]:
        raise ValueError(f"--model.model_name {model_name} has no Hugging Face text tower for {TEXT_FOLDER_HINT}")
    timm_name = loaded.model_name.removeprefix("timm:")
    vision = {"timm_model_name": timm_name, "timm_pool": "", "image_size": loaded.preprocess_cfg["size"]}
    from convirt.models.sources import REGISTRY_SEED

    with torch.random.fork_rng(devices=[]):  # its new layers (heads) the same at every build, as a registry name's
        torch.manual_seed(REGISTRY_SEED)
        model = create_model(
            model_name, pretrained=True, text_model_path=text_model_path, pretrained_image=False, vision=vision
        )
    set_model_preprocess_cfg(model, {**open_clip.get_model_preprocess_cfg(model), **loaded.preprocess_cfg})
    trunk = loaded.model.visual.trunk
    model.visual.trunk.load_state_dict(trunk.state_dict(), strict=True)  # type: ignore[union-attr]
    model_cfg = config["model_cfg"]
    model_cfg["vision_cfg"].update(vision)
    model_cfg["text_cfg"]["hf_model_name"] = model_cfg["text_cfg"]["hf_tokenizer_name"] = text_model_path
    return InitialModel(
        model=model,
        tokenizer=create_tokenizer(model_name, text_model_path=text_model_path),
        model_name=model_name,
        preprocess=loaded.preprocess_cfg,
        config={"model_cfg": model_cfg, "preprocess_cfg": loaded.preprocess_cfg},
        record=record,
    )


def initial_inputs(source: str, model_name: str, text_model_path: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The tokenizer and image preprocessing of the model a run starts from (its data needs no more).

    Read from the start this process built already (the run's module), or else the source is
    loaded whole, as :func:`initial_model` loads it (one reader of every source form).
    """
    key = (absolute_source(source), model_name, text_model_path)
    if key not in _INPUTS:
        initial_model(source, model_name, text_model_path)
    return _INPUTS[key]


# The tokenizer and preprocessing of each start this process built (the module is built before its
# data module sets up, in every rank): the data reads them here instead of loading the source again.
_INPUTS: dict[tuple[str, str, str | None], tuple[Any, dict[str, Any]]] = {}


def _remember(start: InitialModel, key: tuple[str, str, str | None]) -> InitialModel:
    _INPUTS[key] = (start.tokenizer, start.preprocess)
    return start
