"""LoRA and other peft adapters on the towers of an open_clip dual encoder.

Adapters are injected in place with peft's ``inject_adapter_in_model`` on each tower's trunk
(``visual.trunk`` for timm, ``text.transformer`` for Hugging Face, ``visual`` / ``transformer`` for
open_clip's own ViT and text transformer), not ``get_peft_model``: the model keeps its class, so
``encode_image`` / ``encode_text`` and every caller work unchanged, and the state dict only gains
keys inside the adapted layers (``X.weight`` becomes ``X.base_layer.weight`` next to
``X.lora_A.default.weight`` / ``X.lora_B.default.weight``) instead of a ``base_model.model.`` prefix
over the whole tower. :func:`merge_adapters` folds them back and restores the base keys.

peft is imported only when adapters are added, merged or looked for: a merged model needs none.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
from open_clip.hf_model import HFTextEncoder
from open_clip.timm_model import TimmModel
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

AdapterKind = Literal["lora", "dora", "loha", "lokr", "ia3"]
KINDS: tuple[str, ...] = ("lora", "dora", "loha", "lokr", "ia3")
TOWERS = ("image", "text", "other")

_BERT = ("query", "key", "value", "output.dense", "intermediate.dense")  # not the unused pooler.dense
_OPEN_CLIP = ("mlp.c_fc", "mlp.c_proj")
# Default targets per tower type, as module-name suffixes. open_clip's attention is an
# nn.MultiheadAttention, which peft adapts by merging before and unmerging after every forward: that
# rounds the frozen base weights a little on each call, so only its MLP is adapted by default.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "timm:VisionTransformer": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),  # not patch_embed.proj
    "timm:EfficientNet": ("conv_pw", "conv_pwl"),  # the 1x1 convs: most weights, no groups
    "timm:ResNet": ("conv1", "conv2", "conv3"),  # every block conv (conv1 is also the 7x7 stem)
    "timm:ConvNeXt": ("mlp.fc1", "mlp.fc2"),
    **{f"hf:{family}": _BERT for family in ("bert", "roberta", "xlm-roberta", "electra", "camembert")},
    "hf:distilbert": ("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
    "hf:mpnet": ("attn.q", "attn.k", "attn.v", "attn.o", "intermediate.dense", "output.dense"),
    "open_clip:VisionTransformer": _OPEN_CLIP,
    "open_clip:TextTransformer": _OPEN_CLIP,
}
_ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


@dataclass(frozen=True)
class TowerAdapter:
    """The adapter of one tower.

    Args:
        kind: ``lora``; ``dora`` (LoRA with a learned magnitude); ``loha`` / ``lokr`` (LyCORIS
            Hadamard / Kronecker products); ``ia3`` (a learned scale per output; no rank, alpha
            or dropout).
        rank: Rank of the low-rank update.
        alpha: Its scale is ``alpha / rank``.
        dropout: LoRA's dropout on the adapter's input (``loha`` / ``lokr``: rank dropout);
            active in ``train()`` mode only, and never part of a merged model.
        targets: Module-name suffixes of the layers to adapt (``nn.Linear`` / ``nn.Conv*`` /
            ``nn.Embedding``), as peft matches them (``qkv`` matches ``blocks.0.attn.qkv``);
            ``None``: :data:`DEFAULT_TARGETS` for the tower's type.
    """

    kind: AdapterKind = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown adapter kind {self.kind!r}; known: {', '.join(KINDS)}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"adapter rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"adapter alpha must be positive, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"adapter dropout must be in [0, 1), got {self.dropout!r}")
        if self.targets is not None:
            targets = self.targets
            if isinstance(targets, str) or not targets or not all(isinstance(t, str) and t for t in targets):
                raise ValueError(
                    f"adapter targets must be a non-empty list of module-name suffixes (e.g. ['qkv', 'proj']) "
                    f"or None for the tower's defaults, got {self.targets!r}"
                )
            object.__setattr__(self, "targets", tuple(self.targets))


@dataclass(frozen=True)
class AdapterConfig:
    """Adapters of a dual encoder: one per tower (``None`` leaves that tower as it is).

    Args:
        image: The image tower's adapter.
        text: The text tower's adapter.
        train_heads: Keep the projection heads of the adapted towers trainable (they are small
            and map each tower into the shared space, which adapting both towers moves).
        train_logit_scale: Keep ``logit_scale`` (and ``logit_bias``) trainable.
    """

    image: TowerAdapter | None = dataclasses.field(default_factory=TowerAdapter)
    text: TowerAdapter | None = dataclasses.field(default_factory=TowerAdapter)
    train_heads: bool = True
    train_logit_scale: bool = True

    def as_dict(self) -> dict[str, Any]:
        """Plain values (JSON and YAML dump them) that :meth:`from_dict` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterConfig:
        """The config of :meth:`as_dict`; unknown keys are an error."""
        known = {field.name for field in dataclasses.fields(cls)}
        if set(values) - known:
            raise ValueError(f"unknown adapter config keys {sorted(set(values) - known)}; known: {sorted(known)}")
        towers = {t: TowerAdapter(**values[t]) if values.get(t) is not None else None for t in ("image", "text")}
        return cls(**{**values, **{t: towers[t] for t in towers if t in values}})


