"""The import rules of ../shared/STYLE.md, checked by walking each module's imports."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "convirt"
# package -> convirt packages it may import
ALLOWED = {
    "data": set(),
    "models": set(),
    "losses": set(),
    "retrieval": set(),
    "embeddings": set(),
    "zeroshot": {"embeddings"},
    # training is listed above embeddings and zeroshot in STYLE.md: its callbacks may score with them
    "training": {"data", "models", "losses", "embeddings", "zeroshot"},
    "cli": {"data", "models", "losses", "retrieval", "embeddings", "zeroshot", "training"},
}
LIGHTNING = ("lightning", "pytorch_lightning")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers(package):
    for path in (PACKAGE / package).rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "convirt" and len(parts) > 1 and parts[1] in ALLOWED and parts[1] != package:
                assert parts[1] in ALLOWED[package], f"{path.relative_to(PACKAGE)} imports {name}"
            if package not in ("training", "cli"):
                assert parts[0] not in LIGHTNING, f"{path.relative_to(PACKAGE)} imports {name}"
