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
