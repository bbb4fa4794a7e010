"""Any model a user holds, from one string: the ``--model SOURCE`` of every command that loads one.

A source resolves to one :class:`~convirt.models.checkpoint.LoadedModel`: the model in eval mode
(``encode_image``, and ``encode_text`` where it has a text tower), its tokenizer (``None`` for an
image-only encoder), its preprocessing and what identifies its weights (file SHA-256 or hub
revision), which :func:`convirt.models.fingerprint.model_fingerprint` records. Loading is done by
open_clip and timm themselves (their own ``local-dir:`` / ``hf-hub:`` schemas and state-dict
readers, which unpickle nothing); this module only decides which of them a string names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convirt._io import file_sha256
from convirt.models.checkpoint import LoadedModel, load_checkpoint
from convirt.models.factory import OPEN_CLIP, create_model, create_tokenizer, is_open_clip_name, list_models
from convirt.models.pretrained import PretrainedUnavailableError

TIMM = "timm:"
OPEN_CLIP_CONFIG = "open_clip_config.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def describe_sources() -> str:
    """The forms a model source takes, for help texts and errors."""
    return (
        "a `convirt fit` checkpoint; a `convirt export` or open_clip folder (local-dir:DIR); hf-hub:ORG/NAME; "
        "open_clip:ARCH@TAG or open_clip:ARCH@/path/weights.pt (an OpenAI-format state dict, e.g. CheXzero's); "
        f"a registry name, untrained ({', '.join(list_models())}); timm:NAME[@/path/weights] or a timm folder "
        "(image only); any of them followed by ?mean=M,M,M&std=S,S,S&size=N to override its preprocessing"
    )


class _Visual(nn.Module):
    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk


class ImageOnlyEncoder(nn.Module):
    """An image classifier's pooled features as an embedding: ``encode_image`` only.

    The trunk is kept as ``visual.trunk``, where the probes take trunk features from.
    """

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.visual = _Visual(trunk)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``(B, D)`` pooled features of ``(B, 3, H, W)`` images."""
        features = self.visual.trunk(images)
        return F.normalize(features, dim=-1) if normalize else features


def load_model(
    source: str | Path, device: str | torch.device = "cpu", text_model_path: str | None = None
) -> LoadedModel:
    """Load the model a source names (see :func:`describe_sources`), in eval mode on ``device``.

    Args:
        source: The model source.
        device: Where the model goes.
        text_model_path: For a ``convirt fit`` checkpoint, the moved local text-model folder.

    Raises:
        FileNotFoundError: A path that is not there.
        ValueError: A string that names no source form, or a file that is not a checkpoint.
        PretrainedUnavailableError: Hub weights that cannot be fetched (offline); the message says
            how to pass a local copy.
    """
    name, overrides = split_preprocess(str(source))
    local = name.removeprefix(TIMM).removeprefix("local-dir:") if "local-dir:" in name else None
    if local is not None and not Path(local).is_dir():
        raise FileNotFoundError(f"model folder not found: {local} (in {name})")
    if name.startswith(TIMM):
        loaded = _load_timm(name)
    elif is_open_clip_name(name):
        loaded = _load_open_clip(name)
    elif Path(name).is_file():
        loaded = _load_file(Path(name), text_model_path)
    elif Path(name).is_dir():
        loaded = _load_folder(Path(name))
    elif name in list_models():
        loaded = _loaded(_registry_model(name), create_tokenizer(name), name, name, None)
    elif "/" in name or "\\" in name or Path(name).suffix:
        raise FileNotFoundError(f"model source not found: {name} (a path that is not there)")
    else:
        raise ValueError(f"unknown model source {name!r}; a source is {describe_sources()}")
    if overrides:
        loaded.preprocess = {**loaded.preprocess_cfg, **overrides}
        loaded.source = str(source)
    loaded.model.to(device).eval()
    return loaded


PREPROCESS_KEYS = {"mean": 3, "std": 3, "size": 1}


def split_preprocess(source: str) -> tuple[str, dict[str, Any]]:
    """A source and the preprocessing it overrides after ``?``: ``SOURCE?mean=M,M,M&std=S,S,S&size=N``
    (for weights trained with other statistics than their architecture's, as CheXzero's were).

    Raises:
        ValueError: An unknown key, or a value that is not that many numbers.
    """
    name, mark, query = source.partition("?")
    if not mark:
        return source, {}
    overrides: dict[str, Any] = {}
    for item in query.split("&"):
        key, _, value = item.partition("=")
        if key not in PREPROCESS_KEYS:
            raise ValueError(f"model source {source!r}: unknown preprocessing {key!r}; known: mean, std, size")
        try:
            numbers = [float(part) for part in value.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) != PREPROCESS_KEYS[key]:
            raise ValueError(f"model source {source!r}: {key} takes {PREPROCESS_KEYS[key]} numbers, got {value!r}")
        overrides[key] = int(numbers[0]) if key == "size" else tuple(numbers)
    return name, overrides


# The seed of the new layers (projection heads) of a registry model loaded untrained: every load of
# the name is the same model, as its fingerprint (the name, no weights file) says.
REGISTRY_SEED = 0


