"""What `convirt export --format onnx --quantize int8` costs on the demo: AUROC, P@5, agreement and speed.

The demo checkpoint is exported twice (float32, and with the image tower's weights quantized to int8 by
onnxruntime's dynamic quantization); each of torch, the float32 export and the int8 export embeds the
demo's test split and is scored as `make demo` scores it: zero-shot mean AUROC with the phantom
descriptors, and label precision@5 of image-to-image search over an index of those vectors (each image
leaving itself and its patient out). Also each one's least cosine to torch's vectors and its pass over a
batch of 16 images. Writes the ``onnx-int8`` section of BENCHMARKS.md. `python benchmarks/onnx_int8.py`
(a few minutes; `make demo` first).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _markdown import commit, machine_line, write_section
from _process import convirt

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "artifacts" / "demo"
CHECKPOINT = DEMO / "checkpoints" / "last.ckpt"


def score(loaded: Any, work: Path, reference: np.ndarray | None) -> dict[str, Any]:
    """Embed the demo's test split with ``loaded``; its mean zero-shot AUROC, P@5, agreement and speed."""
    import torch

    from convirt.bench import evaluate_index_folder
    from convirt.data.inputs import build_eval_batches
    from convirt.embeddings.encode import batch_rows, embed_batches
    from convirt.models.fingerprint import model_fingerprint
    from convirt.retrieval import build_index_folder
    from convirt.zeroshot import ZeroShotClassifier, load_descriptors
    from convirt.zeroshot.evaluate import aligned_labels
    from convirt.zeroshot.metrics import mean_defined, per_finding_auroc

    batches = list(build_eval_batches(str(DEMO / "shards"), loaded.preprocess_cfg, loaded.tokenizer, 64, split="test"))
    embedded = embed_batches(loaded.model, batches, progress=False)
    descriptors = load_descriptors("phantom")
    classifier = ZeroShotClassifier(loaded.model, loaded.tokenizer, descriptors)
    probabilities = classifier.predict_features(torch.from_numpy(embedded.embeddings)).probabilities.numpy()
    labels = aligned_labels(embedded.meta, descriptors.finding_names, None)
    aurocs = per_finding_auroc(labels, probabilities, descriptors.finding_names)
    rows = [row for batch in batches for row in batch_rows(batch)]
    index = work / "index"
    build_index_folder(embedded.embeddings, rows, index, fingerprint=model_fingerprint(loaded))
    retrieval = evaluate_index_folder(index, k=5)
    images = batches[0]["image"][:16]
    with torch.inference_mode():
        loaded.model.encode_image(images)
        spent = []
        for _ in range(5):
            start = time.perf_counter()
            loaded.model.encode_image(images)
            spent.append((time.perf_counter() - start) * 1000)
    cosine = None if reference is None else float((embedded.embeddings * reference).sum(axis=1).min())
    return {
        "vectors": embedded.embeddings,
        "auroc": mean_defined(aurocs),
        "p_at_5": float(retrieval["precision_at_5"]),
        "least_cosine": cosine,
        "ms_16": float(np.median(spent)),
        "count": len(rows),
    }


def main() -> None:
    import torch

    from convirt.models.fingerprint import model_fingerprint
    from convirt.models.onnx_export import export_onnx
    from convirt.models.onnx_runtime import load_onnx_model
    from convirt.models.sources import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--work", default=str(ROOT / "artifacts" / "onnx-int8"))
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (the server's default)")
    args = parser.parse_args()
    if not CHECKPOINT.is_file() or not (DEMO / "shards").is_dir():
        raise SystemExit("run `make demo` first: this benchmark scores its checkpoint on its test shards")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    folders = {"onnx float32": work / "demo-onnx", "onnx int8 image tower": work / "demo-onnx-int8"}
    convirt("export", "--format", "onnx", "--model", str(CHECKPOINT), "--output", str(folders["onnx float32"]))
    models = {"torch": load_model(str(CHECKPOINT))}
    # `--quantize int8` refuses this tower (its vectors too far from PyTorch's): exported anyway, to measure why.
    fingerprint = model_fingerprint(models["torch"])
    export_onnx(models["torch"], folders["onnx int8 image tower"], fingerprint, "int8", quantized_min_cosine=-1.0)
    models.update({name: load_onnx_model(folder, threads=args.threads) for name, folder in folders.items()})
    results: dict[str, dict[str, Any]] = {}
    for name, loaded in models.items():
        with tempfile.TemporaryDirectory() as scratch:
            reference = results["torch"]["vectors"] if results else None
            results[name] = score(loaded, Path(scratch), reference)
    command = " ".join(["python benchmarks/onnx_int8.py", *sys.argv[1:]])
    lines = [
        "## ONNX export with an int8 image tower (`--quantize int8`) on the demo",
        "",
        f"{machine_line('float32; int8 weights in the quantized image tower')}; commit {commit()}. Command: "
        f"`{command}`. The demo checkpoint as torch, as its float32 ONNX export and as the export whose image "
        "tower onnxruntime quantized (dynamic: int8 weights, activations quantized on the fly; the text tower "
        "float32; written by the library past the check that makes `--quantize int8` refuse this tower), each "
        f"embedding the demo's {results['torch']['count']} test images: zero-shot mean AUROC "
        "(phantom descriptors), label P@5 of image-to-image search (itself and its patient left out), the least "
        "cosine of its vectors to torch's, and the image tower's pass over 16 images (median of 5).",
        "",
        "| model | mean AUROC | P@5 | least cosine to torch | 16 images, ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        cosine = "" if result["least_cosine"] is None else f"{result['least_cosine']:.4f}"
        lines.append(f"| {name} | {result['auroc']:.4f} | {result['p_at_5']:.4f} | {cosine} | {result['ms_16']:.1f} |")
    torch_, float32, int8 = results["torch"], results["onnx float32"], results["onnx int8 image tower"]
    lines += [
        "",
        f"Cost of int8: mean AUROC {int8['auroc'] - torch_['auroc']:+.4f}, "
        f"P@5 {int8['p_at_5'] - torch_['p_at_5']:+.4f}, "
        f"the image pass {int8['ms_16'] / float32['ms_16']:.1f}x the float32 export's time: `--quantize int8` refuses "
        "this tower (its check's least cosine to PyTorch is under 0.99).",
    ]
    text = "\n".join(lines)
    write_section(Path(args.output), "onnx-int8", text)
    print(text)


if __name__ == "__main__":
    main()