@dataclass(frozen=True)
class _Tower:
    trunk: str  # the sub-module peft adapts
    members: tuple[str, ...]  # parameter-name prefixes of the whole tower
    heads: tuple[str, ...]  # parameter-name prefixes of its projection head
    kind: str  # its type, a key of DEFAULT_TARGETS


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _towers(model: nn.Module) -> dict[str, _Tower]:
    """The image and text towers of a ``CLIP`` / ``CustomTextCLIP`` that the model has."""
    towers = {}
    visual = getattr(model, "visual", None)
    if isinstance(visual, TimmModel):
        towers["image"] = _Tower("visual.trunk", ("visual",), ("visual.head",), f"timm:{type(visual.trunk).__name__}")
    elif isinstance(visual, nn.Module):
        towers["image"] = _Tower("visual", ("visual",), ("visual.proj",), f"open_clip:{type(visual).__name__}")
    text = getattr(model, "text", None)
    if isinstance(text, HFTextEncoder):
        kind = f"hf:{getattr(text.transformer.config, 'model_type', type(text.transformer).__name__)}"
        towers["text"] = _Tower("text.transformer", ("text",), ("text.proj", "text.pooler"), kind)
    elif isinstance(text, nn.Module):
        towers["text"] = _Tower("text.transformer", ("text",), ("text.text_projection",), "open_clip:TextTransformer")
    elif isinstance(getattr(model, "transformer", None), nn.Module) and hasattr(model, "token_embedding"):
        members = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection")
        towers["text"] = _Tower("transformer", members, ("text_projection",), "open_clip:TextTransformer")
    return towers


def _peft() -> Any:
    try:
        import peft
    except ImportError as error:
        raise ImportError("adapters need peft: pip install 'convirt[adapters]'") from error
    return peft


def _tuner_layers(module: nn.Module) -> dict[str, Any]:
    """The outermost peft adapter layers under ``module``, by name (none without peft)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return {}
    layers: dict[str, Any] = {}
    for name, child in module.named_modules():
        if isinstance(child, BaseTunerLayer) and not any(name.startswith(outer + ".") for outer in layers):
            layers[name] = child
    return layers


def _adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter weights of every peft layer: its parameters outside ``base_layer``."""
    found = {}
    for prefix, layer in _tuner_layers(model).items():
        for name, parameter in layer.named_parameters():
            if not name.startswith("base_layer."):
                found[f"{prefix}.{name}"] = parameter
    return found


def _layer_names(trunk: nn.Module) -> str:
    """The distinct last names of a trunk's adaptable layers, for error messages."""
    mha = {name for name, module in trunk.named_modules() if isinstance(module, nn.MultiheadAttention)}
    names = {
        name.rpartition(".")[2]
        for name, module in trunk.named_modules()
        if isinstance(module, _ADAPTABLE) and name.rpartition(".")[0] not in mha
    }
    listed = sorted(names)
    return ", ".join(listed[:16]) + (f" (and {len(listed) - 16} more)" if len(listed) > 16 else "")


