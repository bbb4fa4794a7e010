"""CPU threads against data-loader workers for the demo's training step; writes its BENCHMARKS.md section.

Each setting runs in its own process (torch's thread count is fixed per process): the demo's model
and data settings (configs/demo.yaml), 25 steps on phantom shards made here, the last 20 timed.
`convirt fit` gives torch every core the process may use (convirt._hardware.choose_num_threads);
this measures what the other choices would cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _markdown import machine_line, write_section

ROOT = Path(__file__).resolve().parents[1]
MODEL = "demo-effnet-minilm-128"
STEPS, WARMUP, REPEATS, BATCH = 25, 5, 3, 32
_CHILD = """
import sys, time
import torch, lightning as L, yaml
from convirt.training import ContrastiveModule, ShardDataModule
shards, model = sys.argv[1], sys.argv[4]
threads, workers, warmup, steps = (int(sys.argv[i]) for i in (2, 3, 5, 6))
torch.set_num_threads(threads)
torch.manual_seed(0)
config = yaml.safe_load(open(sys.argv[8]))["model"]
module = ContrastiveModule(model, freeze_image_groups=config["freeze_image_groups"],
                           freeze_text_layers=config["freeze_text_layers"], text_dropout=False, warmup_steps=5)
data = ShardDataModule(shards, model_name=model, batch_size=int(sys.argv[7]), num_workers=workers)
class Clock(L.Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == warmup:
            self.start = time.perf_counter()
    def on_train_end(self, trainer, *args):
        print((time.perf_counter() - self.start) / (trainer.global_step - warmup))
trainer = L.Trainer(max_steps=steps, accelerator="cpu", precision="32-true", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, callbacks=[Clock()])
trainer.fit(module, datamodule=data)
"""


def seconds_per_step(shards: Path, threads: int, workers: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(shards),
            str(threads),
            str(workers),
            MODEL,
            str(WARMUP),
            str(STEPS),
            str(BATCH),
            str(ROOT / "configs" / "demo.yaml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    from convirt._hardware import choose_num_threads
    from convirt.data.sources import read_rows
    from convirt.data.sources.phantom import write_phantom
    from convirt.data.writer import write_shards

    cores = choose_num_threads()
    settings = sorted({(cores, 1), (max(1, cores - 1), 1), (cores, 0), (cores, cores)})
    with tempfile.TemporaryDirectory() as folder:
        rows = write_phantom(Path(folder) / "phantom", 400, seed=0, size=256, workers=1, progress=False)
        shards = Path(folder) / "shards"
        write_shards(read_rows("csv", str(rows)), shards, image_size=192, shard_size=100, progress=False)
        runs: dict[tuple[int, int], list[float]] = {setting: [] for setting in settings}
        for repeat in range(REPEATS):  # interleaved: each repeat starts at another setting
            for setting in settings[repeat % len(settings) :] + settings[: repeat % len(settings)]:
                runs[setting].append(seconds_per_step(shards, *setting))
    timings = {setting: statistics.median(values) for setting, values in runs.items()}
    best = min(timings, key=timings.__getitem__)
    lines = [
        "## CPU threads and data-loader workers",
        "",
        f"`python benchmarks/threads.py` on {time.strftime('%Y-%m-%d')} ({machine_line('32-true')}). The demo's "
        f"training step (`{MODEL}`, configs/demo.yaml's frozen groups, batch {BATCH}), per run the mean of steps "
        f"{WARMUP + 1}-{STEPS}; the settings alternate over {REPEATS} runs: median [range]; `convirt fit` chooses "
        f"{cores} torch thread{'s' if cores > 1 else ''} here, whatever the workers.",
        "",
        "| torch threads | loader workers | s / step |",
        "|---:|---:|---:|",
        *[
            f"| {threads} | {workers} | {timings[setting]:.3f} [{min(runs[setting]):.3f}, {max(runs[setting]):.3f}]"
            f"{' (fastest)' if setting == best else ''} |"
            for setting in settings
            for threads, workers in [setting]
        ],
    ]
    write_section(Path(args.output), "threads", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
