"""Memory a process may still take: the machine's, or its job's where a cgroup limits it.

A SLURM job (``--mem``), a container or a Kubernetes pod is held to its cgroup's limit, whatever the
machine has free: a build sized by ``/proc/meminfo`` alone would be killed by the kernel. Nothing in
psutil reads cgroup limits, hence these few lines.
"""

from __future__ import annotations

import os
from pathlib import Path

UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1


def available_memory(proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes of memory available now: the machine's ``MemAvailable`` (free plus reclaimable cache), or less
    where this process's memory cgroup (v2 or v1, this one or an ancestor) has less left under its limit."""
    machine = _meminfo_available(proc / "meminfo")
    limits = [left for left in _cgroup_left(proc / "self" / "cgroup", cgroups) if left is not None]
    return min([machine, *limits])


def _meminfo_available(path: Path) -> int:
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _cgroup_left(membership: Path, root: Path) -> list[int | None]:
    """What each limited memory cgroup on this process's path has left: its limit less the memory it cannot
    drop (anonymous pages; page cache is reclaimed before the limit kills)."""
    try:
        lines = membership.read_text(encoding="ascii").splitlines()
    except OSError:
        return []
    left: list[int | None] = []
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and not controllers:  # v2: memory.max, memory.stat's anon
            folder = root / path.lstrip("/")
            for level in [folder, *folder.parents]:
                left.append(_left(level / "memory.max", level / "memory.stat", "anon"))
                if level == root:
                    break
        elif "memory" in controllers.split(","):  # v1: memory.limit_in_bytes, memory.stat's rss
            folder = root / "memory" / path.lstrip("/")
            left.append(_left(folder / "memory.limit_in_bytes", folder / "memory.stat", "total_rss"))
    return left


def _left(limit_file: Path, stat_file: Path, used_field: str) -> int | None:
    try:
        text = limit_file.read_text(encoding="ascii").strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= UNLIMITED:
        return None
    used = 0
    try:
        for line in stat_file.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == used_field:
                used = int(value)
    except (OSError, ValueError):
        pass
    return max(0, int(text) - used)
