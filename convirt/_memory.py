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
        elif "memory" in controllers.split(","):  # v1: the limit (its ancestors' too), less memory.stat's rss
            folder = root / "memory" / path.lstrip("/")
            if not folder.is_dir():  # inside a container, its own group is the mount's root
                folder = root / "memory"
            used = _stat(folder / "memory.stat")
            left.append(_left(folder / "memory.limit_in_bytes", folder / "memory.stat", "total_rss"))
            if "hierarchical_memory_limit" in used:  # the least limit above (SLURM's job_N over task_N)
                limit = used["hierarchical_memory_limit"]
                left.append(max(0, limit - used.get("total_rss", 0)) if limit < UNLIMITED else None)
    return left


def _left(limit_file: Path, stat_file: Path, used_field: str) -> int | None:
    try:
        text = limit_file.read_text(encoding="ascii").strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= UNLIMITED:
        return None
    return max(0, int(text) - _stat(stat_file).get(used_field, 0))


def _stat(path: Path) -> dict[str, int]:
    """A cgroup's ``memory.stat`` as numbers (empty where unreadable)."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except OSError:
        return {}
    return {name: int(value) for name, _, value in (line.partition(" ") for line in lines) if value.isdigit()}
