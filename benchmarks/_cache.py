"""Results on disk keyed on the commit and the config that made them.

A benchmark run reuses a folder of results (a trained checkpoint, an evaluation's metrics) only
when its ``cache-key.json`` names the same commit (with ``+changes`` for a tree that differs from
it) and the same inputs; otherwise the folder is emptied and made again. The key is written last,
so a run killed midway leaves no key and is redone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _markdown import commit

from convirt._io import file_sha256, write_json

KEY_FILE = "cache-key.json"


def cache_key(**inputs: object) -> dict[str, object]:
    """The key of a result: the commit and the given inputs (paths are hashed when they are files)."""
    key: dict[str, object] = {"commit": commit()}
    for name, value in inputs.items():
        key[name] = file_sha256(value) if isinstance(value, Path) and value.is_file() else str(value)
    return key


def reusable(folder: Path, key: dict[str, object]) -> bool:
    """True when ``folder`` holds results made with ``key``; else it is emptied for a new run."""
    path = folder / KEY_FILE
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) == key:
        return True
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return False


def mark_done(folder: Path, key: dict[str, object]) -> None:
    """Record that ``folder`` now holds the results of ``key``."""
    (folder / KEY_FILE).write_text(json.dumps(key, indent=1), encoding="utf-8")


def recorded_commit(folder: Path) -> str:
    """The commit a cached folder was made at (``unknown`` without a key)."""
    path = folder / KEY_FILE
    return str(json.loads(path.read_text(encoding="utf-8"))["commit"]) if path.is_file() else "unknown"


def cached_commands(out: Path, result: str, commands: Any, run: Callable[..., None], **inputs: object) -> dict:
    """``out/result`` (JSON) after running each of ``commands`` (argument lists) with ``run``, unless
    ``out`` holds it for the same commands, ``inputs`` and commit."""
    key = cache_key(commands=json.dumps(commands), **inputs)
    if not reusable(out, key):
        for command in commands:
            run(*command)
        mark_done(out, key)
    return dict(json.loads((out / result).read_text(encoding="utf-8")))


def load_result(path: Path, key: dict[str, object]) -> dict | None:
    """The result stored in ``path`` (a small JSON kept in git, so that a benchmark of many hours can
    go on in a later session) when it was made with ``key``; ``None`` otherwise."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    return dict(stored["result"]) if stored.get("key") == key else None


def save_result(path: Path, key: dict[str, object], result: dict) -> None:
    """Store ``result`` made with ``key`` in ``path``, atomically (a run killed midway leaves none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"key": key, "result": result})