def _resolve_targets(trunk: nn.Module, tower: str, kind: str, targets: tuple[str, ...] | None) -> list[str]:
    """Exact names (under ``trunk``) of the layers to adapt.

    Raises:
        ValueError: No defaults for the tower's type; a named target matching no layer, or
            matching something peft cannot adapt well (a container, an ``nn.MultiheadAttention``).
    """
    explicit = targets is not None
    wanted = targets if targets is not None else DEFAULT_TARGETS.get(kind)
    if wanted is None:
        raise ValueError(
            f"no default adapter targets for the {tower} tower ({kind}); known types: "
            f"{', '.join(DEFAULT_TARGETS)}; name its layers with targets=[...] (its layers: {_layer_names(trunk)})"
        )
    modules = dict(trunk.named_modules())
    mha = {name for name, module in modules.items() if isinstance(module, nn.MultiheadAttention)}
    chosen: list[str] = []
    for target in wanted:
        hits = [name for name in modules if name and (name == target or name.endswith("." + target))]
        if explicit and not hits:
            raise ValueError(
                f"{tower} adapter target {target!r} matches no layer of the {kind} tower; "
                f"its layers: {_layer_names(trunk)}"
            )
        for name in hits:
            module = modules[name]
            if name in mha or name.rpartition(".")[0] in mha:
                raise ValueError(
                    f"{tower} adapter target {target!r} matches {name}, part of an nn.MultiheadAttention, which peft "
                    "adapts by re-merging its weights on every forward (the frozen base drifts, out_proj alone is "
                    f"ignored); adapt the MLP instead ({', '.join(_OPEN_CLIP)})"
                )
            if not isinstance(module, _ADAPTABLE):
                raise ValueError(
                    f"{tower} adapter target {target!r} matches {name} ({type(module).__name__}), not a layer peft "
                    f"adapts (nn.Linear, nn.Conv1d/2d/3d, nn.Embedding); its layers: {_layer_names(trunk)}"
                )
            if name not in chosen:
                chosen.append(name)
    if not chosen:
        raise ValueError(f"the default adapter targets of the {tower} tower ({kind}) match none of its layers")
    return chosen


def _peft_config(adapter: TowerAdapter, modules: list[str]) -> Any:
    peft = _peft()
    # A string is matched by peft with re.fullmatch against each module name: exactly these layers.
    pattern = "|".join(re.escape(name) for name in modules)
    common = {"r": adapter.rank, "target_modules": pattern}
    if adapter.kind in ("lora", "dora"):
        dora = adapter.kind == "dora"
        return peft.LoraConfig(**common, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout, use_dora=dora)
    if adapter.kind in ("loha", "lokr"):
        config_class = peft.LoHaConfig if adapter.kind == "loha" else peft.LoKrConfig
        return config_class(**common, alpha=adapter.alpha, rank_dropout=adapter.dropout)
    return peft.IA3Config(target_modules=pattern, feedforward_modules=[])


