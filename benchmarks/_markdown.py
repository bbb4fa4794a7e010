"""Writing one benchmark's section of BENCHMARKS.md without touching the others."""

from __future__ import annotations

import argparse
from pathlib import Path


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the ``name`` section of a Markdown file (between HTML comment markers), or append it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def machine_line(precision: str | None = None) -> str:
    """The machine a benchmark ran on, for its section: CPU model, torch's kernel capability, whether
    bf16 is native there, cores and threads, torch, and the precision the measured runs used."""
    import torch

    from convirt._hardware import cpu_info

    cpu = cpu_info()
    line = f"Machine: {cpu.describe()}, torch {torch.__version__} with {torch.get_num_threads()} threads"
    return line + (f"; precision {precision}" if precision else "")


def commit() -> str:
    """The short hash of the checked-out commit, with ``+changes`` when the tree differs from it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    # BENCHMARKS.md is what the scripts write: its own changes do not make the code another.
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)BENCHMARKS.md"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    return (head.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")


def trained_precisions(checkpoints: list[Path]) -> str:
    """The precisions ``checkpoints`` were trained with, as they recorded it, with counts (a
    checkpoint from before convirt recorded it, or one a cache reused, may come from another run)."""
    from collections import Counter

    from convirt.models.checkpoint import read_run

    counts = Counter(read_run(path).get("precision", "not recorded") for path in checkpoints)
    return ", ".join(f"{name} ({count} checkpoint{'s' if count > 1 else ''})" for name, count in sorted(counts.items()))


def shared_data_parser(doc: str, work: Path) -> argparse.ArgumentParser:
    """The options of a benchmark on ../shared/data: ``--shared``, ``--work``, ``--output``."""
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--shared", default=str(root.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(work))
    parser.add_argument("--output", default=str(root / "BENCHMARKS.md"))
    return parser
