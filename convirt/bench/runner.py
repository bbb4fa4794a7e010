"""`convirt bench`: a suite's tasks and protocols over any models, one result file each.

Each (model, task, protocol, seed) result is its own JSON file, keyed on the model's weights, the
data, the protocol's options and the bootstrap, so a rerun (or a run after ``kill -9``) computes
only what is missing; images are embedded once per model and dataset (:mod:`convirt.bench.cache`).
``results.jsonl`` holds every row, ``leaderboard.md`` / ``.csv`` the headline of each protocol and
``figures/`` a bar chart per task (headlines with CIs) and zero-shot ROC curves.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import convirt
from convirt._embedding_space import canonical_precision
from convirt._io import write_json, write_jsonl
from convirt.bench.cache import EmbedFolder, cached_embeddings, data_files, data_sha256, model_key
from convirt.bench.figures import write_figures
from convirt.bench.finetune import Finetune, finetune_protocol
from convirt.bench.leaderboard import write_leaderboard
from convirt.bench.leakage import audit, cached_signatures, training_task, without
from convirt.bench.protocols import NEEDS_LABELS, NEEDS_TEXT_TOWER, NEEDS_TEXTS, PROTOCOL_FUNCTIONS, TEXT_ONLY
from convirt.bench.suite import Suite, Task
from convirt.data.inputs import is_shard_folder
from convirt.data.labels import has_labels, missing_labels
from convirt.models.checkpoint import LoadedModel
from convirt.models.sources import load_model
from convirt.retrieval.duplicates import DETAIL_THRESHOLD, NEAR_THRESHOLD

# Protocols whose result depends on the seed beyond its bootstrap (folds, training); the others run once.
SEEDED = {"probe", "finetune"}


@dataclass
class BenchOutput:
    """What a bench run did.

    Attributes:
        rows: Every result row (also in ``results.jsonl``).
        skipped: ``(model, task, protocol or "", reason)`` of what could not run (absent data, image-only models).
        embedded: The embedding folders this run made (the others came from the cache).
        computed: The result files this run computed (the others were read).
        scores: ``(model, task, protocol) -> `` the per-image scores a protocol keeps (zero-shot's).
        figures: The figures written.
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str, str, str]] = field(default_factory=list)
    embedded: list[Path] = field(default_factory=list)
    computed: list[Path] = field(default_factory=list)
    scores: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def model_label(source: str) -> str:
    """A short name for a model source: a checkpoint's file or folder name, else the source itself."""
    path = Path(source)
    if path.exists():
        return path.parent.parent.name if path.name == "last.ckpt" and path.parent.name == "checkpoints" else path.name
    return source


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:48] or "model"


@dataclass(frozen=True)
class BenchSettings:
    """How a bench run evaluates (see :func:`run_bench`)."""

    seeds: tuple[int, ...] = (0,)
    bootstrap: int = 1000
    batch_size: int = 64
    precision: str = "float32"
    train_shards: str | None = None
    exclude_leaked: bool = False
    finetune: Finetune | None = None


def run_bench(
    suite: Suite,
    sources: list[str],
    output: str | os.PathLike[str],
    embed_folder: EmbedFolder,
    seeds: tuple[int, ...] = (0,),
    bootstrap: int = 1000,
    batch_size: int = 64,
    precision: str = "float32",
    train_shards: str | os.PathLike[str] | None = None,
    exclude_leaked: bool = False,
    finetune: Finetune | None = None,
    audit: bool = True,
) -> BenchOutput:
    """Run every task and protocol of ``suite`` for each model source, reusing what ``output`` holds.

    Args:
        suite: The suite (:func:`convirt.bench.suite.load_suite`).
        sources: Model sources (:func:`convirt.models.sources.load_model`).
        output: The bench folder: ``embeddings/``, ``results/``, ``results.jsonl``, ``leaderboard.*``.
        embed_folder: The resumable embedding writer (:func:`convirt.embeddings.run.embed_to_folder`).
        seeds: Seeds of the seeded protocols (the probes); the others use the first.
        bootstrap: Replicates of every CI.
        precision: Of the embeddings: float32 by default, so that a result is the same on every
            machine and equals what `convirt zeroshot` / `convirt probe` give.
        train_shards: The shard folder every model was trained on, for the leakage audit; by
            default each `convirt fit` checkpoint's own (recorded in it), none for other sources.
        exclude_leaked: Leave the test images found in a model's training shards out of its
            other protocols on that task.
        finetune: The fine-tuning trainer (:func:`convirt.training.finetune.finetune_predict`
            with its settings, as the CLI passes it); without it, ``finetune`` protocols are skipped.
        audit: Run the leakage audit where training shards are known; ``False``: no audit, even of a
            checkpoint that records its shards.

    Raises:
        ValueError: No model, two sources with the same label, training shards that are not a shard
            folder, or training shards or ``exclude_leaked`` without the audit.
    """
    if not sources:
        raise ValueError("name at least one model (--model SOURCE)")
    labels = [model_label(source) for source in sources]
    if len(set(labels)) != len(labels):
        raise ValueError(f"two models share a name in {labels}: pass paths that differ in their last part")
    if not audit and (train_shards is not None or exclude_leaked):
        raise ValueError("--train-shards and --exclude-leaked need the leakage audit: drop --no-audit")
    if train_shards is not None and not is_shard_folder(train_shards):
        raise ValueError(f"--train-shards {train_shards}: not a shard folder (no manifest.json)")
    if precision != "auto":
        precision = canonical_precision(precision)  # `32-true` and `float32` are one cache key
    settings = BenchSettings(
        seeds, bootstrap, batch_size, precision, str(train_shards) if train_shards else None, exclude_leaked, finetune
    )
    out, result = Path(output), BenchOutput()
    for source, label in zip(sources, labels):
        loaded = load_model(source)
        shards = (settings.train_shards or _recorded_shards(loaded)) if audit else None
        for task in suite.tasks:
            if not task.available:
                result.skipped.append((label, task.name, "", f"no data at {task.missing}: {task.obtain}"))
                continue
            result.rows += _task_rows(loaded, label, suite, task, out, embed_folder, settings, shards, result)
    write_jsonl(out / "results.jsonl", result.rows)
    write_json(out / "skipped.json", [dict(zip(("model", "task", "protocol", "reason"), s)) for s in result.skipped])
    write_leaderboard(result.rows, labels, out)
    result.figures = write_figures(result.rows, labels, result.scores, out / "figures")
    return result


