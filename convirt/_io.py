"""Infrastructure every layer may use: atomic writes, JSON with NaN as null, file hashes.

A write goes to a temporary name beside its target and is renamed over it only when complete, so
an interrupted job leaves the old file (or none), never half of a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` to write a file to; renamed over ``path`` when the block ends.

    If the block raises, the temporary file is removed and ``path`` is left as it was.

    Args:
        path: The file to write.
        suffix: Appended to ``path``'s name for the temporary file (``.tmp.png`` keeps an image's type).
    """
    target = Path(path)
    # The process id keeps writers of several processes (the ranks of one run) off each other's file.
    tmp = target.with_name(f"{target.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """An empty temporary folder beside ``path``; it replaces ``path`` (and all it held) when the block ends.

    If the block raises, the temporary folder is removed and ``path`` is left as it was.
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_output_folder(
    output: PathLike, inputs: Iterable[PathLike] = (), replaces: Callable[[Path], bool] = lambda folder: False
) -> None:
    """Refuse an output folder that :func:`atomic_folder` must not replace: one of the command's
    inputs, a file, or a folder of other files (``replaces`` accepts what the command itself writes,
    so that a run again replaces its own output).

    Raises:
        ValueError: One of those, in one line.
    """
    target = Path(output).resolve()
    if any(Path(given).resolve() == target for given in inputs):
        raise ValueError(f"the output {output} is one of the inputs: give a new folder")
    if target.is_file():
        raise ValueError(f"the output {output} is a file: give a folder")
    if target.is_dir() and any(target.iterdir()) and not replaces(target):
        raise ValueError(f"the output {output} holds other files, which it would replace: give a new or empty folder")


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, making its folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_lines(path: PathLike, lines: list[str]) -> Path:
    """Write ``lines``, each ended by a newline, to ``path`` atomically."""
    return write_text(path, "".join(line + "\n" for line in lines))


def json_safe(value: Any) -> Any:
    """``value`` with NaN floats as ``None`` (JSON has no NaN), recursively through dicts, lists and tuples."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: PathLike, payload: Any, indent: int | None = 2) -> Path:
    """Write ``payload`` as JSON to ``path`` atomically, NaN written as ``null``."""
    return write_text(path, json.dumps(json_safe(payload), indent=indent, allow_nan=False) + "\n")


def write_jsonl(path: PathLike, rows: list[dict[str, Any]]) -> Path:
    """Write one JSON object per line to ``path`` atomically."""
    return write_lines(path, [json.dumps(row) for row in rows])


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
