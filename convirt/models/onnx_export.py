"""Export a model's towers as ONNX graphs, checked against PyTorch before the folder is written.

``image.onnx`` takes ``(B, 3, H, W)`` float32 images and ``text.onnx`` ``(B, L)`` int64 token ids (B and L
dynamic); each gives the *unnormalised* ``encode_image`` / ``encode_text`` features, exactly as the torch
model does (embedding normalises after the model, as it does for torch). The text graph takes the ids
alone: open_clip's ``HFTextEncoder`` makes its attention mask from them (``ids != pad_token_id``) inside
``forward``, so the graph reproduces ``encode_text`` on padded and trimmed batches alike.

Exporter: the TorchScript one (``torch.onnx.export(dynamo=False)``), the dynamo one where it fails. On
torch 2.14 both give graphs within 2e-6 of PyTorch for ``test-tiny``, ``test-tiny-vit`` and
``demo-effnet-minilm`` (batches of 1 and 7, texts padded and trimmed); the TorchScript exporter takes
0.6-0.9 s a tower where dynamo takes 4-8 s (its ``torch.export`` trace and decompositions), which keeps
the command quick and the test suite, which exports in every run, within its time. Its known weakness,
that a trace keeps only the branch its example took, is caught rather than shipped: the branches it
warns of (transformers' mask padding, SDPA's causal flag) depend on shapes that are the same for every
batch, and every export is checked against PyTorch on other batch sizes and lengths than the trace's
(:func:`check_against_torch`). The TorchScript exporter is deprecated since torch 2.9: where a torch no
longer has it, or it cannot trace a tower, dynamo exports that tower (``onnx.json`` records which).

The folder layout and the runtime that reads it: :mod:`convirt.models.onnx_runtime`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convirt._io import atomic_folder, file_sha256, json_safe, write_json
from convirt.models.checkpoint import LoadedModel
from convirt.models.onnx_runtime import (
    IMAGE_FILE,
    META_FILE,
    PROVENANCE_FILE,
    TEXT_FILE,
    TOKENIZER_FOLDER,
    OnnxDualEncoder,
    require_onnx,
)

# The newest opset both exporters write on torch 2.14 (dynamo's default); onnxruntime >= 1.17 runs it.
OPSET = 20
# Least cosine of every checked vector to PyTorch's for the export to be written.
MIN_COSINE = 0.9999
CHECK_BATCHES = (1, 7)
QUANTIZE = ("int8",)
# Least cosine of an int8 image tower's vectors to PyTorch's for it to be written. Measured on the demo
# (EfficientNet-Lite0): 0.73 on the check's images, mean AUROC 0.95 -> 0.62, P@5 0.90 -> 0.32 and a
# 10x slower pass (benchmarks/onnx_int8.py): dynamic quantization suits MatMul-heavy towers, not convolutions.
QUANTIZED_MIN_COSINE = 0.99
# Report-like texts of several lengths for the check: padded and trimmed batches both run.
_CHECK_TEXTS = (
    "no acute cardiopulmonary abnormality",
    "There is a moderate right pleural effusion with adjacent atelectasis.",
    "heart size is enlarged",
    "Lungs are clear. No pneumothorax.",
    "small left apical pneumothorax, unchanged from prior",
    "normal chest",
    "Interval increase in bilateral perihilar opacities, consistent with pulmonary edema; cardiomegaly.",
)


class OnnxMismatchError(ValueError):
    """The exported graphs do not give PyTorch's vectors: nothing was written."""


@dataclass
class OnnxExportOutput:
    """What :func:`export_onnx` wrote.

    Attributes:
        folder: The export folder (absolute).
        opset: The ONNX opset of its graphs.
        least_cosine: Per tower (``image``, ``text``), the least cosine of a checked vector to PyTorch's.
        quantize: ``int8`` where the image tower was quantized, else ``None``.
        files: The files written.
    """

    folder: Path
    opset: int
    least_cosine: dict[str, float]
    quantize: str | None = None
    files: list[str] = field(default_factory=list)


class _Tower(nn.Module):
    """One tower's ``encode_*`` as a module's ``forward``, for the exporter."""

    def __init__(self, model: Any, modality: str) -> None:
        super().__init__()
        self.model, self.modality = model, modality
        self.eval()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        encode = self.model.encode_image if self.modality == "image" else self.model.encode_text
        return encode(inputs)  # type: ignore[no-any-return]


def _image_size(preprocess_cfg: dict[str, Any]) -> tuple[int, int]:
    size = preprocess_cfg.get("size", 224)
    return (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[1]))


