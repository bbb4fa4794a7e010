"""Each image embedded once per model and dataset: embedding folders keyed on (model, data).

A folder is named by the hash of the model's fingerprint (name, weights SHA-256, dim) and of the
data (the bytes of the manifest or label table, the split and the filter), so a second run, or a
run with another suite over the same data, reads it instead of embedding. Writing goes through
the embedding folder's resumable path (``embed_folder``: :func:`convirt.embeddings.run.embed_to_folder`,
passed in by the caller, which chooses where it runs), so a run killed midway
goes on from its last complete part; ``complete.json`` is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from convirt._embedding_space import FINGERPRINT_KEYS
from convirt._io import file_sha256, write_json
from convirt.bench.suite import Task
from convirt.data.inputs import build_eval_batches
from convirt.embeddings import load_embedding_folder
from convirt.embeddings.encode import EmbeddingOutput
from convirt.models.checkpoint import LoadedModel
from convirt.models.fingerprint import model_fingerprint

COMPLETE = "complete.json"
# embed_folder(model, make_batches, output, fingerprint, modality, precision=...) -> (count, skipped)
EmbedFolder = Callable[..., tuple[int, int]]


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def data_files(task: Task) -> dict[str, str]:
    """The SHA-256 of each file that says what a task evaluates, by file name: the shard manifest or
    label table, and the split file; two users with equal hashes evaluated the same images and labels."""
    table = task.data / "manifest.json" if task.data.is_dir() else task.data
    files = [path for path in (None if task.url else table, task.split_file) if path is not None and path.is_file()]
    return {path.name: file_sha256(path) for path in files}


def data_sha256(task: Task) -> str:
    """What identifies a task's samples and labels: its files' hashes (an image folder or a folder of shards
    without a manifest: its file names; a pattern or URL: itself), the split, the filter, the label policy and
    the fields read."""
    content: object = data_files(task) or (task.url or str(sorted(p.name for p in task.data.iterdir())))
    policy = {"format": task.label_format, "uncertain": task.uncertain, "images": str(task.images or "")}
    if task.fields:  # named only where given, so that the keys of other tasks stay as they were
        policy["fields"] = str(sorted(task.fields.items()))
    return _digest({"content": content, "split": task.split, "where": task.where, "labels": policy})


def model_key(loaded: LoadedModel) -> str:
    """What identifies a model's embeddings: the compared keys of its fingerprint and its
    preprocessing (a source may override the statistics, ``SOURCE?mean=...``)."""
    fingerprint = model_fingerprint(loaded)
    compared = {key: fingerprint.get(key) for key in FINGERPRINT_KEYS}
    return _digest({**compared, "preprocess": {k: str(v) for k, v in sorted(loaded.preprocess_cfg.items())}})


def cached_embeddings(
    loaded: LoadedModel,
    task: Task,
    modality: str,
    cache: str | os.PathLike[str],
    embed_folder: EmbedFolder,
    batch_size: int = 64,
    made: list[Path] | None = None,
    precision: str = "float32",
) -> EmbeddingOutput:
    """A task's image (or report) embeddings by ``loaded``, embedded unless the cache holds them.

    Args:
        made: Where the folders embedded by this call are appended (the others were read).
        precision: The embedding precision (part of the cache key: bf16 vectors
            are not float32 vectors).
    """
    folder = Path(cache) / f"{model_key(loaded)[:16]}-{data_sha256(task)[:16]}-{modality}-{precision}"
    if not (folder / COMPLETE).is_file():

        def batches(done: set[str]) -> Iterable[dict[str, Any]]:
            return build_eval_batches(
                task.location,
                loaded.preprocess_cfg,
                loaded.tokenizer,
                batch_size,
                skip_keys=done,
                texts_only=modality == "text",
                **task.input_options(),
            )

        embed_folder(loaded.model, batches, folder, model_fingerprint(loaded), modality, precision=precision)
        write_json(folder / COMPLETE, {"task": task.name, "modality": modality})
        if made is not None:
            made.append(folder)
    embedded = load_embedding_folder(folder)
    rows = embedded.rows
    return EmbeddingOutput(
        embeddings=embedded.vectors,
        keys=[row["key"] for row in rows],
        meta=[{k: v for k, v in row.items() if k not in ("key", "text")} for row in rows],
        texts=[str(row.get("text", "")) for row in rows],
        skipped=int(embedded.info.get("skipped_samples", 0)),
    )
