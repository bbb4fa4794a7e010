"""An adapted run's model: a fixed base (its weights hashed), adapters on top, and its checkpoint.

A run with adapters (``--model.adapter lora``) trains only the adapters and the heads, so its
checkpoints hold those weights and the SHA-256 of the base they were trained on, not a second
copy of the base. The base must therefore be rebuilt the same way every time: the ``init``
source, or else the registry entry's towers as ``--model NAME`` loads them (pretrained, new layers
seeded with :data:`~convirt.models.sources.REGISTRY_SEED`). A base that hashes otherwise (a moved
or retrained source) is refused, not silently adapted.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from convirt.models.adapters import (
    AdapterConfig,
    TowerAdapter,
    adapter_parameter_names,
    adapter_state_dict,
    add_adapters,
)

# Where a checkpoint keeps the adapter config and its base's hash.
ADAPTER_KEY = "convirt_adapter"
TOWERS = ("image", "text")


def adapter_config(
    kind: str,
    towers: list[str] | tuple[str, ...] = TOWERS,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    image_targets: list[str] | None = None,
    text_targets: list[str] | None = None,
) -> AdapterConfig:
    """The :class:`AdapterConfig` of a run's flat options (``--model.adapter*``).

    Raises:
        ValueError: An unknown tower or kind, or a rank, alpha or dropout out of range.
    """
    unknown = sorted(set(towers) - set(TOWERS))
    if unknown or not towers:
        raise ValueError(f"adapter towers must be some of {', '.join(TOWERS)}, got {list(towers)}")
    per_tower = {
        tower: TowerAdapter(kind=kind, rank=rank, alpha=alpha, dropout=dropout, targets=targets)  # type: ignore[arg-type]
        if tower in towers
        else None
        for tower, targets in (("image", image_targets), ("text", text_targets))
    }
    return AdapterConfig(image=per_tower["image"], text=per_tower["text"])


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and bytes, in key order): what
    identifies the base an adapter was trained on, whatever file or hub it came from."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def registry_base(model_name: str, pretrained: bool, text_model_path: str | None) -> nn.Module:
    """A registry model built reproducibly: its new layers (heads) seeded, as ``--model NAME`` loads it."""
    from convirt.models.factory import create_model
    from convirt.models.sources import REGISTRY_SEED

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REGISTRY_SEED)
        return create_model(model_name, pretrained=pretrained, text_model_path=text_model_path)


def adapt(model: nn.Module, config: AdapterConfig) -> dict[str, Any]:
    """Add ``config``'s adapters to a base ``model`` in place; returns what a checkpoint records of it."""
    base = weights_sha256(model)
    add_adapters(model, config)
    return {"config": config.as_dict(), "base_sha256": base}


def check_base(recorded: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse adapter weights trained on another base than the one rebuilt now.

    Raises:
        ValueError: The base weights or the adapter config differ; the message says which.
    """
    same = AdapterConfig.from_dict(dict(recorded.get("config") or {})) == AdapterConfig.from_dict(current["config"])
    if not same:
        raise ValueError(f"{where} holds adapters of another config ({recorded.get('config')}) than the run's")
    if recorded.get("base_sha256") != current["base_sha256"]:
        raise ValueError(
            f"{where} holds adapters trained on a base with weights SHA-256 {str(recorded.get('base_sha256'))[:12]}, "
            f"and the base rebuilt now hashes {current['base_sha256'][:12]} (its source moved or changed): "
            "load the base it was trained on"
        )


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What an adapter run's checkpoint holds: the adapters and every other trainable parameter
    (:func:`~convirt.models.adapters.adapter_state_dict`), and every buffer (batch-norm statistics of
    a tower trained without adapters change; the others are small), not the frozen base weights."""
    parameters = {name for name, _ in model.named_parameters()}
    buffers = {key: value.detach() for key, value in model.state_dict().items() if key not in parameters}
    return {**adapter_state_dict(model), **buffers}


def load_trained_state(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Load :func:`trained_state` into an adapted model: every adapter weight and buffer must be there,
    and nothing unknown; other parameters it holds (heads, towers trained without adapters, whatever
    the run froze or not) overwrite the rebuilt base's.

    Raises:
        ValueError: Adapter weights or buffers missing, keys the model lacks, or shapes that differ.
    """
    state = model.state_dict()
    parameters = {name for name, _ in model.named_parameters()}
    needed = set(adapter_parameter_names(model)) | (state.keys() - parameters)
    missing, unknown = sorted(needed - weights.keys()), sorted(weights.keys() - state.keys())
    shapes = sorted(k for k in weights.keys() & state.keys() if tuple(weights[k].shape) != tuple(state[k].shape))
    if missing or unknown or shapes:
        problems = [
            f"{label} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for label, keys in (("missing", missing), ("unknown", unknown), ("other shape", shapes))
            if keys
        ]
        raise ValueError(f"{where} does not fit the adapted model: {'; '.join(problems)}")
    with torch.no_grad():
        for key, value in weights.items():
            state[key].copy_(value)


def load_adapted(model: nn.Module, state: dict[str, Any], weights: dict[str, torch.Tensor], where: str) -> None:
    """Adapt a rebuilt base as the checkpoint ``state`` records and load its trained ``weights``.

    Raises:
        ValueError: Another base or config (:func:`check_base`), or weights that do not fit.
    """
    recorded = dict(state.get(ADAPTER_KEY) or {})
    current = adapt(model, AdapterConfig.from_dict(recorded["config"]))
    check_base(recorded, current, where)
    load_trained_state(model, weights, where)


def refuse_frozen_adapted(
    config: AdapterConfig, image_groups: int, text_layers: int, lock_image: bool, lock_text: bool
) -> None:
    """An adapted tower's base is frozen already: freezing or locking it too says the run is misread."""
    for tower, adapted, frozen in (
        ("image", config.image, image_groups or lock_image),
        ("text", config.text, text_layers or lock_text),
    ):
        if adapted is not None and frozen:
            raise ValueError(
                f"the {tower} tower has adapters, whose base is frozen already: drop its freeze/lock option, "
                f"or leave it out of --model.adapter_towers"
            )
