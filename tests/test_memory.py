"""Available memory: the machine's, or less where this process's memory cgroup (a SLURM job's --mem, a
container's limit) leaves less."""

from pathlib import Path

from convirt._memory import available_memory

GIB = 2**30


def _proc(root: Path, cgroup: str, available_gib: int = 20) -> Path:
    (root / "self").mkdir(parents=True)
    (root / "meminfo").write_text(f"MemTotal: {24 * GIB // 1024} kB\nMemAvailable: {available_gib * GIB // 1024} kB\n")
    (root / "self" / "cgroup").write_text(cgroup)
    return root


def test_a_v2_job_limit_caps_what_the_machine_has_free(tmp_path):
    cgroups = tmp_path / "sys"
    job = cgroups / "system.slice" / "slurmstepd.scope" / "job_42"
    job.mkdir(parents=True)
    (job / "memory.max").write_text(f"{8 * GIB}\n")
    (job / "memory.stat").write_text(f"anon {3 * GIB}\nfile {4 * GIB}\n")  # the page cache is reclaimed first
    (job.parent / "memory.max").write_text("max\n")
    proc = _proc(tmp_path / "proc", "0::/system.slice/slurmstepd.scope/job_42\n")
    assert available_memory(proc, cgroups) == 5 * GIB
    (job / "memory.max").write_text("max\n")  # no limit: the machine's
    assert available_memory(proc, cgroups) == 20 * GIB


def test_a_v1_memory_limit_and_an_unlimited_one(tmp_path):
    cgroups = tmp_path / "sys"
    group = cgroups / "memory" / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text(f"{2 * GIB}\n")
    (group / "memory.stat").write_text(f"cache {GIB}\nrss {GIB // 2}\ntotal_rss {GIB // 2}\n")
    proc = _proc(tmp_path / "proc", "9:name=systemd:/\n4:memory:/docker/abc\n0::/\n")
    assert available_memory(proc, cgroups) == 3 * GIB // 2
    (group / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert available_memory(proc, cgroups) == 20 * GIB
    assert available_memory(_proc(tmp_path / "none", ""), tmp_path / "missing") == 20 * GIB


def test_v1_limits_above_the_task_and_inside_a_container(tmp_path):
    # SLURM on v1 limits job_N (--mem) while the task sits in an unlimited task_N below it: memory.stat's
    # hierarchical_memory_limit carries the job's. Inside a container the group path is not mounted: its
    # own group is the mount's root.
    cgroups = tmp_path / "sys"
    task = cgroups / "memory" / "slurm" / "uid_0" / "job_7" / "step_0" / "task_0"
    task.mkdir(parents=True)
    (task / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (task / "memory.stat").write_text(f"total_rss {GIB}\nhierarchical_memory_limit {4 * GIB}\n")
    proc = _proc(tmp_path / "proc", "4:memory:/slurm/uid_0/job_7/step_0/task_0\n")
    assert available_memory(proc, cgroups) == 3 * GIB
    container = tmp_path / "container"
    (container / "memory").mkdir(parents=True)
    (container / "memory" / "memory.limit_in_bytes").write_text(f"{6 * GIB}\n")
    (container / "memory" / "memory.stat").write_text(f"total_rss {2 * GIB}\n")
    proc = _proc(tmp_path / "proc2", "4:memory:/docker/0123abcd\n")
    assert available_memory(proc, container) == 4 * GIB
