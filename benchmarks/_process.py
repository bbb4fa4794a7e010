"""What every benchmark script shares about processes: running `convirt` commands, and memory probes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def convirt(*args: str, quiet: bool = False) -> None:
    """Run one `convirt` command from the repository root, as a user would; stop with its error if it fails.

    Args:
        args: The command's arguments (``"fit", "--config", path``).
        quiet: Keep its output unless it fails (then its last lines are shown).
    """
    command = [sys.executable, "-m", "convirt.cli.main", *args]
    if not quiet:
        print("$ convirt " + " ".join(args), flush=True)
    result = subprocess.run(command, cwd=ROOT, capture_output=quiet, text=True)
    if result.returncode != 0:
        tail = f"\n{result.stderr[-3000:]}" if quiet else ""
        raise SystemExit(f"failed ({result.returncode}): convirt {' '.join(args)}{tail}")


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (Linux only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def resident_bytes() -> int:
    """Resident memory of this process now (0 where /proc is missing)."""
    try:
        return _status("VmRSS")
    except OSError:
        return 0


def peak_bytes() -> int:
    """The peak resident memory of this process since it started or since :func:`reset_peak`."""
    return _status("VmHWM")


def reset_peak() -> None:
    """Reset the peak-RSS mark (Linux >= 4.0: writing 5 to clear_refs), so a later peak measures what follows."""
    Path("/proc/self/clear_refs").write_text("5")
