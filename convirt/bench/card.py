"""A model card (README.md) for an exported model: what it is, how to load it, and its bench results.

The results are the rows of ``convirt bench`` output folders (``results.jsonl``) made with this
model's weights (the same model key), never typed in: each is its protocol's headline metric with
the 95% CI, the number of images, the suite version and the hash of the data it was measured on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from convirt.bench.cache import model_key
from convirt.bench.leaderboard import format_cell, headlines
from convirt.models.checkpoint import LoadedModel
from convirt.models.fingerprint import model_fingerprint


def bench_rows(loaded: LoadedModel, folders: list[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """The result rows of ``folders`` (bench outputs) that were made with ``loaded``'s weights.

    Raises:
        FileNotFoundError: A folder has no ``results.jsonl``.
    """
    key, rows = model_key(loaded), []
    for folder in folders:
        path = Path(folder) / "results.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"no results.jsonl in {folder}: run `convirt bench --output {folder}` first")
        rows += [
            row
            for line in path.read_text(encoding="utf-8").splitlines()
            if (row := json.loads(line))["model_key"] == key
        ]
    return rows


def model_card(loaded: LoadedModel, folder: str | os.PathLike[str], rows: list[dict[str, Any]]) -> str:
    """The Markdown model card of ``loaded`` exported to ``folder``, with ``rows`` (:func:`bench_rows`)."""
    fingerprint = model_fingerprint(loaded)
    preprocess = loaded.preprocess_cfg
    lines = [
        f"# {Path(folder).name}",
        "",
        f"A `{loaded.model_name}` dual encoder exported by convirt from `{fingerprint['source']}` "
        f"(weights SHA-256 `{fingerprint['checkpoint_sha256']}`), embedding dimension {fingerprint['dim']}.",
        "A research model: not a diagnostic device.",
        "",
        "## Load",
        "",
        "```python",
        "import open_clip",
        f"model, _, preprocess = open_clip.create_model_and_transforms('local-dir:{Path(folder).resolve()}')",
        "```",
        "",
        f"or any convirt command: `--model {Path(folder).resolve()}`. Images: {preprocess.get('size')} px, "
        f"mean {list(preprocess.get('mean', []))}, std {list(preprocess.get('std', []))}, "
        f"{preprocess.get('interpolation', 'bicubic')} resize.",
    ]
    if loaded.init:
        lines += [
            "",
            f"Started from `{loaded.init['source']}` (a `{loaded.init['model_name']}` model, weights SHA-256 "
            f"`{loaded.init.get('weights_sha256')}`), then trained by `convirt fit`.",
        ]
    if loaded.adapter:
        towers = {t: c for t, c in (loaded.adapter.get("config") or {}).items() if isinstance(c, dict)}
        adapters = ", ".join(f"{t}: {c['kind']} rank {c['rank']} alpha {c['alpha']}" for t, c in towers.items())
        lines += [
            "",
            f"Trained with adapters ({adapters}), merged into these weights (base SHA-256 "
            f"`{loaded.adapter.get('base_sha256')}`).",
        ]
    if loaded.run:
        described = {
            k: f"{v.get('model')} ({v.get('capability')})" if isinstance(v, dict) else v for k, v in loaded.run.items()
        }
        lines += ["", "Trained with: " + ", ".join(f"{k} {v}" for k, v in sorted(described.items())) + "."]
    lines += ["", "## Evaluation (`convirt bench`)", ""]
    if not rows:
        lines.append("No bench results for these weights were given (`convirt export --bench DIR`).")
        return "\n".join(lines) + "\n"
    lines += [
        "| suite (version) | task | protocol | metric | value [95% CI] | n | seed | data SHA-256 |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for (_, task, protocol), row in sorted(headlines(rows).items()):
        lines.append(
            f"| {row['suite']} ({row['suite_version']}) | {task} | {protocol} | {row['metric']} | {format_cell(row)} | "
            f"{row['n']} | {row['seed']} | `{row['data_sha256'][:12]}` |"
        )
    lines += ["", f"convirt {rows[0]['convirt_version']}; every row in `results.jsonl` of the bench folder."]
    return "\n".join(lines) + "\n"
