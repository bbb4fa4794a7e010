"""benchmarks/gpu.py --smoke: every part of the GPU run, the DDP step included (2 CPU processes), runs on
the CPU and writes a positive figure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# The section's measurements on a CPU: the first cell each row starts with.
MEASURES = ("training step", "peak resident memory", "data loader", "convirt embed", "DDP, 2 devices")


def section_of(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text[text.index("<!-- gpu:start -->") : text.index("<!-- gpu:end -->")]


def figure(row: str) -> float:
    """The bold number of a table row (``**1,234.5**``)."""
    match = re.search(r"\*\*([\d,.]+)\*\*", row)
    assert match is not None, f"no figure in {row!r}"
    return float(match.group(1).replace(",", ""))


@pytest.mark.slow
@pytest.mark.multiprocess  # a benchmark script in its own processes, not kernels: not rerun under the AVX2 cap
def test_smoke_run_writes_every_measurement(tmp_path: Path) -> None:
    from benchmarks import gpu

    output = tmp_path / "BENCHMARKS.md"
    output.write_text("# Benchmarks\n\nkept\n", encoding="utf-8")
    gpu.main(["--smoke", "--ddp-devices", "2", "--output", str(output), "--work", str(tmp_path / "work")])

    section = section_of(output)
    assert "kept" in output.read_text(encoding="utf-8")  # the other sections are left alone
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| measure")]
    for measure in MEASURES:
        found = [row for row in rows if row.startswith(f"| {measure}")]
        assert len(found) == 1, f"{measure!r}: {len(found)} rows in\n{section}"
        assert figure(found[0]) > 0, found[0]
    ddp = next(row for row in rows if row.startswith("| DDP, 2 devices"))
    assert "scaling efficiency" in ddp and figure(ddp.split("scaling efficiency")[1]) > 0, ddp
    assert not [row for row in rows if "| not run |" in row or "| failed |" in row], section
    command = "`python benchmarks/gpu.py --smoke --ddp-devices 2"
    for named in ("Card: none (CPU smoke run)", "Machine: ", "precision 32-true", command):
        assert named in section, named


def test_smoke_refuses_to_write_benchmarks_md() -> None:
    from benchmarks import gpu

    with pytest.raises(SystemExit):
        gpu.main(["--smoke", "--output", str(Path(gpu.ROOT) / "BENCHMARKS.md")])
