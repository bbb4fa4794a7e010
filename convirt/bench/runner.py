"""`convirt bench`: a suite's tasks and protocols over any models, one result file each.

Each (model, task, protocol, seed) result is its own JSON file, keyed on the model's weights, the
data, the protocol's options and the bootstrap, so a rerun (or a run after ``kill -9``) computes
only what is missing; images are embedded once per model and dataset (:mod:`convirt.bench.cache`).
``results.jsonl`` holds every row and ``leaderboard.md`` / ``.csv`` the headline of each protocol.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import convirt
from convirt._io import write_json, write_jsonl
from convirt.bench.cache import EmbedFolder, cached_embeddings, data_sha256, model_key
from convirt.bench.leaderboard import write_leaderboard
from convirt.bench.protocols import NEEDS_TEXTS, PROTOCOL_FUNCTIONS
from convirt.bench.suite import Suite, Task
from convirt.models.checkpoint import LoadedModel
from convirt.models.sources import load_model

# Protocols whose result depends on the seed beyond its bootstrap (the probes' folds); the others run once.
SEEDED = {"probe"}


@dataclass
class BenchOutput:
    """What a bench run did.

    Attributes:
        rows: Every result row (also in ``results.jsonl``).
        skipped: ``(model, task, protocol or "", reason)`` of what could not run (absent data, image-only models).
        embedded: The embedding folders this run made (the others came from the cache).
        computed: The result files this run computed (the others were read).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str, str, str]] = field(default_factory=list)
    embedded: list[Path] = field(default_factory=list)
    computed: list[Path] = field(default_factory=list)


def model_label(source: str) -> str:
    """A short name for a model source: a checkpoint's file or folder name, else the source itself."""
    path = Path(source)
    if path.exists():
        return path.parent.parent.name if path.name == "last.ckpt" and path.parent.name == "checkpoints" else path.name
    return source


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:48] or "model"


def run_bench(
    suite: Suite,
    sources: list[str],
    output: str | os.PathLike[str],
    embed_folder: EmbedFolder,
    seeds: tuple[int, ...] = (0,),
    bootstrap: int = 1000,
    batch_size: int = 64,
    precision: str = "32-true",
) -> BenchOutput:
    """Run every task and protocol of ``suite`` for each model source, reusing what ``output`` holds.

    Args:
        suite: The suite (:func:`convirt.bench.suite.load_suite`).
        sources: Model sources (:func:`convirt.models.sources.load_model`).
        output: The bench folder: ``embeddings/``, ``results/``, ``results.jsonl``, ``leaderboard.*``.
        embed_folder: The resumable embedding writer (:func:`convirt.training.predict.embed_to_folder`).
        seeds: Seeds of the seeded protocols (the probes); the others use the first.
        bootstrap: Replicates of every CI.
        precision: Of the embeddings: float32 by default, so that a result is the same on every
            machine and equals what `convirt zeroshot` / `convirt probe` give.

    Raises:
        ValueError: No model, or two sources with the same label.
    """
    if not sources:
        raise ValueError("name at least one model (--model SOURCE)")
    labels = [model_label(source) for source in sources]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two models share a name in {labels}: pass paths that differ in their last part")
    out, result = Path(output), BenchOutput()
    for source, label in zip(sources, labels):
        loaded = load_model(source)
        for task in suite.tasks:
            if not task.available:
                result.skipped.append((label, task.name, "", f"no data at {task.data}: {task.obtain}"))
                continue
            run = (seeds, bootstrap, batch_size, precision)
            result.rows += _task_rows(loaded, label, suite, task, out, embed_folder, run, result)
    write_jsonl(out / "results.jsonl", result.rows)
    write_json(out / "skipped.json", [dict(zip(("model", "task", "protocol", "reason"), s)) for s in result.skipped])
    write_leaderboard(result.rows, labels, out)
    return result


def _task_rows(
    loaded: LoadedModel,
    label: str,
    suite: Suite,
    task: Task,
    out: Path,
    embed_folder: EmbedFolder,
    run: tuple[tuple[int, ...], int, int, str],
    result: BenchOutput,
) -> list[dict[str, Any]]:
    seeds, bootstrap, batch_size, precision = run
    data, key = data_sha256(task), model_key(loaded)
    embeddings: dict[str, Any] = {}

    def embedded(modality: str) -> Any:
        if modality not in embeddings:
            embeddings[modality] = cached_embeddings(
                loaded, task, modality, out / "embeddings", embed_folder, batch_size, result.embedded, precision
            )
        return embeddings[modality]

    rows: list[dict[str, Any]] = []
    for protocol, options in task.protocols.items():
        if not loaded.has_text and (protocol in NEEDS_TEXTS or protocol == "zeroshot"):
            result.skipped.append((label, task.name, protocol, "an image-only encoder has no text tower"))
            continue
        for seed in seeds if protocol in SEEDED else seeds[:1]:
            path = out / "results" / f"{_slug(label)}-{key[:8]}" / task.name / f"{protocol}-s{seed}.json"
            about = {
                "model": label,
                "source": loaded.source,
                "model_key": key,
                "suite": suite.name,
                "suite_version": suite.version,
                "task": task.name,
                "protocol": protocol,
                "seed": seed,
                "settings": {**options, "bootstrap": bootstrap, "precision": precision},
                "data_sha256": data,
                "convirt_version": convirt.__version__,
            }
            stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            if stored is None or stored.get("about") != about:
                texts = embedded("text") if protocol in NEEDS_TEXTS else None
                found = PROTOCOL_FUNCTIONS[protocol](loaded, task, options, embedded("image"), texts, seed, bootstrap)
                stored = {"about": about, "rows": found}
                write_json(path, stored)
                result.computed.append(path)
            rows += [{**about, **row} for row in stored["rows"]]
    return rows