def tokenizer_spec(tokenizer: Any) -> dict[str, Any] | None:
    """What reloads ``tokenizer`` (see :func:`convirt.models.onnx_runtime.load_onnx_tokenizer`); its files
    are saved by :func:`_save_tokenizer`.

    Raises:
        ValueError: A tokenizer kind the runtime cannot rebuild.
    """
    if tokenizer is None:
        return None
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer, get_clean_fn

    cleans = {get_clean_fn(name): name for name in ("canonicalize", "lower", "whitespace")}
    clean = cleans.get(getattr(tokenizer, "clean_fn", None))
    length = int(tokenizer.context_length)
    if isinstance(tokenizer, HFTokenizer) and not getattr(tokenizer, "tokenizer_mode", ""):
        return {"kind": "hf", "context_length": length, "clean": clean, "strip_sep_token": tokenizer.strip_sep_token}
    if (
        isinstance(tokenizer, SimpleTokenizer)
        and tokenizer.reduction_fn is None
        and len(tokenizer.all_special_ids) == 2
    ):
        return {"kind": "open_clip_simple", "context_length": length, "clean": clean}
    raise ValueError(
        f"the ONNX export rebuilds Hugging Face and open_clip's plain BPE tokenizers; this model's is a "
        f"{type(tokenizer).__name__} with options it cannot record: export it with --format open_clip"
    )


def _export_tower(model: Any, modality: str, example: torch.Tensor, path: Path) -> str:
    """Write one tower's graph (batch, and a text's length, dynamic); the exporter that wrote it.

    Raises:
        ValueError: Neither exporter could export it.
    """
    import warnings

    name = "images" if modality == "image" else "tokens"
    axes = {name: {0: "batch", 1: "length"} if modality == "text" else {0: "batch"}, "features": {0: "batch"}}
    options: dict[str, Any] = {"input_names": [name], "output_names": ["features"], "opset_version": OPSET}
    tower = _Tower(model, modality)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' notes on their own internals and deprecation
        try:
            torch.onnx.export(tower, (example,), str(path), dynamo=False, dynamic_axes=axes, **options)
            return "torchscript"
        except Exception as error:  # an op the tracer cannot export, or a torch without the legacy exporter
            first = error
        # A graph file holds at most 2 GB: larger weights go beside it (NAME.onnx.data).
        large = sum(p.numel() * p.element_size() for p in model.parameters()) > 1_500_000_000
        shapes = {"inputs": {axis: torch.export.Dim.DYNAMIC for axis in axes[name]}}
        try:
            torch.onnx.export(
                tower, (example,), str(path), dynamo=True, dynamic_shapes=shapes, external_data=large, **options
            )
        except Exception as error:
            said = str(first).splitlines()[0][:200] if str(first) else ""
            raise ValueError(
                f"neither ONNX exporter could export the {modality} tower ({type(first).__name__}: {said}; "
                f"dynamo: {type(error).__name__}): export it with --format open_clip"
            ) from error
        return "dynamo"


def _check_inputs(loaded: LoadedModel, modality: str, size: int) -> list[torch.Tensor]:
    """Inputs of batch ``size`` the check runs: random images; report texts trimmed of their shared
    padding (as :class:`convirt.embeddings.encode.Encoder` sends them) and at the full context length."""
    if modality == "image":
        generator = torch.Generator().manual_seed(size)
        height, width = _image_size(loaded.preprocess_cfg)
        return [torch.randn(size, 3, height, width, generator=generator)]
    tokens = loaded.tokenizer([_CHECK_TEXTS[i % len(_CHECK_TEXTS)] for i in range(size)])
    pad = getattr(getattr(loaded.tokenizer, "tokenizer", None), "pad_token_id", None)
    used = (tokens != pad).any(dim=0).nonzero() if pad is not None else torch.zeros(0)
    return [tokens, tokens[:, : int(used.max()) + 1]] if len(used) else [tokens]


def _least_cosine(loaded: LoadedModel, runtime: OnnxDualEncoder, modality: str) -> float:
    least = 1.0
    for size in CHECK_BATCHES:
        for inputs in _check_inputs(loaded, modality, size):
            with torch.no_grad():
                expected = _Tower(loaded.model, modality)(inputs.to(_device(loaded.model))).float().cpu()
            got = runtime.encode_image(inputs) if modality == "image" else runtime.encode_text(inputs)
            cosine = torch.nn.functional.cosine_similarity(got.double(), expected.double(), dim=-1)
            least = min(least, float(cosine.min()))
    return least


def check_against_torch(loaded: LoadedModel, runtime: OnnxDualEncoder) -> dict[str, float]:
    """Per tower, the least cosine of onnxruntime's vectors to PyTorch's, on random images and report
    texts (batches of :data:`CHECK_BATCHES`; texts padded to the context length and trimmed).

    Raises:
        OnnxMismatchError: A tower's least cosine is below :data:`MIN_COSINE`.
    """
    least = {}
    for modality in ("image", "text") if runtime.has_text else ("image",):
        least[modality] = cosine = _least_cosine(loaded, runtime, modality)
        if not cosine >= MIN_COSINE:
            raise OnnxMismatchError(
                f"the ONNX {modality} tower disagrees with PyTorch (least cosine {cosine:.6f} < {MIN_COSINE} over "
                f"batches of {' and '.join(map(str, CHECK_BATCHES))}): nothing written; export with --format open_clip"
            )
    return least


def _device(model: Any) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _save_tokenizer(tokenizer: Any, folder: Path) -> None:
    if getattr(tokenizer, "tokenizer", None) is not None and hasattr(tokenizer.tokenizer, "save_pretrained"):
        tokenizer.tokenizer.save_pretrained(str(folder / TOKENIZER_FOLDER))


