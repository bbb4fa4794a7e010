"""The demo's fit at the precision `convirt fit` chooses, against 32-true and bf16-mixed, one after the other.

Writes the "Fit precision" section of BENCHMARKS.md: wall time of `convirt fit --config
configs/demo.yaml` three times on the same shards (the choice, then each candidate forced with
`--trainer.precision`), the choice and its reason as the checkpoint records them, and whether the
choice is within 10% of the faster candidate. A candidate still running at ``--cap`` times the
fastest finished fit is stopped and reported as a lower bound (bf16 on an AVX2 CPU runs several
times slower than fp32). Run it natively and with ``--avx2-cap`` (ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2 for the fits) on machines with native bf16.

Usage (after `make demo` made artifacts/demo/shards, or the demo's phantom and shards stages):
    python benchmarks/fit_precision.py --output BENCHMARKS.md [--avx2-cap]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._markdown import commit, write_section  # noqa: E402
from benchmarks._process import ROOT  # noqa: E402

ARMS = (("chosen by convirt fit", None), ("32-true", "32-true"), ("bf16-mixed", "bf16-mixed"))
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def fit(precision: str | None, work: Path, env: dict[str, str], limit: float | None) -> tuple[float, bool, dict]:
    """Seconds of one demo fit (and whether it finished within ``limit``), and its checkpoint's precision record."""
    for name in ("fit", "checkpoints"):
        shutil.rmtree(work / name, ignore_errors=True)
    args = [sys.executable, "-m", "convirt.cli.main", "fit", "--config", "configs/demo.yaml"]
    args += ["--trainer.default_root_dir", str(work / "fit"), "--trainer.logger.init_args.save_dir", str(work / "fit")]
    args += ["--trainer.callbacks.init_args.dirpath", str(work / "checkpoints")]
    if precision is not None:
        args += ["--trainer.precision", precision]
    print("$ " + " ".join(args[2:]), flush=True)
    start = time.perf_counter()
    log = open(work / f"fit-{precision or 'chosen'}.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        process.wait(timeout=limit)
        finished = True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        finished = False
    log.close()
    seconds = time.perf_counter() - start
    if finished and process.returncode != 0:
        raise SystemExit(f"fit failed ({process.returncode}); see {work}/fit-{precision or 'chosen'}.log")
    record: dict = {}
    if finished:
        from convirt.models.checkpoint import read_run

        run = read_run(work / "checkpoints" / "last.ckpt")
        record = {"precision": run.get("precision"), **(run.get("precision_choice") or {})}
    return seconds, finished, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "fit-precision")
    parser.add_argument("--avx2-cap", action="store_true", help="run the fits with the AVX2 cap (the common CPU)")
    parser.add_argument("--cap", type=float, default=3.0, help="stop a fit at this many times the fastest finished one")
    args = parser.parse_args()
    if not (ROOT / "artifacts" / "demo" / "shards" / "manifest.json").is_file():
        raise SystemExit("no artifacts/demo/shards: run `make demo` (or its phantom and shards stages) first")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    if args.avx2_cap:
        env.update(AVX2)
    work = args.work / ("avx2-cap" if args.avx2_cap else "native")
    work.mkdir(parents=True, exist_ok=True)
    # The machine line as the fits see it (the cap changes what torch reports).
    probe = "from benchmarks._markdown import machine_line; print(machine_line())"
    machine = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    results = []
    for label, precision in ARMS:
        finished_times = [r["seconds"] for r in results if r["finished"]]
        limit = args.cap * min(finished_times) if finished_times else None
        seconds, finished, record = fit(precision, work, env, limit)
        results.append({"arm": label, "seconds": seconds, "finished": finished, "record": record})
        print(f"{label}: {seconds:.1f} s{'' if finished else ' (stopped)'}", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2))
    chosen = results[0]
    candidates = [r for r in results[1:] if r["finished"]]
    fastest = min(r["seconds"] for r in candidates)
    ratio = chosen["seconds"] / fastest
    verdict = "met" if ratio <= 1.10 else "not met"
    rows = []
    for r in results:
        time_text = f"{r['seconds']:.1f}" if r["finished"] else f"> {r['seconds']:.0f} (stopped at {args.cap:g}x)"
        precision = r["record"].get("precision", "n/a") if r["finished"] else r["arm"]
        rows.append(f"| {r['arm']} | {precision} | {time_text} |")
    reason = chosen["record"].get("reason", "")
    timed = chosen["record"].get("seconds_per_step") or {}
    timed_text = ", ".join(f"{k} {v:.3f} s/step" for k, v in timed.items()) or "none (no timing on this CPU)"
    if chosen["record"].get("timing_seconds"):
        timed_text += f"; the timing took {chosen['record']['timing_seconds']:.1f} s of the chosen fit"
    flag = " --avx2-cap" if args.avx2_cap else ""
    cap_text = " with `ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`" if args.avx2_cap else " natively"
    body = f"""## Fit precision ({"AVX2 cap" if args.avx2_cap else "native"})

`convirt fit --config configs/demo.yaml` three times, one after the other{cap_text}: at the
precision the fit chooses (timed where bf16 is native, else the rule), then with each candidate
forced. {machine.stdout.strip()}. Commit {commit()}; `python benchmarks/fit_precision.py{flag}`.

| fit | precision | wall s |
|---|---|---|
{chr(10).join(rows)}

The choice's reason: {reason or "n/a"}. Timed steps: {timed_text}.
Goal: the chosen fit within 10% of the faster candidate: {ratio:.2f}x, {verdict}.
"""
    write_section(args.output, f"fit-precision-{'avx2' if args.avx2_cap else 'native'}", body)
    print(body)


if __name__ == "__main__":
    main()
