"""Running a ``convirt export --format onnx`` folder with onnxruntime, behind the torch model's interface.

The folder holds ``image.onnx`` (``(B, 3, H, W)`` float32 images -> ``(B, D)`` features) and, for a dual
encoder, ``text.onnx`` (``(B, L)`` int64 token ids -> ``(B, D)``): the *unnormalised* ``encode_image`` /
``encode_text`` features, exactly as the torch model gives them. ``onnx.json`` names the opset, the
towers' inputs, the tokenizer (its files in ``tokenizer/``), the preprocessing and the logit scale;
``convirt.json`` the fingerprint of the weights it was exported from. :func:`load_onnx_model` makes it a
:class:`~convirt.models.checkpoint.LoadedModel` whose ``model`` is an :class:`OnnxDualEncoder`:
``encode_image`` / ``encode_text`` take and give torch tensors, so the one embedding path
(:class:`convirt.embeddings.encode.Encoder`) and the service use it unchanged.

onnxruntime is imported only when a folder is loaded (``pip install 'convirt[onnx]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from convirt.models.checkpoint import LoadedModel

IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
META_FILE = "onnx.json"
PROVENANCE_FILE = "convirt.json"
TOKENIZER_FOLDER = "tokenizer"
INSTALL = "pip install 'convirt[onnx]'"
# Tried in this order where onnxruntime offers them (the CUDA one only in onnxruntime-gpu builds).
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxUnavailableError(OSError):
    """onnxruntime (or, to export, onnx and onnxscript) is not installed."""


def require_onnx(*modules: str) -> list[ModuleType]:
    """The named modules imported (default ``onnxruntime``), or one line saying how to install them.

    Raises:
        OnnxUnavailableError: One of them is not installed.
    """
    import importlib

    found = []
    for name in modules or ("onnxruntime",):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            raise OnnxUnavailableError(f"{name} is not installed: {INSTALL}") from None
    return found


def is_onnx_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a ``convirt export --format onnx`` folder (it holds ``image.onnx``)."""
    return Path(path).is_dir() and (Path(path) / IMAGE_FILE).is_file()


def create_session(
    path: str | os.PathLike[str], threads: int | None = None, providers: Sequence[str] | None = None
) -> Any:
    """An onnxruntime session of one graph.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (default: ``torch.get_num_threads()``, the cores this process may use, or
            what ``convirt serve --threads`` set); one graph runs at a time, so no inter-op threads.
        providers: Execution providers in order of preference (default: CUDA where this onnxruntime build
            offers it, then the CPU).
    """
    (ort,) = require_onnx("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings name the graph's internals
    # Idle threads sleep instead of spinning: the service decodes uploads and searches the index
    # on the same cores between forward passes.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    available = ort.get_available_providers()
    chosen = [p for p in (providers or PROVIDERS) if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)


class OnnxDualEncoder:
    """``encode_image`` / ``encode_text`` of an ONNX export folder, run by onnxruntime.

    Torch tensors in and out (on the CPU), as the torch model's methods take and give them; there are no
    parameters and no gradients (saliency maps need the torch model).

    Args:
        folder: The export folder.
        threads: Intra-op threads of each session (see :func:`create_session`).
        providers: onnxruntime execution providers (see :func:`create_session`).

    Attributes:
        logit_scale: The log logit scale of the exported model, as a 0-d tensor (``logit_scale.exp()``).
        meta: ``onnx.json``.
        providers: The providers the image session runs on.
    """

    runtime = "onnx"

    def __init__(
        self, folder: str | os.PathLike[str], threads: int | None = None, providers: Sequence[str] | None = None
    ) -> None:
        self.folder = Path(folder)
        self.meta = read_onnx_meta(self.folder)
        self._image = create_session(self.folder / self.meta["image"]["file"], threads, providers)
        text = self.meta.get("text")
        self._text = create_session(self.folder / text["file"], threads, providers) if text else None
        self.logit_scale = torch.tensor(float(self.meta["logit_scale"]))
        self.providers: list[str] = list(self._image.get_providers())

    @property
    def has_text(self) -> bool:
        return self._text is not None

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``(B, D)`` float32 features of ``(B, 3, H, W)`` preprocessed images."""
        if images.ndim != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        pixels = images.detach().to("cpu", torch.float32).contiguous().numpy()
        features = torch.from_numpy(self._run(self._image, self.meta["image"], pixels))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``(B, D)`` float32 features of ``(B, L)`` token ids (padding masked inside the graph, as the
        torch tower masks it)."""
        if self._text is None:
            raise ValueError(f"{self.folder} holds no text tower (an image-only encoder's export)")
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (B, L), got shape {tuple(tokens.shape)}")
        ids = tokens.detach().to("cpu", torch.int64).contiguous().numpy()
        features = torch.from_numpy(self._run(self._text, self.meta["text"], ids))
        return F.normalize(features, dim=-1) if normalize else features

    @staticmethod
    def _run(session: Any, tower: dict[str, Any], inputs: Any) -> Any:
        return session.run([tower["output"]], {tower["input"]: inputs})[0]

    def to(self, *args: Any, **kwargs: Any) -> OnnxDualEncoder:
        """Itself: the sessions chose their providers when they were made."""
        return self

    def eval(self) -> OnnxDualEncoder:
        """Itself: a graph has no training mode."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxDualEncoder:
        # Sessions cannot be copied, and need not be: their run() is safe to call from several threads.
        return self


def read_onnx_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``onnx.json`` of an export folder.

    Raises:
        ValueError: ``folder`` is no ONNX export folder, or its ``onnx.json`` is missing or unreadable.
    """
    folder = Path(folder)
    if not is_onnx_folder(folder):
        raise ValueError(
            f"{folder} is not an ONNX export folder (no {IMAGE_FILE}): write one with "
            f"`convirt export --format onnx --model {folder} --output DIR`, then pass DIR"
            if folder.is_file()
            else f"`convirt export --format onnx --model SOURCE --output {folder}`"
        )
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        meta["image"]["file"], meta["logit_scale"], meta["embed_dim"]  # noqa: B018 (the keys every reader needs)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{folder / META_FILE} is missing or unreadable ({type(error).__name__}): export the folder again"
        ) from None
    return dict(meta)


