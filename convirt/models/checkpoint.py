"""Re-create a trained model from a training checkpoint, without unpickling anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convirt.models.factory import create_model, create_tokenizer, embed_dim_of, get_preprocess_cfg

# The training module keeps its dual encoder under this attribute name.
MODEL_PREFIX = "model."


@dataclass
class LoadedModel:
    """A model re-created from a checkpoint, with its tokenizer and what it was built from."""

    model: Any
    tokenizer: Any
    model_name: str
    text_model_path: str | None
    checkpoint: str
    embed_dim: int
    # How it was trained, as ``convirt fit`` records it: precision, device, world size, CPU.
    run: dict[str, Any] = field(default_factory=dict)
    # The model source it was loaded from (``convirt.models.sources``): a path, hub or registry name.
    source: str = ""
    # SHA-256 of the file its weights came from, where that is not ``checkpoint`` (None: hub or registry towers).
    weights_sha256: str | None = None
    # Its preprocessing where the registry does not hold it (open_clip folders, hub models, timm models).
    preprocess: dict[str, Any] | None = None
    # Its open_clip ``{"model_cfg", "preprocess_cfg"}`` where the registry entry ``model_name`` does not
    # describe it (a run started from another source: :mod:`convirt.models.initial`).
    config: dict[str, Any] | None = None
    # What a run started from (``source``, ``model_name``, ``weights_sha256``); None: a registry model.
    init: dict[str, Any] | None = None
    # Its adapters (``config``, ``base_sha256``) where it was trained with some (``--model.adapter``).
    adapter: dict[str, Any] | None = None

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """How its images are preprocessed (size, mean, std, resize), as open_clip names them."""
        return dict(self.preprocess) if self.preprocess is not None else get_preprocess_cfg(self.model_name)

    @property
    def has_text(self) -> bool:
        """Whether it has a text tower (an image-only encoder has no tokenizer)."""
        return self.tokenizer is not None

    def require_text(self, what: str) -> None:
        """Refuse ``what`` (a protocol that needs texts) for an image-only encoder.

        Raises:
            ValueError: The model has no text tower; the message names the model and what works.
        """
        if not self.has_text:
            raise ValueError(
                f"{what} needs a text tower, and {self.source or self.model_name} is an image-only encoder: "
                "use `convirt probe`, `convirt embed` (images) or `convirt index` with it"
            )


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", text_model_path: str | None = None
) -> LoadedModel:
    """Load a ``convirt fit`` checkpoint into a model in eval mode.

    The model is rebuilt from the registry name stored in the checkpoint's hyper-parameters
    (without downloading pretrained weights) and its trained weights are loaded, strict. A
    model trained with a local text-model folder needs that folder's config and tokenizer
    (not its weights): ``text_model_path`` replaces the stored path, e.g. after a move.

    Raises:
        FileNotFoundError: No file at ``path``, or the checkpoint's text-model folder is gone.
        ValueError: The file is not a convirt checkpoint.
    """
    path = Path(path)
    state = _read_state(path)
    hparams = state.get("hyper_parameters", {}) if isinstance(state, dict) else {}
    if "model_name" not in hparams or "state_dict" not in state:
        raise ValueError(f"{path} is not a convirt checkpoint (no model_name hyper-parameter or state_dict)")
    stored = hparams.get("text_model_path")
    text_model_path = text_model_path or stored
    if text_model_path and text_model_path == stored and _looks_local(stored) and not Path(stored).is_dir():
        raise FileNotFoundError(
            f"{path} was trained with the local text model {stored}, which is not there (from {Path.cwd()}): pass "
            "its folder (`--text-model DIR` of the commands, text_model_path= of load_checkpoint), or share models as "
            "`convirt export` folders"
        )
    weights = {k[len(MODEL_PREFIX) :]: v for k, v in state["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    if hparams.get("init"):
        return _load_started(path, state, hparams, text_model_path, weights, device)
    if hparams.get("adapter"):  # the base is the registry's towers, rebuilt as the run built them
        from convirt.models.adapted import load_adapted, registry_base

        model = registry_base(hparams["model_name"], bool(hparams.get("pretrained", True)), text_model_path)
        load_adapted(model, state, weights, str(path))
    else:
        model = create_model(hparams["model_name"], pretrained=False, text_model_path=text_model_path)
        model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=create_tokenizer(hparams["model_name"], text_model_path=text_model_path),
        model_name=hparams["model_name"],
        text_model_path=text_model_path,
        checkpoint=str(path),
        embed_dim=embed_dim_of(hparams["model_name"]),
        source=str(path),
        run=_run_of(state),
        adapter=state.get("convirt_adapter"),
    )


# Where a checkpoint records what its run started from (:attr:`convirt.models.initial.InitialModel.record`).
INIT_KEY = "convirt_init"


def _load_started(
    path: Path,
    state: dict[str, Any],
    hparams: dict[str, Any],
    text_model_path: str | None,
    weights: dict[str, torch.Tensor],
    device: str | torch.device,
) -> LoadedModel:
    """A checkpoint of a run started from another source: its architecture is that source's,
    loaded again (it must be where the run found it), with the checkpoint's weights over it."""
    from convirt.models.initial import initial_model

    init = str(hparams["init"])
    try:
        start = initial_model(init, hparams["model_name"], text_model_path)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{path} started from {init}, which rebuilds its architecture and is not there ({error}); "
            "share trained models as `convirt export` folders"
        ) from error
    if hparams.get("adapter"):
        from convirt.models.adapted import load_adapted

        load_adapted(start.model, state, weights, str(path))
    else:
        start.model.load_state_dict(weights, strict=True)
    start.model.to(device).eval()
    return LoadedModel(
        model=start.model,
        tokenizer=start.tokenizer,
        model_name=start.model_name,
        text_model_path=text_model_path,
        checkpoint=str(path),
        embed_dim=int(start.config["model_cfg"]["embed_dim"]),
        source=str(path),
        run=_run_of(state),
        adapter=state.get("convirt_adapter"),
        preprocess=start.preprocess,
        config=start.config,
        init=dict(state.get(INIT_KEY) or start.record),
    )


def read_run(path: str | Path) -> dict[str, Any]:
    """How a ``convirt fit`` checkpoint was trained (precision, device, world size, CPU, training
    shards), without building its model; ``{}`` for a checkpoint from before this was recorded.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is not a readable checkpoint.
    """
    state = _read_state(Path(path))
    return _run_of(state) if isinstance(state, dict) else {}


def _run_of(state: dict[str, Any]) -> dict[str, Any]:
    """What ``convirt fit`` recorded (``precision_choice``: how its precision was chosen), plus
    ``train_shards``: the shard folder its data module read
    (as the config named it, relative to where the run started), for the leakage audit."""
    run = dict(state.get("convirt_run") or {})
    if state.get("convirt_precision"):  # how the precision was chosen (timed on a CPU with native bf16)
        run["precision_choice"] = dict(state["convirt_precision"])
    shards = (state.get("datamodule_hyper_parameters") or {}).get("shards")
    if shards:
        run["train_shards"] = str(shards)
    return run


def _read_state(path: Path) -> Any:
    """The checkpoint's contents, unpickling nothing but tensors and plain types.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: The file is not a readable checkpoint.
    """
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from error


def _looks_local(name: str) -> bool:
    """A folder path rather than a hub name (``org/model``): absolute, relative with ``./``, or deeper."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).is_dir()