def _registry_model(name: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REGISTRY_SEED)
        return create_model(name, pretrained=True)


def _load_file(path: Path, text_model_path: str | None) -> LoadedModel:
    try:
        loaded = load_checkpoint(path, text_model_path=text_model_path)
    except ValueError as error:
        if "not a convirt checkpoint" not in str(error) and "not a readable checkpoint" not in str(error):
            raise
        raise ValueError(
            f"{error}; for a bare state dict name its architecture: open_clip:ARCH@{path} or timm:NAME@{path}"
        ) from error
    return loaded


def _load_folder(folder: Path) -> LoadedModel:
    if (folder / OPEN_CLIP_CONFIG).is_file():
        return _load_open_clip(f"local-dir:{folder.resolve()}")
    config = folder / "config.json"
    if config.is_file() and "architecture" in json.loads(config.read_text(encoding="utf-8")):
        return _load_timm(f"{TIMM}local-dir:{folder.resolve()}")
    raise ValueError(
        f"{folder} is not a model folder: no {OPEN_CLIP_CONFIG} (open_clip, `convirt export`) and no timm config.json"
    )


def _load_open_clip(name: str) -> LoadedModel:
    import open_clip

    weights = _open_clip_weights(name)
    model = create_model(name, pretrained=True)
    sha = file_sha256(weights) if weights else None
    return _loaded(model, create_tokenizer(name), name, name, sha, dict(open_clip.get_model_preprocess_cfg(model)))


def _open_clip_weights(name: str) -> Path | None:
    """The one file an open_clip name reads its weights from, where it is a local file."""
    if name.startswith(OPEN_CLIP):
        tag = name.partition("@")[2]
        return Path(tag) if tag and Path(tag).is_file() else None
    return _folder_weights(name)


def hub_weights_sha256(name: str) -> str | None:
    """SHA-256 of the cached weights file of an open_clip ``hf-hub:`` model, as open_clip picks it
    (safetensors first); ``None`` for another name or nothing cached. (Not part of a hub model's
    fingerprint, whose name says which weights they are: a run records what it started from.)"""
    from huggingface_hub import try_to_load_from_cache

    if not name.startswith("hf-hub:"):
        return None
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(split_preprocess(name)[0][len("hf-hub:") :].partition("@")[0], filename)
        if isinstance(found, str):
            return file_sha256(found)
    return None


def _folder_weights(name: str) -> Path | None:
    """The weights file of a ``local-dir:`` folder (open_clip's or timm's), as their loaders pick it:
    safetensors first, then their own file names (open_clip.factory._find_checkpoint_in_dir)."""
    if not name.startswith("local-dir:"):
        return None
    files = sorted(p for p in Path(name[len("local-dir:") :]).glob("*") if p.suffix in _WEIGHT_SUFFIXES)
    files.sort(key=lambda p: (p.suffix != ".safetensors", not p.name.startswith("open_clip")))
    return files[0] if files else None


def _load_timm(name: str) -> LoadedModel:
    import timm

    spec, _, weights = name[len(TIMM) :].partition("@")
    options: dict[str, Any] = {"pretrained": True, "num_classes": 0}
    if weights:
        if not Path(weights).is_file():
            raise FileNotFoundError(f"weights file not found: {weights} (in {name})")
        options["pretrained_cfg_overlay"] = {"file": weights}
    try:
        trunk = timm.create_model(spec, **options)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ValueError(f"unknown timm model {spec!r} in {name!r}; see timm.list_models()") from error
        raise _offline(name, error) from error
    except OSError as error:
        raise _offline(name, error) from error
    config = timm.data.resolve_data_config(model=trunk)
    preprocess = {
        "size": int(config["input_size"][-1]),
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        "interpolation": config.get("interpolation", "bicubic"),
        "resize_mode": "shortest",
    }
    local = Path(weights) if weights else _folder_weights(spec)
    sha = file_sha256(local) if local else None
    return _loaded(ImageOnlyEncoder(trunk), None, f"{TIMM}{spec}", name, sha, preprocess)


def _offline(name: str, error: Exception) -> PretrainedUnavailableError:
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    return PretrainedUnavailableError(
        f"could not load {name!r} (no network?): pass a local copy instead, timm:NAME@/path/weights.safetensors "
        f"or a timm folder (config.json + weights) ({first})"
    )


def _loaded(
    model: nn.Module,
    tokenizer: Any,
    model_name: str,
    source: str,
    weights_sha256: str | None,
    preprocess: dict[str, Any] | None = None,
) -> LoadedModel:
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_name=model_name,
        text_model_path=None,
        checkpoint="",
        embed_dim=_embed_dim(model, preprocess),
        source=source,
        weights_sha256=weights_sha256,
        preprocess=preprocess,
    )


def _embed_dim(model: nn.Module, preprocess: dict[str, Any] | None) -> int:
    """The embedding width, read off one forward pass (configs name it in several ways)."""
    import open_clip

    size = (preprocess or open_clip.get_model_preprocess_cfg(model)).get("size", 224)  # registry: set by create_model
    height, width = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        return int(model.encode_image(torch.zeros(1, 3, height, width)).shape[-1])  # type: ignore[operator]