def _recorded_shards(loaded: LoadedModel) -> str | None:
    """The training shards a checkpoint records, where they are on this machine."""
    recorded = loaded.run.get("train_shards")
    return str(recorded) if recorded and is_shard_folder(recorded) else None


def _stored(path: Path, about: dict[str, Any], compute: Any, result: BenchOutput) -> dict[str, Any]:
    """The result file at ``path`` when it was made for ``about``, else ``compute()``'s, written there."""
    stored = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if stored is None or stored.get("about") != about:
        stored = {"about": about, **compute()}
        write_json(path, stored)
        result.computed.append(path)
    return stored


def _task_rows(
    loaded: LoadedModel,
    label: str,
    suite: Suite,
    task: Task,
    out: Path,
    embed_folder: EmbedFolder,
    settings: BenchSettings,
    train_shards: str | None,
    result: BenchOutput,
) -> list[dict[str, Any]]:
    key = model_key(loaded)
    folder = out / "results" / f"{_slug(label)}-{key[:8]}" / task.name
    base = {
        "model": label,
        "source": loaded.source,
        "model_key": key,
        "suite": suite.name,
        "suite_version": suite.version,
        "task": task.name,
        "data_sha256": data_sha256(task),
        "data_files": data_files(task),
        "label_policy": task.label_policy or f"uncertain labels: {task.uncertain}",
        "convirt_version": convirt.__version__,
    }
    cache: dict[tuple[str, str], Any] = {}

    def embedded(modality: str, of: Task = task) -> Any:
        if (of.name, modality) not in cache:
            cache[of.name, modality] = cached_embeddings(
                loaded,
                of,
                modality,
                out / "embeddings",
                embed_folder,
                settings.batch_size,
                result.embedded,
                settings.precision,
            )
        return cache[of.name, modality]

    rows: list[dict[str, Any]] = []
    leaked: set[str] = set()
    if train_shards and any(protocol not in TEXT_ONLY for protocol in task.protocols):  # a text-only task has no image
        train = training_task(train_shards)
        about = {**base, "protocol": "leakage", "seed": 0, "train_data_sha256": data_sha256(train)}
        about["settings"] = {
            "threshold": NEAR_THRESHOLD,
            "detail_threshold": DETAIL_THRESHOLD,
            "precision": settings.precision,
        }

        def compute_audit() -> dict[str, Any]:
            test_signed, train_signed = (cached_signatures(t, out / "signatures") for t in (task, train))
            return audit(test_signed, train_signed, embedded("image"), embedded("image", train))

        stored = _stored(folder / "leakage-s0.json", about, compute_audit, result)
        rows += [{**about, **row} for row in stored["rows"]]
        if settings.exclude_leaked:
            leaked = {pair["test_key"] for pair in stored["pairs"]}

    def evaluated(modality: str) -> Any:
        return without(embedded(modality), leaked) if leaked else embedded(modality)

    for protocol, options in task.protocols.items():
        if not loaded.has_text and protocol in NEEDS_TEXT_TOWER:
            result.skipped.append((label, task.name, protocol, "an image-only encoder has no text tower"))
            continue
        if protocol in NEEDS_LABELS and not has_labels(evaluated("text" if protocol in TEXT_ONLY else "image").meta):
            result.skipped.append((label, task.name, protocol, missing_labels(protocol)))  # shards whose json has none
            continue
        if protocol == "finetune" and settings.finetune is None:
            result.skipped.append(
                (label, task.name, protocol, "no fine-tuning trainer given (`convirt bench` gives one)")
            )
            continue
        for seed in settings.seeds if protocol in SEEDED else settings.seeds[:1]:
            about = {
                **base,
                "protocol": protocol,
                "seed": seed,
                "settings": {**options, "bootstrap": settings.bootstrap, "precision": settings.precision},
            }
            if leaked:
                about["excluded_leaked"] = sorted(leaked)

            def compute(protocol: str = protocol, options: dict = options, seed: int = seed) -> dict[str, Any]:
                if protocol == "finetune":
                    assert settings.finetune is not None
                    trained = finetune_protocol(
                        settings.finetune, loaded, task, options, seed, settings.bootstrap, leaked
                    )
                    return {"rows": trained}
                texts = evaluated("text") if protocol in NEEDS_TEXTS else None
                function = PROTOCOL_FUNCTIONS[protocol]
                images = None if protocol in TEXT_ONLY else evaluated("image")
                found = function(loaded, task, options, images, texts, seed, settings.bootstrap)
                return found if isinstance(found, dict) else {"rows": found}

            stored = _stored(folder / f"{protocol}-s{seed}.json", about, compute, result)
            rows += [{**about, **row} for row in stored["rows"]]
            if "scores" in stored and seed == settings.seeds[0]:
                result.scores[label, task.name, protocol] = stored["scores"]
    return rows