def load_onnx_tokenizer(folder: str | os.PathLike[str], spec: dict[str, Any] | None) -> Any:
    """The tokenizer an export folder records (``None`` for an image-only export).

    ``spec["kind"]`` is ``hf`` (an open_clip ``HFTokenizer`` over the folder's ``tokenizer/`` files) or
    ``open_clip_simple`` (open_clip's ``SimpleTokenizer``, whose vocabulary ships with open_clip).

    Raises:
        ValueError: An unknown kind.
    """
    if spec is None:
        return None
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    length, clean = int(spec["context_length"]), spec.get("clean")
    if spec["kind"] == "hf":
        options = {"clean": clean} if clean else {}
        return HFTokenizer(
            str(Path(folder) / TOKENIZER_FOLDER),
            context_length=length,
            strip_sep_token=bool(spec.get("strip_sep_token", False)),
            **options,
        )
    if spec["kind"] == "open_clip_simple":
        return SimpleTokenizer(context_length=length, **({"clean": clean} if clean else {}))
    raise ValueError(f"{folder}: unknown tokenizer kind {spec['kind']!r}; known: hf, open_clip_simple")


def load_onnx_model(
    folder: str | os.PathLike[str], threads: int | None = None, providers: Sequence[str] | None = None
) -> LoadedModel:
    """An ONNX export folder as a :class:`LoadedModel`: an :class:`OnnxDualEncoder`, its tokenizer and
    preprocessing, and the fingerprint of the weights it was exported from (so it meets indexes and
    embeddings the torch model made: the export checked that both give the same vectors).

    Raises:
        ValueError: ``folder`` is no ONNX export folder, or its files are unreadable.
        OnnxUnavailableError: onnxruntime is not installed.
    """
    folder = Path(folder)
    meta = read_onnx_meta(folder)
    try:
        provenance = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        provenance = {}
    model = OnnxDualEncoder(folder, threads, providers)
    return LoadedModel(
        model=model,
        tokenizer=load_onnx_tokenizer(folder, meta.get("tokenizer")),
        model_name=str(meta.get("model_name") or provenance.get("model_name") or folder.name),
        text_model_path=None,
        checkpoint="",
        embed_dim=int(meta["embed_dim"]),
        source=str(folder),
        # A quantized export is a space of its own: its own hash, so that vectors are remade with it.
        weights_sha256=meta.get("weights_sha256", provenance.get("checkpoint_sha256")),
        preprocess=dict(meta["preprocess_cfg"]),
    )
