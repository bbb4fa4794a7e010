"""LoRA against full fine-tuning of the same towers, on the demo.

Both arms start from the demo's pretrained towers (`demo-effnet-minilm-128`: EfficientNet-Lite0 and
MiniLM) with nothing frozen, at 32-true; LoRA (`--model.adapter lora`, rank 8, alpha 16, the default
targets) trains the adapters, heads and logit scale, full fine-tuning every weight.

- **Step time and peak memory**: each arm in its own process, a training step (forward, backward,
  AdamW step) on a synthetic batch of the demo's size (32 pairs, 128 px), timed over 10 steps after 2
  warm-up steps; the peak resident memory of that process across its steps. The arms alternate,
  3 rounds: median and range of the LoRA / full ratio.
- **The demo's metrics after the same steps**: `convirt fit --config configs/demo.yaml` (3 epochs)
  per arm, then `convirt zeroshot` (mean AUROC, descriptor prompts) and `convirt embed` / `index
  build` / `index eval` (label precision@5) on the test split, as `make demo` runs them.

Usage (after `make demo` made artifacts/demo/shards):
    python benchmarks/lora.py --output BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._markdown import commit, machine_line, write_section  # noqa: E402
from benchmarks._process import ROOT  # noqa: E402

MODEL = "demo-effnet-minilm-128"
ARMS = {
    "full fine-tuning": ["--model.freeze_image_groups", "0", "--model.freeze_text_layers", "0"],
    "LoRA (rank 8)": ["--model.freeze_image_groups", "0", "--model.freeze_text_layers", "0", "--model.adapter", "lora"],
}
# The LoRA arm's adapters sit in the towers, which train at tower_learning_rate: a higher one, as
# LoRA is usually run (the heads keep the demo's learning_rate).
LORA_TOWER_LR = "1.0e-3"

_STEP = """
import json, sys, time, torch
from benchmarks._process import peak_bytes, reset_peak
from convirt.models import create_tokenizer
from convirt.training import ContrastiveModule
from convirt.training.optimization import parameter_groups
from convirt.training.precision_timing import contrastive_step
from convirt.models.adapters import trainable_parameters
options = json.loads(sys.argv[1])
torch.manual_seed(0)
module = ContrastiveModule(model_name=sys.argv[2], **options)
module.train()
optimizer = torch.optim.AdamW(parameter_groups(module.model, 1e-4, 1e-4, 0.05))
loss = contrastive_step(module, create_tokenizer(sys.argv[2]), 32, 128)
reset_peak()
times = []
for step in range(12):
    start = time.perf_counter()
    value = loss()
    value.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if step >= 2:
        times.append(time.perf_counter() - start)
