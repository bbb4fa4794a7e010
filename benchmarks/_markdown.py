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
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def shared_data_parser(doc: str, work: Path) -> argparse.ArgumentParser:
    """The options of a benchmark on ../shared/data: ``--shared``, ``--work``, ``--output``."""
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--shared", default=str(root.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(work))
    parser.add_argument("--output", default=str(root / "BENCHMARKS.md"))
    return parser
