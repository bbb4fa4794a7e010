"""Training-step cost: Lightning against a bare PyTorch loop, and GradCache memory.

1. Throughput: the same `ContrastiveModule` (model, loss, AdamW groups, clipping) and the same
   in-memory batches through the same `DataLoader`, stepped by a Lightning `Trainer` and by a
   hand-written loop. Each iteration is timed whole (from one batch's arrival at the step to the
   next one's: fetch, forward, backward, clipping, optimiser, schedule and every hook); the two
   runners alternate over `--repeats` repeats, each with a fresh module. Reported: samples/s of
   each (median over repeats of the median iteration after warm-up) and the median and range
   of the per-repeat ratio (goal >= 0.95).
2. Memory: peak resident memory of one process that takes a training step at batch 256 with
   GradCache sub-batches of 32, beside one that takes a plain step at batch 256 (goal <= 0.5x).
   Each runs in its own process so that the peaks do not mix.

Writes the ``train-throughput`` section of BENCHMARKS.md. `python benchmarks/train_throughput.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _markdown import machine_line, write_section
from _process import peak_bytes, reset_peak, resident_bytes

SECTION = "train-throughput"
FROZEN_GROUPS, FROZEN_TEXT_LAYERS, CLIP_NORM = 3, 3, 1.0
GOAL_RATIO, GOAL_MEMORY = 0.95, 0.5  # Lightning / bare at least; GradCache / plain peak at most
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_batches(model_name: str, batch_size: int, count: int, seed: int = 0) -> list[dict]:
    """Random images and phantom-like report tokens, made once and reused by both runners."""
    from convirt.models import create_tokenizer, get_model_config

    size = get_model_config(model_name)["model_cfg"]["vision_cfg"]["image_size"]
    tokenizer = create_tokenizer(model_name)
    generator = torch.Generator().manual_seed(seed)
    words = ["no", "pleural", "effusion", "enlarged", "cardiac", "silhouette", "right", "pneumothorax", "clear"]
    batches = []
    for _ in range(count):
        texts = [
            " ".join(words[int(i)] for i in torch.randint(len(words), (12,), generator=generator))
            for _ in range(batch_size)
        ]
        batches.append(
            {
                "image": torch.randn(batch_size, 3, size, size, generator=generator),
                "text": tokenizer(texts),
                "key": [""] * batch_size,
                "meta": [{}] * batch_size,
            }
        )
    return batches


def make_module(model_name: str, sub_batch_size: int | None = None):  # type: ignore[no-untyped-def]
    from convirt.training import ContrastiveModule

    torch.manual_seed(0)
    return ContrastiveModule(
        model_name,
        pretrained=True,
        learning_rate=3e-4,
        tower_learning_rate=1e-4,
        warmup_steps=5,
        freeze_image_groups=FROZEN_GROUPS,
        freeze_text_layers=FROZEN_TEXT_LAYERS,
        sub_batch_size=sub_batch_size,
    )


def _loader(batches: list[dict]) -> torch.utils.data.DataLoader:
    # Shallow copies: the module lays out each batch in place (channels-last), and every run starts alike.
    return torch.utils.data.DataLoader([dict(batch) for batch in batches], batch_size=None)


def _iterations(arrivals: list[float]) -> list[float]:
    """Whole-iteration times from the moments consecutive batches reached the step."""
    return [after - before for before, after in zip(arrivals, arrivals[1:])]


def lightning_step_times(model_name: str, batches: list[dict]) -> list[float]:
    import lightning as L

    class Arrivals(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *args: object) -> None:
            self.times.append(time.perf_counter())

        def on_train_end(self, *args: object) -> None:
            self.times.append(time.perf_counter())  # the end of the last iteration

    arrivals = Arrivals()
    module = make_module(model_name)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=CLIP_NORM,
        callbacks=[arrivals],
        num_sanity_val_steps=0,
        precision="32-true",
    )
    trainer.fit(module, train_dataloaders=_loader(batches))
    return _iterations(arrivals.times)


def bare_step_times(model_name: str, batches: list[dict]) -> list[float]:
    """The same step without Lightning: forward, loss, backward, clipping, AdamW, schedule, clamp."""
    from convirt.losses import create_loss
    from convirt.training.module import MAX_LOGIT_SCALE
    from convirt.training.optimization import parameter_groups

    module = make_module(model_name)
    module.loss_fn = create_loss(module.loss_name)
    module.on_fit_start()  # the train / eval modes Lightning's fit gives the towers
    params = [p for p in module.parameters() if p.requires_grad]
    # configure_optimizers reads the trainer for the schedule length: same groups, short warm-up.
    optimizer = torch.optim.AdamW(parameter_groups(module.model, 3e-4, 1e-4, 0.05), betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
    arrivals = []
    for batch in _loader(batches):
        arrivals.append(time.perf_counter())
        batch = module.on_after_batch_transfer(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss = module._step(batch, "train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            module.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    arrivals.append(time.perf_counter())
    return _iterations(arrivals)


def memory_child(model_name: str, batch_size: int, sub_batch_size: int | None) -> None:
    """One training step in this process; prints the peak resident memory in bytes."""
    from convirt.losses import create_loss

    batch = make_batches(model_name, batch_size, 1)[0]
    module = make_module(model_name, sub_batch_size)
    module.loss_fn = create_loss(module.loss_name)
    module.train()
    before = resident_bytes()
    reset_peak()  # the peak of loading the weights is not the step's
    out = module.training_step(batch, 0)
    out.backward()
    print(json.dumps({"peak": peak_bytes(), "before_step": before}))


def measure_memory(model_name: str, batch_size: int, sub_batch_size: int | None) -> dict:
    command = [sys.executable, __file__, "--memory-child", model_name, str(batch_size), str(sub_batch_size or 0)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-effnet-minilm")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the two runners")
    parser.add_argument("--memory-batch", type=int, default=256)
    parser.add_argument("--memory-sub-batch", type=int, default=32)
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, batch, sub = args.memory_child
        memory_child(name, int(batch), int(sub) or None)
        return

    torch.set_num_threads(os.cpu_count() or 1)
    batches = make_batches(args.model, args.batch_size, args.steps + args.warmup)
    rates: dict[str, list[float]] = {"bare": [], "lightning": []}
    runners = {"bare": bare_step_times, "lightning": lightning_step_times}
    for repeat in range(args.repeats):  # interleaved, each first in turn
        for name in list(runners) if repeat % 2 == 0 else list(runners)[::-1]:
            times = runners[name](args.model, batches)[args.warmup :]
            rates[name].append(args.batch_size / statistics.median(times))
    ratios = [light / bare for light, bare in zip(rates["lightning"], rates["bare"])]
    bare_rate, lightning_rate = statistics.median(rates["bare"]), statistics.median(rates["lightning"])
    ratio = statistics.median(ratios)
    plain = measure_memory(args.model, args.memory_batch, None)
    cached = measure_memory(args.model, args.memory_batch, args.memory_sub_batch)
    memory_ratio = cached["peak"] / plain["peak"]
    step_ratio = (cached["peak"] - cached["before_step"]) / max(1, plain["peak"] - plain["before_step"])
    lines = [
        "## Training step: Lightning overhead and GradCache memory",
        "",
        f"`python benchmarks/train_throughput.py` on "
        f"{time.strftime('%Y-%m-%d')} ({machine_line('32-true')}). Model `{args.model}` (pretrained towers, "
        f"{FROZEN_GROUPS} image groups and {FROZEN_TEXT_LAYERS} text layers frozen, CLIP loss, AdamW, clipping at "
        f"{CLIP_NORM}, fp32), random images and "
        "tokenised phantom-like reports made once in memory and served by the same `DataLoader` to both; "
        "whole iterations timed (batch arrival to the next batch's arrival); per run the median of "
        f"{args.steps} iterations after {args.warmup} warm-up steps; the runners alternate over "
        f"{args.repeats} repeats, each with a fresh module: median over repeats [range].",
        "",
        "| runner | batch | samples/s |",
        "|---|---:|---:|",
        f"| bare PyTorch loop | {args.batch_size} | {bare_rate:.1f} [{min(rates['bare']):.1f}, "
        f"{max(rates['bare']):.1f}] |",
        f"| Lightning `Trainer` | {args.batch_size} | {lightning_rate:.1f} [{min(rates['lightning']):.1f}, "
        f"{max(rates['lightning']):.1f}] |",
        "",
        f"Lightning / bare, per repeat: **{ratio:.3f}** [{min(ratios):.3f}, {max(ratios):.3f}] (goal >= "
        f"{GOAL_RATIO}: {'met' if ratio >= GOAL_RATIO else 'not met'}).",
        "",
        f"Peak resident memory of one training step at batch {args.memory_batch}, each in a fresh process:",
        "",
        "| step | peak RSS MB | growth during the step MB |",
        "|---|---:|---:|",
        f"| plain, batch {args.memory_batch} | {plain['peak'] / 2**20:,.0f} | "
        f"{(plain['peak'] - plain['before_step']) / 2**20:,.0f} |",
        f"| GradCache, sub-batches of {args.memory_sub_batch} | {cached['peak'] / 2**20:,.0f} | "
        f"{(cached['peak'] - cached['before_step']) / 2**20:,.0f} |",
        "",
        f"GradCache / plain peak: **{memory_ratio:.2f}x** (goal <= {GOAL_MEMORY}x: "
        f"{'met' if memory_ratio <= GOAL_MEMORY else 'not met'}); "
        f"counting only the growth during the step: {step_ratio:.2f}x. The process peak includes "
        "the model weights and the batch itself, which GradCache does not shrink. Linux only (reads "
        "/proc/self/status; the peak mark is reset after loading the model).",
    ]
    write_section(Path(args.output), SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
