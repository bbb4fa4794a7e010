"""The GPU run: the BiomedCLIP-sized training step, the data loader, `convirt embed`, and DDP scaling.

Measured on the machine it runs on, one part after the other:

1. **Training step**: `biomedclip-vitb16` (timm ViT-B/16 at 224 px and a BERT-base text tower at 256
   tokens) with the model options of `configs/biomedclip_vitb16.yaml` (CLIP loss, AdamW, clipping at
   1.0), stepped by a Lightning `Trainer` at the precision `convirt fit` chooses on the card
   (bf16-mixed from compute capability 8.0), batch 256 of synthetic pairs: random 8-bit images as the
   loader hands them over (normalised on the GPU by the module) and random token ids of the
   vocabulary filling all 256 positions. In its own process; the device is synchronised at every
   step boundary and the steps after the warm-up are timed (forward, backward, clipping, AdamW,
   schedule, Lightning's hooks); the peak GPU memory is that process's over the whole fit. Where
   batch 256 runs out of memory the section says so and measures GradCache (`model.sub_batch_size`)
   at the same batch instead.
2. **Data loader**: `ShardDataModule`'s training loader (shuffle, decode, augmentation, tokenisation,
   collation) with one worker per usable core and no model, over 224-px shards made here by
   `convirt phantom` and `convirt shards`; a first pass starts the workers, the second (workers
   running) is the figure.
3. **`convirt embed`**: a checkpoint of the same model written by `save_initial_checkpoint`, loaded and
   embedded as `convirt embed --split train --batch-size 256 --workers <cores>` does (`load_model`,
   `Encoder` with the precision policy, `build_eval_batches`, `embed_to_folder` through Lightning's
   predict on the GPU) over the same shards. Images/s from the first batch's vectors to the last's:
   start-up, the model's load and the first batch (which settles the precision) excluded; the whole
   call's time is given beside it.
4. **Several GPUs**: the training step with DDP on every visible GPU, batch 256 per GPU (the loss spans
   the global batch), samples/s and scaling efficiency against one GPU; with one GPU the section says so.

Nothing is downloaded (the machines have no network): the registry's text tower names a hub model, so
the script writes a local folder of its shape (config and a WordPiece vocabulary, no weights) that is
passed as `text_model_path`; both towers are built with `pretrained=False` (random weights take the
time trained ones do).

On a GPU machine (the repository and its .venv there), one command, sized (not yet timed) for about
3 minutes on one H100, well within the 10 minutes one device command may take:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gpu.py --output "$OUT/gpu.md" --budget-s 480

then, here, put its section into BENCHMARKS.md:

    .venv/bin/python benchmarks/gpu.py --section-from PATH/gpu.md --output BENCHMARKS.md

(`--output BENCHMARKS.md` on the machine itself writes the section in place.) `--budget-s` stops early:
a part that would start with too little of it left is skipped, a training run still timing at the
end of it stops there, and the section says what ran. Its CPU check, run by
tests/benchmarks/test_gpu.py: `python benchmarks/gpu.py --smoke --output /tmp/gpu-smoke.md`
(`test-tiny-vit` with a tiny text tower, batch 8, 2 timed steps, a few dozen samples, float32 on the
CPU; `--ddp-devices 2` adds the DDP part with 2 CPU processes).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._markdown import commit, machine_line, write_section  # noqa: E402
from benchmarks._process import ROOT, peak_bytes, reset_peak  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTION = "gpu"
RECIPE = ROOT / "configs" / "biomedclip_vitb16.yaml"
RECIPE_OPTIONS = ("loss", "learning_rate", "tower_learning_rate", "weight_decay", "warmup_steps")
CLIP_NORM = 1.0  # the recipe's trainer.gradient_clip_val
# PubMedBERT (microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract, BiomedCLIP's text tower) is BERT-base:
# hidden 768, 12 layers, 12 heads, feed-forward 3072, 512 positions; its own uncased WordPiece
# vocabulary has BERT's size, 30,522 entries.
BERT_BASE = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}
TINY_BERT = {
    "vocab_size": 512,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4, as in BERT's vocabularies
# The words of phantom reports and a few more (whole words, as a radiology vocabulary has them).
REPORT_WORDS = (
    "findings impression heart size normal enlarged cardiac silhouette cardiomegaly borderline lungs clear no "
    "acute process pleural effusion pneumothorax consolidation edema interstitial pulmonary nodule nodules mass "
    "opacity focal bilateral right left lower upper middle lobe costophrenic angle blunted line small moderate "
    "large mild possible suspicious noted visible evidence chest radiograph there is are a the of in and with or "
    "without stable unchanged compared to prior study"
).split()
OUT_OF_MEMORY = re.compile(r"out of memory|ALLOC_FAILED", re.IGNORECASE)
GRACE_S = 60  # a training process still running this long after its deadline (or its start) is killed
# Seconds a part needs at least to be worth starting (model build and a few steps on one H100).
MINIMUM_S = {"train": 60, "gradcache": 90, "loader": 45, "embed": 60, "ddp": 120}


@dataclass(frozen=True)
class Plan:
    """What one run measures and at what size."""

    model: str
    text_tower: dict[str, int]
    batch_size: int
    warmup: int
    steps: int
    sub_batch_size: int
    accelerator: str
    precision: str
    precision_reason: str
    images: int  # phantom images drawn
    phantom_side: int  # their side; the shards store them at the model's
    copies: int  # each listed this many times in the shards
    embed_batch: int
    smoke: bool


def full_plan() -> Plan:
    from convirt._hardware import choose_precision

    choice = choose_precision("gpu")
    return Plan(
        model="biomedclip-vitb16",
        text_tower=BERT_BASE,
        batch_size=256,
        warmup=10,
        steps=50,
        sub_batch_size=64,
        accelerator="gpu",
        precision=choice.precision,
        precision_reason=choice.reason,
        images=1024,
        phantom_side=256,
        copies=16,
        embed_batch=256,
        smoke=False,
    )


def smoke_plan() -> Plan:
    return Plan(
        model="test-tiny-vit",
        text_tower=TINY_BERT,
        batch_size=8,
        warmup=1,
        steps=2,
        sub_batch_size=4,
        accelerator="cpu",
        precision="32-true",
        precision_reason="the CPU smoke run: float32",
        images=12,
        phantom_side=160,
        copies=2,
        embed_batch=8,
        smoke=True,
    )


# ---------------------------------------------------------------------------------------------- model


def write_text_tower(folder: Path, sizes: dict[str, int]) -> Path:
    """A BERT config of ``sizes`` and a WordPiece tokenizer with that many entries in ``folder``; no
    weights (a tower built with ``pretrained=False`` needs only the config)."""
    import transformers
    from transformers import BertConfig, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    words = sorted(set(REPORT_WORDS) | set(letters)) + [f"##{c}" for c in letters] + list(".,:;()-/%")
    vocab = SPECIAL_TOKENS + words
    if len(vocab) > sizes["vocab_size"]:
        raise ValueError(f"text tower vocabulary of {sizes['vocab_size']} holds fewer than {len(vocab)} tokens")
    vocab += [f"[unused{i}]" for i in range(sizes["vocab_size"] - len(vocab))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    if int(transformers.__version__.split(".")[0]) >= 5:  # it ignores vocab_file, leaving the 5 special tokens
        tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    else:
        tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"the text tower's tokenizer holds {len(tokenizer)} tokens, not {len(vocab)}")
    tokenizer.save_pretrained(folder)
    BertConfig(**sizes).save_pretrained(folder)
    return folder


def model_options(plan: Plan, text_model_path: Path, sub_batch_size: int | None) -> dict[str, Any]:
    """ContrastiveModule's arguments: the recipe's model options, random towers, the local text tower."""
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))["model"]
    return {
        "model_name": plan.model,
        "pretrained": False,
        "text_model_path": str(text_model_path),
        "sub_batch_size": sub_batch_size,
        **{name: recipe[name] for name in RECIPE_OPTIONS},
    }


def synthetic_batches(count: int, batch_size: int, side: int, context: int, vocab: int) -> list[dict[str, Any]]:
    """``count`` batches as the training loader hands them over: 8-bit ``(B, 1, side, side)`` images and
    ``(B, context)`` token ids ([CLS], random ids of the vocabulary's words, [SEP]: no padding). Four
    distinct batches are made and repeated (shallow copies: the module replaces the images in place)."""
    generator = torch.Generator().manual_seed(0)
    distinct = []
    for _ in range(min(count, 4)):
        text = torch.randint(len(SPECIAL_TOKENS), vocab, (batch_size, context), generator=generator)
        text[:, 0], text[:, -1] = SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]")
        image = torch.randint(0, 256, (batch_size, 1, side, side), dtype=torch.uint8, generator=generator)
        distinct.append({"image": image, "text": text, "key": [""] * batch_size, "meta": [{}] * batch_size})
    return [dict(distinct[i % len(distinct)]) for i in range(count)]


# ------------------------------------------------------------------------------- training (child process)


def train_child(config_path: Path) -> None:
    """One training run (each DDP rank runs this); rank 0 writes the result JSON named in the config."""
    import lightning as L
    from torch.utils.data import DataLoader

    from convirt.models import get_model_config
    from convirt.training import ContrastiveModule

    config = json.loads(config_path.read_text())
    cuda = config["accelerator"] == "gpu"

    class StepTimer(L.Callback):
        """Batch arrival times with the device synchronised; stops timing at the deadline."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.stopped = False

        def _now(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            else:
                reset_peak()

        def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
            simulated = config.get("oom_above")
            if simulated and not config["sub_batch_size"] and config["batch_size"] > simulated:
                raise torch.OutOfMemoryError(f"simulated: batch {config['batch_size']} > {simulated} (--oom-above)")
            self.times.append(self._now())

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            timed = len(self.times) - config["warmup"]
            late = timed >= 2 and time.time() > config["deadline"]
            if trainer.strategy.reduce_boolean_decision(late, all=False):  # the ranks stop together
                trainer.should_stop, self.stopped = True, True

        def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.times.append(self._now())

    torch.manual_seed(0)
    module = ContrastiveModule(**config["options"])
    model_cfg = get_model_config(config["options"]["model_name"])["model_cfg"]
    total = config["warmup"] + config["steps"]
    batches = synthetic_batches(
        total,
        config["batch_size"],
        int(model_cfg["vision_cfg"]["image_size"]),
        int(model_cfg["text_cfg"]["context_length"]),
        int(config["vocab_size"]),
    )
    timer = StepTimer()
    devices = int(config["devices"])
    trainer = L.Trainer(
        accelerator=config["accelerator"],
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        precision=config["precision"],
        max_steps=total,
        gradient_clip_val=CLIP_NORM,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,  # every rank steps through its own copy of the batches
        callbacks=[timer],
    )
    try:
        trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    except RuntimeError as error:  # torch.OutOfMemoryError, or a library's allocation failing
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not isinstance(error, torch.OutOfMemoryError) and not OUT_OF_MEMORY.search(message):
            raise
        result: dict[str, Any] = {"oom": True, "message": message[:300]}
    else:
        steps = [after - before for before, after in zip(timer.times, timer.times[1:])][config["warmup"] :]
        result = {
            "oom": False,
            "world_size": trainer.world_size,
            "step_s": steps,
            "samples_per_s": trainer.world_size * config["batch_size"] * len(steps) / sum(steps),
            "stopped_at_deadline": timer.stopped,
            "parameters": sum(p.numel() for p in module.parameters()),
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else peak_bytes(),
            "reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        }
    if trainer.global_rank == 0:
        Path(config["result"]).write_text(json.dumps(result))


def run_training(
    plan: Plan, text_tower: Path, work: Path, deadline: float, devices: int, sub_batch_size: int | None, oom_above: int
) -> dict[str, Any]:
    """A training run in its own process (its peak memory its own, an out-of-memory error contained)."""
    name = f"train-{devices}-{sub_batch_size or 0}"
    config = {
        "options": model_options(plan, text_tower, sub_batch_size),
        "vocab_size": plan.text_tower["vocab_size"],
        "batch_size": plan.batch_size,
        "sub_batch_size": sub_batch_size,
        "warmup": plan.warmup,
        "steps": plan.steps,
        "accelerator": plan.accelerator,
        "precision": plan.precision,
        "devices": devices,
        "deadline": deadline,
        "oom_above": oom_above,
        "result": str(work / f"{name}.result.json"),
    }
    (work / f"{name}.json").write_text(json.dumps(config))
    result_path = Path(config["result"])
    result_path.unlink(missing_ok=True)  # a result left by an earlier run in the same --work
    command = [sys.executable, str(Path(__file__).resolve()), "--train-child", str(work / f"{name}.json")]
    print(f"[gpu] training: {devices} device(s), batch {plan.batch_size}, sub-batch {sub_batch_size}", flush=True)
    # Its own session: DDP ranks it launches are ended with it if it overruns the budget.
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    allowed = max(GRACE_S, deadline - time.time() + GRACE_S)  # its start-up at least, whatever is left
    try:
        code = process.wait(timeout=allowed)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return {"error": f"still running after {allowed:.0f} s, past the budget's end: stopped"}
    if not result_path.is_file():
        return {"error": f"the training process failed (exit {code}); its traceback is in the run's output"}
    return json.loads(result_path.read_text())


# ------------------------------------------------------------------------------------------- the data


def run_command(*args: str) -> None:
    """A `convirt` command in this process (as typed, without a new interpreter's start-up)."""
    from convirt.cli.main import main

    print("$ convirt " + shlex.join(args), flush=True)
    code = main(list(args))
    if code != 0:
        raise RuntimeError(f"convirt {shlex.join(args)} failed ({code})")


def make_shards(plan: Plan, work: Path, workers: int) -> Path:
    """Phantom pairs drawn by `convirt phantom`, each listed ``copies`` times (as other patients), made
    into shards at the model's side by `convirt shards`; about four shards per worker."""
    from convirt.data.transforms import image_side
    from convirt.models.factory import get_preprocess_cfg

    side = image_side(get_preprocess_cfg(plan.model), None)
    phantom = work / "phantom"
    run_command(
        "phantom",
        "--output",
        str(phantom),
        "--num-samples",
        str(plan.images),
        "--size",
        str(plan.phantom_side),
        "--seed",
        "0",
        "--workers",
        str(workers),
    )
    with open(phantom / "rows.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(phantom / "copies.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for copy in range(plan.copies):
            writer.writerows({**row, "patient_id": f"c{copy}-{row['patient_id']}"} for row in rows)
    samples = plan.images * plan.copies
    shards = work / "shards"
    run_command(
        "shards",
        "--input",
        str(phantom / "copies.csv"),
        "--output",
        str(shards),
        "--image-size",
        str(side),
        "--shard-size",
        str(max(1, samples // (4 * workers))),
        "--val-fraction",
        "0",
        "--test-fraction",
        "0",
        "--keep-duplicates",
        "--workers",
        str(workers),
    )
    return shards


def measure_loader(plan: Plan, shards: Path, text_tower: Path, workers: int) -> dict[str, Any]:
    """Samples/s of the training loader: a first pass (workers started inside the clock), then a second."""
    from convirt.training import ShardDataModule

    data = ShardDataModule(
        str(shards),
        model_name=plan.model,
        text_model_path=str(text_tower),
        batch_size=plan.batch_size,
        num_workers=workers,
        seed=0,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    passes = []
    for _ in range(2):  # persistent workers: the second pass runs on the workers the first started
        start = time.perf_counter()
        samples = sum(len(batch["key"]) for batch in loader)
        passes.append((samples, time.perf_counter() - start))
    del loader, data
    gc.collect()
    (cold, cold_s), (warm, warm_s) = passes
    return {"samples": warm, "samples_per_s": warm / warm_s, "first_pass_per_s": cold / cold_s, "workers": workers}


def measure_embed(plan: Plan, shards: Path, text_tower: Path, work: Path, workers: int) -> dict[str, Any]:
    """`convirt embed`'s path over the training shards from a `save_initial_checkpoint` checkpoint."""
    from functools import partial

    from convirt.data.inputs import build_eval_batches
    from convirt.data.stream import pad_id_of
    from convirt.embeddings.encode import Encoder
    from convirt.embeddings.run import embed_to_folder
    from convirt.models import model_fingerprint
    from convirt.models.sources import load_model
    from convirt.training.module import save_initial_checkpoint
    from convirt.training.predict import encode_on_devices

    checkpoint = save_initial_checkpoint(
        str(work / "initial.ckpt"), plan.model, pretrained=False, text_model_path=str(text_tower)
    )
    start = time.perf_counter()
    loaded = load_model(checkpoint)
    load_s = time.perf_counter() - start
    encoder = Encoder(loaded.model, "auto", pad_id_of(loaded.tokenizer))
    stamps: list[tuple[float, int]] = []  # (when a batch's vectors were back on the host, its size)
    encode = encoder.encode

    def timed_encode(inputs: torch.Tensor, modality: str = "image") -> Any:
        vectors = encode(inputs, modality)  # float32 numpy on the host: the device has finished
        stamps.append((time.perf_counter(), len(vectors)))
        return vectors

    encoder.encode = timed_encode  # type: ignore[method-assign]

    def batches(done: set[str]) -> Any:
        return build_eval_batches(
            str(shards),
            loaded.preprocess_cfg,
            loaded.tokenizer,
            plan.embed_batch,
            split="train",
            skip_keys=done,
            num_workers=workers,
        )

    accelerator = "gpu" if plan.accelerator == "gpu" else "cpu"
    shutil.rmtree(work / "embeddings", ignore_errors=True)  # a fresh folder: embed_to_folder resumes one
    start = time.perf_counter()
    count, _ = embed_to_folder(
        encoder,
        batches,
        work / "embeddings",
        model_fingerprint(loaded),
        encode_all=partial(encode_on_devices, accelerator=accelerator, devices=1),
        progress=False,
    )
    whole_s = time.perf_counter() - start
    settled = encoder.settled["image"]
    if len(stamps) < 2:
        raise ValueError(f"{count} images made {len(stamps)} batch: too few to time past the first")
    images = sum(size for _, size in stamps[1:])
    return {
        "images": count,
        "images_per_s": images / (stamps[-1][0] - stamps[0][0]),
        "whole_per_s": count / whole_s,
        "whole_s": whole_s,
        "load_s": load_s,
        "precision": settled.describe(),
        "workers": workers,
    }


# ---------------------------------------------------------------------------------------------- report


def card_line(plan: Plan) -> str:
    if plan.accelerator != "gpu":
        return "Card: none (CPU smoke run)"
    properties = torch.cuda.get_device_properties(0)
    count = torch.cuda.device_count()
    return (
        f"Card: {torch.cuda.get_device_name(0)} ({properties.total_memory / 2**30:.0f} GiB, compute capability "
        f"{properties.major}.{properties.minor}; {count} visible), CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}, torch {torch.__version__}"
    )


def _bold(value: float, spec: str = ",.1f") -> str:
    return f"**{value:{spec}}**"


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


def train_rows(plan: Plan, results: dict[str, Any]) -> list[str]:
    train, gradcache = results.get("train"), results.get("gradcache")
    label = f"training step, batch {plan.batch_size}"
    if train is None:
        return [f"| {label} | not run | {results.get('train_skipped', 'pending')} |"]
    if "error" in train:
        return [f"| {label} | failed | {train['error']} |"]
    rows = []
    measured, how = train, "plain step"
    if train["oom"]:
        rows.append(f"| {label}, plain step | out of memory | {train['message']} |")
        if gradcache is None:
            return rows + [f"| {label}, GradCache | not run | {results.get('gradcache_skipped', 'pending')} |"]
        if "error" in gradcache or gradcache["oom"]:
            why = gradcache.get("error") or gradcache.get("message")
            return rows + [f"| {label}, GradCache | failed | {why} |"]
        measured, how = gradcache, f"GradCache, sub-batches of {plan.sub_batch_size}"
    steps = measured["step_s"]
    stopped = " (stopped at the budget's end)" if measured["stopped_at_deadline"] else ""
    if plan.accelerator == "gpu":
        memory = "peak GPU memory, that fit"
        how_memory = (
            "allocated by tensors (weights, AdamW state, activations), from the fit's start; "
            f"{_gib(measured['reserved_bytes'])} reserved by the allocator"
        )
    else:
        memory, how_memory = "peak resident memory, that fit", "of the training process, from the fit's start"
    rows += [
        f"| {label}, {how} | {_bold(measured['samples_per_s'])} samples/s | step median "
        f"{statistics.median(steps):.3f} s [{min(steps):.3f}, {max(steps):.3f}] over {len(steps)} steps after "
        f"{plan.warmup} warm-up{stopped}; {measured['parameters'] / 1e6:,.1f}M parameters |",
        f"| {memory} | {_bold(measured['peak_bytes'] / 2**30, '.2f')} GiB | {how_memory} |",
    ]
    return rows


def missing_row(label: str, part: str, results: dict[str, Any]) -> str | None:
    """The row of a part that has no figure (skipped, failed, or not reached yet); None when it has one."""
    result = results.get(part)
    if result is None:
        return f"| {label} | not run | {results.get(f'{part}_skipped', 'pending')} |"
    if "error" in result:
        return f"| {label} | failed | {result['error']} |"
    return None


def body(plan: Plan, results: dict[str, Any], command: str, workers: int) -> str:
    loader, embed, ddp = results.get("loader"), results.get("embed"), results.get("ddp")
    rows = train_rows(plan, results)
    if loader is None or "error" in loader:
        rows.append(missing_row("data loader", "loader", results) or "")
    else:
        rows.append(
            f"| data loader, {loader['workers']} workers, batch {plan.batch_size} | "
            f"{_bold(loader['samples_per_s'])} samples/s | second pass over {loader['samples']:,} samples, "
            f"workers running; the first (workers started inside the clock) {loader['first_pass_per_s']:,.1f} |"
        )
    if embed is None or "error" in embed:
        rows.append(missing_row("convirt embed", "embed", results) or "")
    else:
        rows.append(
            f"| convirt embed, batch {plan.embed_batch}, {embed['workers']} workers | "
            f"{_bold(embed['images_per_s'])} images/s | from the first batch's vectors to the last's over "
            f"{embed['images']:,} images at {embed['precision']}; the whole `embed_to_folder` call (data-loader "
            f"start, predict set-up, first batch) {embed['whole_s']:.1f} s, {embed['whole_per_s']:,.1f} images/s; "
            f"loading the checkpoint {embed['load_s']:.1f} s |"
        )
    if ddp is None:
        rows.append(f"| DDP | not measured | {results.get('ddp_skipped', 'pending')} |")
    elif "error" in ddp:
        rows.append(missing_row("DDP", "ddp", results) or "")
    elif ddp["oom"]:
        rows.append(f"| DDP | out of memory | {ddp['message']} |")
    else:
        single = results["gradcache"] if results["train"].get("oom") else results["train"]
        efficiency = ddp["samples_per_s"] / (ddp["world_size"] * single["samples_per_s"])
        rows.append(
            f"| DDP, {ddp['world_size']} devices, batch {plan.batch_size} per device | "
            f"{_bold(ddp['samples_per_s'])} samples/s | scaling efficiency {_bold(efficiency, '.2f')} (/ "
            f"{ddp['world_size']} x one device's {single['samples_per_s']:,.1f}); step median "
            f"{statistics.median(ddp['step_s']):.3f} s over {len(ddp['step_s'])} steps |"
        )
    model = (
        f"`{plan.model}` (timm ViT-B/16, 224 px; a BERT-base text tower at 256 tokens: hidden "
        f"{plan.text_tower['hidden_size']}, {plan.text_tower['num_hidden_layers']} layers, "
        f"{plan.text_tower['num_attention_heads']} heads, vocabulary {plan.text_tower['vocab_size']:,}, "
        "PubMedBERT's sizes)"
        if not plan.smoke
        else f"`{plan.model}` with a tiny local text tower ({plan.text_tower['num_hidden_layers']} layers, "
        f"{plan.text_tower['hidden_size']} wide)"
    )
    title = "## GPU: training step, data loader, embedding, DDP" + (" (CPU smoke run, not a measurement)" * plan.smoke)
    return f"""{title}

`{command}` on {time.strftime("%Y-%m-%d")}, commit {commit()}. {card_line(plan)}.
{machine_line(plan.precision)} ({plan.precision_reason}); {workers} usable cores.

Model {model}, both towers random (`pretrained=False`: nothing downloaded), the model options of
`configs/biomedclip_vitb16.yaml` (CLIP loss, AdamW, clipping at {CLIP_NORM}). Training: a Lightning
`Trainer` in its own process, synthetic pairs (random 8-bit images normalised on the device, random
token ids of the vocabulary filling the context), the device synchronised at each step boundary.
Loader and embedding: {plan.images * plan.copies:,} samples of `convirt phantom` images stored by
`convirt shards` at the model's side. Method: `benchmarks/gpu.py`'s docstring.

| measure | value | how |
|---|---:|---|
{chr(10).join(rows)}
"""


# ------------------------------------------------------------------------------------------------ main


def copy_section(source: Path, output: Path) -> None:
    """Put the ``gpu`` section of ``source`` (a file a GPU machine wrote) into ``output``."""
    text = source.read_text(encoding="utf-8")
    start, end = f"<!-- {SECTION}:start -->", f"<!-- {SECTION}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"no {SECTION} section in {source}: give the file `benchmarks/gpu.py --output` wrote")
    write_section(output, SECTION, text[text.index(start) + len(start) : text.index(end)].strip())
    print(f"wrote the {SECTION} section of {source} into {output}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output", type=Path, help="Markdown file whose gpu section is written (BENCHMARKS.md)")
    parser.add_argument("--smoke", action="store_true", help="the CPU check: tiny model, batch 8, 2 timed steps")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop early after this many seconds")
    parser.add_argument("--steps", type=int, help="timed training steps, 2 or more (default 50; smoke 2)")
    parser.add_argument("--warmup", type=int, help="warm-up training steps (default 10; smoke 1)")
    parser.add_argument("--batch-size", type=int, help="training and loader batch (default 256; smoke 8)")
    parser.add_argument("--ddp-devices", type=int, help="DDP processes (default: every visible GPU; smoke: none)")
    parser.add_argument("--work", type=Path, help="folder for shards, checkpoint, embeddings (default: a temp one)")
    parser.add_argument("--section-from", type=Path, help="copy the gpu section of this file into --output")
    parser.add_argument("--oom-above", type=int, default=0, help=argparse.SUPPRESS)  # simulate a smaller card
    parser.add_argument("--train-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_child is None and args.output is None:
        parser.error("--output is required (BENCHMARKS.md, or a file to bring back from the GPU machine)")
    if args.steps is not None and args.steps < 2:
        parser.error(f"--steps must be 2 or more (a median and a range), got {args.steps}")
    if args.smoke and args.output.resolve() == (ROOT / "BENCHMARKS.md").resolve():
        parser.error("--smoke is a check, not a measurement: give it another --output than BENCHMARKS.md")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.train_child is not None:
        train_child(args.train_child)
        return
    if args.section_from is not None:
        copy_section(args.section_from, args.output)
        return
    started = time.time()
    deadline = started + args.budget_s
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine, or `--smoke` for the CPU check")
    plan = smoke_plan() if args.smoke else full_plan()
    plan = replace(
        plan,
        steps=args.steps or plan.steps,
        warmup=plan.warmup if args.warmup is None else args.warmup,
        batch_size=args.batch_size or plan.batch_size,
    )
    from convirt._hardware import cpu_info

    workers = cpu_info().cores
    ddp_devices = args.ddp_devices if args.ddp_devices is not None else (0 if args.smoke else torch.cuda.device_count())
    shown = list(argv if argv is not None else sys.argv[1:])
    for option in ("--output", "--work"):  # where files went is not how it was measured
        if option in shown:
            del shown[shown.index(option) : shown.index(option) + 2]
    command = shlex.join(["python", "benchmarks/gpu.py", *shown])
    results: dict[str, Any] = {}
    print(f"[gpu] plan: {json.dumps(asdict(plan))}; {workers} cores; budget {args.budget_s:.0f} s", flush=True)

    def write() -> None:  # after every part: a run stopped from outside keeps what it measured
        write_section(args.output, SECTION, body(plan, results, command, workers))

    def left(part: str) -> bool:
        remaining = deadline - time.time()
        if remaining >= (0 if plan.smoke else MINIMUM_S[part]):  # the smoke run's parts take seconds
            return True
        results[f"{part}_skipped"] = f"skipped: {max(0.0, remaining):.0f} s of the {args.budget_s:.0f} s budget left"
        return False

    def guarded(part: str, run: Any) -> None:  # a failing part costs its own figure, not the run's others
        try:
            results[part] = run()
        except Exception as error:  # noqa: BLE001 (reported in the section, traceback printed)
            import traceback

            traceback.print_exc()
            results[part] = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"}
        print(f"[gpu] {part}: {json.dumps(results[part])[:600]}", flush=True)
        write()

    with tempfile.TemporaryDirectory() if args.work is None else contextlib.nullcontext(args.work) as folder:
        work = Path(folder)
        work.mkdir(parents=True, exist_ok=True)
        text_tower = write_text_tower(work / "text-tower", plan.text_tower)
        write()
        # Training stops timing early enough to leave the loader and the embedding their minimum.
        train_deadline = deadline - (0 if plan.smoke else MINIMUM_S["loader"] + MINIMUM_S["embed"])
        if left("train"):
            results["train"] = run_training(plan, text_tower, work, train_deadline, 1, None, args.oom_above)
            print(f"[gpu] train: {json.dumps(results['train'])[:600]}", flush=True)
            if results["train"].get("oom") and left("gradcache"):
                write()
                results["gradcache"] = run_training(
                    plan, text_tower, work, train_deadline, 1, plan.sub_batch_size, args.oom_above
                )
                print(f"[gpu] gradcache: {json.dumps(results['gradcache'])[:600]}", flush=True)
            write()
        shards: Path | None = None
        if left("loader"):

            def loader() -> dict[str, Any]:
                nonlocal shards
                shards = make_shards(plan, work, workers)
                return measure_loader(plan, shards, text_tower, workers)

            guarded("loader", loader)
        if left("embed"):

            def embed() -> dict[str, Any]:
                return measure_embed(plan, shards or make_shards(plan, work, workers), text_tower, work, workers)

            guarded("embed", embed)
            gc.collect()  # the embedding model off the GPU before the DDP ranks take it
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if ddp_devices < 2:
            results["ddp_skipped"] = (
                f"one GPU visible ({torch.cuda.get_device_name(0)}): no multi-GPU step"
                if torch.cuda.is_available()
                else "no GPU: no multi-GPU step"
            )
        elif left("ddp"):
            single = results.get("gradcache") if results.get("train", {}).get("oom") else results.get("train")
            if single is None or "error" in single or single.get("oom"):
                results["ddp_skipped"] = "no one-device figure to scale against"
            else:
                sub = plan.sub_batch_size if results["train"].get("oom") else None
                results["ddp"] = run_training(plan, text_tower, work, deadline, ddp_devices, sub, args.oom_above)
                print(f"[gpu] ddp: {json.dumps(results['ddp'])[:600]}", flush=True)
        write()
    print(body(plan, results, command, workers))
    print(f"[gpu] done in {time.time() - started:.0f} s; section {SECTION!r} of {args.output}")


if __name__ == "__main__":
    main()