def _frozen_norm_stats(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: a batch norm of an adapted tower normalises with (and keeps) its running statistics."""
    module.training = False


def add_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Inject adapters into the towers ``config`` names, in place, and freeze their base weights.

    Every base parameter of an adapted tower is frozen (``requires_grad=False``), and its batch
    norms keep their running statistics even in ``train()`` mode, so a step changes only the
    adapters, the projection heads (``train_heads``) and ``logit_scale`` (``train_logit_scale``).
    A tower without an adapter is left as it is.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: The model has no such tower, already has adapters there, or the targets are
            unknown for its type or match no adaptable layer.
        ImportError: peft is not installed.
    """
    towers = _towers(model)
    peft = _peft()
    planned = []  # every tower checked before any is changed
    for name, adapter in (("image", config.image), ("text", config.text)):
        if adapter is None:
            continue
        tower = towers.get(name)
        if tower is None:
            raise ValueError(f"the model ({type(model).__name__}) has no {name} tower to adapt; it has: {list(towers)}")
        trunk = model.get_submodule(tower.trunk)
        if _tuner_layers(trunk):
            raise ValueError(f"the {name} tower already has adapters; merge_adapters(model) first to add new ones")
        modules = _resolve_targets(trunk, name, tower.kind, adapter.targets)
        planned.append((tower, trunk, _peft_config(adapter, modules)))
    for tower, trunk, peft_config in planned:
        peft.inject_adapter_in_model(peft_config, trunk)
        adapters = {id(parameter) for parameter in _adapter_parameters(trunk).values()}
        for key, parameter in model.named_parameters():
            if _under(key, tower.members):
                trainable = id(parameter) in adapters or (config.train_heads and _under(key, tower.heads))
                parameter.requires_grad_(trainable)
        for module in trunk.modules():
            if isinstance(module, _BatchNorm):
                module.register_forward_pre_hook(_frozen_norm_stats)
    for key in ("logit_scale", "logit_bias"):
        scale = getattr(model, key, None)
        if planned and isinstance(scale, nn.Parameter):
            scale.requires_grad_(config.train_logit_scale)
    return model


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and drop peft's wrappers, in place.

    The result is a plain open_clip model: the state dict has the base model's keys and shapes,
    batch norms update their statistics in ``train()`` mode again, and every parameter of a
    merged tower requires grad, as in a freshly built model. A model without adapters is
    returned unchanged.

    Raises:
        ValueError: A merged weight is not finite (peft's ``safe_merge``).
    """
    towers = _towers(model)
    merged: set[str] = set()
    for name, layer in _tuner_layers(model).items():
        layer.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
        merged |= {tower for tower, t in towers.items() if _under(name, (t.trunk,))}
    for module in model.modules():
        for handle, hook in list(module._forward_pre_hooks.items()):
            if hook is _frozen_norm_stats:
                del module._forward_pre_hooks[handle]
    for key, parameter in model.named_parameters():
        if any(_under(key, towers[tower].members) for tower in merged):
            parameter.requires_grad_(True)
    return model


def trainable_parameters(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{tower: (trainable, total)}`` parameter counts for ``image``, ``text`` and ``other``
    (``logit_scale`` and anything outside the towers); adapter weights count in their tower."""
    towers = _towers(model)
    counts = {tower: [0, 0] for tower in TOWERS}
    for key, parameter in model.named_parameters():
        tower = next((name for name, t in towers.items() if _under(key, t.members)), "other")
        counts[tower][1] += parameter.numel()
        counts[tower][0] += parameter.numel() if parameter.requires_grad else 0
    return {tower: (trainable, total) for tower, (trainable, total) in counts.items()}


def format_trainable(counts: dict[str, tuple[int, int]]) -> str:
    """One log line of :func:`trainable_parameters`: ``image 1,234 of 56,789 (2.17%), ...``."""
    parts = [f"{tower} {a:,} of {b:,} ({100 * a / b:.2f}%)" for tower, (a, b) in counts.items() if b]
    trainable, total = sum(a for a, _ in counts.values()), sum(b for _, b in counts.values())
    return ", ".join([*parts, f"all {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)"])


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """The state-dict keys of the adapters' own weights (``lora_A``, ``lora_B``, ...), in model order."""
    return list(_adapter_parameters(model))


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights and every other trainable parameter, under the model's state-dict keys.

    What a checkpoint needs on top of the base weights, which the model rebuilt with the same
    :class:`AdapterConfig` supplies; tensors are detached, not copied (like ``state_dict``).
    """
    parameters = dict(_adapter_parameters(model))
    parameters.update((key, p) for key, p in model.named_parameters() if p.requires_grad)
    return {key: parameters[key].detach() for key, _ in model.named_parameters() if key in parameters}


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy an :func:`adapter_state_dict` into ``model``, which must expect exactly its keys and shapes.

    Raises:
        ValueError: Keys missing, unexpected or of another shape; the message names a few.
    """
    expected = adapter_state_dict(model)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = sorted(key for key in expected.keys() & state.keys() if tuple(state[key].shape) != expected[key].shape)
    if missing or unexpected or shapes:
        problems = [
            f"{label} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", shapes))
            if keys
        ]
        raise ValueError(
            f"adapter state does not fit the model: {'; '.join(problems)}; "
            "build the model with the AdapterConfig it was saved with"
        )
    with torch.no_grad():
        for key, tensor in expected.items():
            tensor.copy_(state[key])