def export_onnx(
    loaded: LoadedModel,
    output: str | os.PathLike[str],
    provenance: dict[str, Any] | None = None,
    quantize: str | None = None,
    quantized_min_cosine: float = QUANTIZED_MIN_COSINE,
) -> OnnxExportOutput:
    """Write ``loaded``'s towers as ONNX graphs with their tokenizer, preprocessing and provenance, atomically.

    Before the folder replaces ``output``, onnxruntime runs the graphs on random images and report texts
    (batches of 1 and 7, texts padded and trimmed) beside PyTorch; every vector must lie at cosine
    :data:`MIN_COSINE` or more to PyTorch's.

    Args:
        loaded: The model (any source with ``encode_image``, and ``encode_text`` where it has a tokenizer).
        output: The folder to create (replaced if it exists).
        provenance: Written to ``convirt.json`` (:func:`convirt.models.fingerprint.model_fingerprint`).
        quantize: ``int8``: the image tower's weights quantized (onnxruntime's dynamic quantization).
            Its vectors then differ from PyTorch's, so the folder gets a weights hash of its own: indexes
            are rebuilt with it.
        quantized_min_cosine: The int8 tower is refused where a checked vector lies at a lower cosine to
            PyTorch's (nothing written).

    Raises:
        OnnxMismatchError: A tower's graph gives other vectors than PyTorch, or the int8 tower too far
            from them (nothing is written).
        OnnxUnavailableError: onnx, onnxscript or onnxruntime is not installed.
        ValueError: An unknown ``quantize``, or a tokenizer the runtime cannot rebuild.
    """
    if quantize is not None and quantize not in QUANTIZE:
        raise ValueError(f"unknown quantization {quantize!r}; known: {', '.join(QUANTIZE)}")
    require_onnx("onnx", "onnxscript", "onnxruntime")
    spec = tokenizer_spec(loaded.tokenizer)
    model = loaded.model.eval()
    out = Path(output).resolve()
    with atomic_folder(out) as tmp:
        height, width = _image_size(loaded.preprocess_cfg)
        device = _device(model)
        images = torch.randn(2, 3, height, width, device=device)
        exporters = {"image": _export_tower(model, "image", images, tmp / IMAGE_FILE)}
        meta: dict[str, Any] = {
            "format": 1,
            "opset": OPSET,
            "torch": torch.__version__,
            "model_name": loaded.model_name,
            "embed_dim": loaded.embed_dim,
            "logit_scale": float(model.logit_scale.detach().float().cpu()) if hasattr(model, "logit_scale") else 0.0,
            "image": {
                "file": IMAGE_FILE,
                "input": "images",
                "output": "features",
                "shape": ["batch", 3, height, width],
            },
            "text": None,
            "tokenizer": spec,
            "preprocess_cfg": json_safe(dict(loaded.preprocess_cfg)),
        }
        if spec is not None:
            tokens = loaded.tokenizer([_CHECK_TEXTS[0], _CHECK_TEXTS[1]])
            exporters["text"] = _export_tower(model, "text", tokens.to(device), tmp / TEXT_FILE)
            meta["text"] = {"file": TEXT_FILE, "input": "tokens", "output": "features", "shape": ["batch", "length"]}
            _save_tokenizer(loaded.tokenizer, tmp)
        meta["exporter"] = exporters
        write_json(tmp / META_FILE, meta)
        least = check_against_torch(loaded, OnnxDualEncoder(tmp))
        meta["check"] = {"batch_sizes": list(CHECK_BATCHES), "min_cosine": MIN_COSINE, "least_cosine": least}
        if quantize:
            least["image_int8"] = _quantize_image(loaded, tmp, meta, quantized_min_cosine)
        write_json(tmp / META_FILE, meta)
        write_json(tmp / PROVENANCE_FILE, {"model_name": loaded.model_name, **(provenance or {})})
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return OnnxExportOutput(out, OPSET, least, quantize, files)


def _quantize_image(loaded: LoadedModel, folder: Path, meta: dict[str, Any], bound: float) -> float:
    """Quantize ``image.onnx`` in place (int8 weights, activations quantized on the fly); its least cosine
    to PyTorch, refused below ``bound``. ``meta`` records the quantization and the new weights hash."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = folder / IMAGE_FILE
    staged = folder / "image.float.onnx"
    source.rename(staged)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice to pre-process, on the root logger
    try:
        quantize_dynamic(str(staged), str(source), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    staged.unlink()
    least = _least_cosine(loaded, OnnxDualEncoder(folder), "image")
    if not least >= bound:
        raise OnnxMismatchError(
            f"int8 moves this image tower's vectors too far from PyTorch's (least cosine {least:.4f} < {bound}): "
            "nothing written; export without --quantize"
        )
    meta["quantized"] = {"image": "int8 (onnxruntime dynamic quantization)", "least_cosine": least}
    meta["weights_sha256"] = file_sha256(source)
    return least