counts = trainable_parameters(module.model)
print(json.dumps({"step_s": sorted(times)[len(times) // 2], "peak": peak_bytes(), "parameters": counts}))
"""


def step_arm(options: dict, env: dict[str, str]) -> dict:
    """Median step seconds, peak resident bytes and parameter counts of one arm, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", _STEP, json.dumps(options), MODEL], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"step timing failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(args: list[str], env: dict[str, str], log: Path) -> float:
    """Seconds of one `convirt` command (its output into ``log``); stops with its error if it fails."""
    print("$ convirt " + " ".join(args), flush=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.call(
            [sys.executable, "-m", "convirt.cli.main", *args],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    if code != 0:
        raise SystemExit(f"failed ({code}): convirt {' '.join(args)}; see {log}")
    return time.perf_counter() - start


def demo_arm(name: str, extra: list[str], work: Path, env: dict[str, str]) -> dict:
    """The demo's fit with ``extra`` options, then its zero-shot AUROC and precision@5."""
    out = work / name.split()[0].lower()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shards = ROOT / "artifacts" / "demo" / "shards"
    fit = ["fit", "--config", "configs/demo.yaml", "--trainer.precision", "32-true", *extra]
    fit += ["--trainer.default_root_dir", str(out / "fit"), "--trainer.logger.init_args.save_dir", str(out / "fit")]
    fit += ["--trainer.callbacks.init_args.dirpath", str(out / "checkpoints")]
    if "--model.adapter" in extra:
        fit += ["--model.tower_learning_rate", LORA_TOWER_LR]
    seconds = run(fit, env, out / "fit.log")
    checkpoint = str(out / "checkpoints" / "last.ckpt")
    common = ["--checkpoint", checkpoint, "--data", str(shards), "--split", "test"]
    run(["zeroshot", *common, "--descriptors", "phantom", "--output", str(out / "zeroshot")], env, out / "zs.log")
    run(["embed", *common, "--output", str(out / "embeddings")], env, out / "embed.log")
    index = [
        "index",
        "build",
        "--embeddings",
        str(out / "embeddings"),
        "--factory",
        "Flat",
        "--output",
        str(out / "index"),
    ]
    run(index, env, out / "index.log")
    run(
        ["index", "eval", "--index", str(out / "index"), "-k", "5", "--output", str(out / "retrieval.json")],
        env,
        out / "eval.log",
    )
    zeroshot = json.loads((out / "zeroshot" / "metrics.json").read_text())
    retrieval = json.loads((out / "retrieval.json").read_text())
    return {
        "fit_s": seconds,
        "auroc": zeroshot["descriptors"]["mean_auroc"],
        "precision_at_5": retrieval["precision_at_5"],
        "checkpoint_bytes": os.path.getsize(checkpoint),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "lora-bench")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not (ROOT / "artifacts" / "demo" / "shards" / "manifest.json").is_file():
        raise SystemExit("no artifacts/demo/shards: run `make demo` (or its phantom and shards stages) first")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    args.work.mkdir(parents=True, exist_ok=True)
    step_options = {"full fine-tuning": {}, "LoRA (rank 8)": {"adapter": "lora"}}
    steps: dict[str, list[dict]] = {name: [] for name in ARMS}
    for round_ in range(args.rounds):
        for name in ARMS:
            steps[name].append(step_arm(step_options[name], env))
            print(f"round {round_ + 1} {name}: {steps[name][-1]['step_s']:.3f} s/step", flush=True)
    demo = {name: demo_arm(name, extra, args.work, env) for name, extra in ARMS.items()}
    (args.work / "results.json").write_text(json.dumps({"steps": steps, "demo": demo}, indent=2))
    ratios = [lora["step_s"] / full["step_s"] for full, lora in zip(steps["full fine-tuning"], steps["LoRA (rank 8)"])]
    peaks = [lora["peak"] / full["peak"] for full, lora in zip(steps["full fine-tuning"], steps["LoRA (rank 8)"])]
    rows = []
    for name in ARMS:
        counts = steps[name][0]["parameters"]
        trainable, total = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
        step = statistics.median(r["step_s"] for r in steps[name])
        peak = statistics.median(r["peak"] for r in steps[name]) / 2**20
        d = demo[name]
        rows.append(
            f"| {name} | {trainable:,} of {total:,} ({100 * trainable / total:.1f}%) | {step:.3f} | {peak:,.0f} | "
            f"{d['fit_s']:.0f} | {d['checkpoint_bytes'] / 2**20:.1f} | {d['auroc']:.3f} | {d['precision_at_5']:.3f} |"
        )
    body = f"""## LoRA against full fine-tuning

The demo's towers (`{MODEL}`), nothing frozen, 32-true: LoRA (`--model.adapter lora`, rank 8, alpha 16,
default targets, towers at learning rate {LORA_TOWER_LR}) against full fine-tuning (the demo's learning
rates). Step: forward, backward and AdamW step on a synthetic batch of 32 pairs at 128 px, median of 10
steps after 2 warm-up steps, each arm in its own process, {args.rounds} rounds alternating; peak: resident
memory of that process during its steps. Demo: `convirt fit --config configs/demo.yaml` (3 epochs, the
same steps for both), then zero-shot mean AUROC (descriptors) and label precision@5 on the test split.
{machine_line("32-true")}. Commit {commit()}; `python benchmarks/lora.py`.

| arm | trainable parameters | step s | peak MiB | demo fit s | checkpoint MiB | mean AUROC | P@5 |
|---|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

LoRA / full step time: median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f},
{args.rounds} rounds); peak memory: median {statistics.median(peaks):.2f}x (range {min(peaks):.2f}-{max(peaks):.2f}).
"""
    write_section(args.output, "lora", body)
    print(body)


if __name__ == "__main__":
    main()
