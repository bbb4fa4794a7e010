"""Training precision on a CPU chosen by timing, where no rule can know.

On a CPU with native bf16 (AMX, AVX512-BF16) bf16 autocast is faster for some models and slower for
others: measured on a Xeon with AMX, the demo's EfficientNet fit took 201 s in bf16-mixed and 149 s in
32-true; ViT-S/16 and ViT-B/16 steps ran 2-3x faster in bf16 on the same kind of machine
(../shared/ENVIRONMENT.md, reference speeds). So before a fit on such a CPU, a few training steps
of the run's own model and batch size are timed at each candidate (``32-true``, ``bf16-mixed``) on a
synthetic batch, the faster is kept, and both times and the choice are logged and recorded (in the
run's saved config and in each checkpoint: :class:`PrecisionRecord`). The timing is bounded to a
few percent of the run's estimated length (:func:`choose_by_timing` says how); a run too short to pay
for it keeps ``32-true``.
Where bf16 is not native (AVX2 CPUs, where it is several times slower) ``32-true`` is chosen
without timing; on CUDA the rule of :func:`convirt._hardware.choose_precision` applies.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

# Share of the run's estimated length the timing may take.
BUDGET_FRACTION = 0.05
# Timed steps per candidate (after one warm-up step, which pays for oneDNN's kernel creation).
TIMED_STEPS = 2
# Set by the process that timed, so that the ranks it launches use its choice instead of timing again.
CHOICE_ENV = "CONVIRT_TRAIN_PRECISION"
# The text of a synthetic batch (its length is a short report's).
REPORT = "the lungs are clear without focal consolidation, effusion or pneumothorax; the heart is normal in size"


@dataclass
class PrecisionTiming:
    """What the timing found.

    Attributes:
        precision: The precision kept.
        seconds_per_step: Median seconds of a timed training step, per candidate.
        timing_seconds: Wall time the timing took (model build included).
        estimated_run_seconds: The run's estimated length at the faster candidate's speed.
        reason: The choice in words.
    """

    precision: str
    seconds_per_step: dict[str, float] = field(default_factory=dict)
    timing_seconds: float = 0.0
    estimated_run_seconds: float | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def clip_loss(first: torch.Tensor, second: torch.Tensor, scale: torch.Tensor | float = 10.0) -> torch.Tensor:
    """The symmetric InfoNCE loss of two ``(B, D)`` feature batches (what a timed step backpropagates)."""
    logits = first.float() @ second.float().T * scale
    targets = torch.arange(len(first), device=logits.device)
    return F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)


def contrastive_step(
    module: Any, tokenizer: Callable[[list[str]], torch.Tensor], batch_size: int, image_size: int
) -> Callable[[], torch.Tensor]:
    """The loss of one synthetic image-report batch of a :class:`~convirt.training.module.ContrastiveModule`."""
    images = torch.rand(batch_size, 3, image_size, image_size)
    if getattr(module, "channels_last", False):
        images = images.contiguous(memory_format=torch.channels_last)
    tokens = tokenizer([REPORT] * batch_size)

    def loss() -> torch.Tensor:
        image_features, text_features = module(images, tokens)
        return clip_loss(image_features, text_features, module.model.logit_scale.exp())

    return loss


def section_step(
    module: Any, tokenizer: Callable[[list[str]], torch.Tensor], batch_size: int
) -> Callable[[], torch.Tensor]:
    """The loss of one synthetic pair batch of a :class:`~convirt.training.text_pretrain.SectionMatchingModule`."""
    tokens = tokenizer([REPORT] * batch_size)
    return lambda: clip_loss(module(tokens), module(tokens))


def time_train_step(
    module: torch.nn.Module,
    loss: Callable[[], torch.Tensor],
    precision: str,
    steps: int = TIMED_STEPS,
    deadline: float | None = None,
) -> list[float]:
    """Seconds of each of ``steps`` training steps (``loss()`` forward, then backward) after one untimed
    warm-up step; stops early at ``deadline`` (a ``time.perf_counter()`` value).

    Args:
        module: The LightningModule whose parameters ``loss`` trains.
        loss: Computes one synthetic batch's loss.
        precision: ``32-true`` or ``bf16-mixed``.
    """
    module.train()
    times: list[float] = []
    for step in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            value = loss()
        value.backward()
        module.zero_grad(set_to_none=True)
        if step > 0:
            times.append(time.perf_counter() - start)
        if deadline is not None and time.perf_counter() > deadline and times:
            break
    return times


def estimated_steps(config: Any) -> int | None:
    """Optimizer steps the run will take: ``trainer.max_steps``, else ``max_epochs`` x the training
    split's batches (from the shard manifest); ``None`` where the config does not say."""
    trainer, data = config["trainer"], config.get("data") or {}
    max_steps = trainer.get("max_steps")
    if max_steps is not None and int(max_steps) > 0:
        return int(max_steps)
    epochs, shards, batch = trainer.get("max_epochs"), data.get("shards"), data.get("batch_size")
    if not (epochs and shards and batch):
        return None
    from convirt.data.shards import read_manifest

    try:
        samples = int(read_manifest(str(shards))["splits"]["train"]["samples"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    return int(epochs) * max(1, math.ceil(samples / int(batch)) // accumulate)


def choose_by_timing(
    build: Callable[[], tuple[torch.nn.Module, Callable[[], torch.Tensor]]],
    steps_in_run: int | None,
    candidates: tuple[str, ...] = ("32-true", "bf16-mixed"),
    budget_fraction: float = BUDGET_FRACTION,
) -> PrecisionTiming:
    """Time a few training steps at each candidate and keep the faster.

    The first candidate is always timed (the module's build, a warm-up step and two timed steps):
    its step time estimates the run (``steps_in_run`` steps). The other candidates are timed only
    where the time spent so far plus theirs (estimated at the first's speed) stays within
    ``budget_fraction`` of that estimate, and stop at that deadline; else the first candidate is
    kept, saying so. A run of unknown length is not timed.

    Args:
        build: Makes the run's module and the loss of one synthetic batch of the run's size
            (:func:`contrastive_step`, :func:`section_step`).
        steps_in_run: The run's optimizer steps (:func:`estimated_steps`); ``None``: unknown.
    """
    if steps_in_run is None:
        return PrecisionTiming(
            candidates[0], reason=f"the run's length is unknown (no max_steps, or max_epochs with a "
            f"readable shard manifest): {candidates[0]} untimed"
        )  # fmt: skip
    start = time.perf_counter()
    module, loss = build()
    seconds: dict[str, float] = {}
    estimate: float | None = None
    deadline: float | None = None
    for candidate in candidates:
        times = time_train_step(module, loss, candidate, deadline=deadline)
        seconds[candidate] = statistics.median(times)
        if estimate is None:
            estimate = seconds[candidate] * steps_in_run
            budget = budget_fraction * estimate
            spent = time.perf_counter() - start
            # Each further candidate costs about a warm-up and its timed steps.
            if spent + (TIMED_STEPS + 1) * seconds[candidate] * (len(candidates) - 1) > budget:
                return PrecisionTiming(
                    candidates[0],
                    seconds,
                    time.perf_counter() - start,
                    estimate,
                    f"the run (about {estimate:.0f} s) is too short to time the other candidates within "
                    f"{budget_fraction:.0%} of it: {candidates[0]}",
                )
            deadline = start + budget
    kept = min(seconds, key=lambda name: seconds[name])
    estimate = seconds[kept] * steps_in_run
    times_text = ", ".join(f"{name} {value:.3f} s/step" for name, value in seconds.items())
    return PrecisionTiming(
        kept, seconds, time.perf_counter() - start, estimate, f"timed on this CPU: {times_text}; kept the faster"
    )


def inherited_choice() -> str | None:
    """The precision a parent process timed and passed to the ranks it launched (``None``: none).
    Read only by a launched rank (:func:`launched_externally`): a later fit in the parent times anew."""
    return os.environ.get(CHOICE_ENV) or None


def pass_to_ranks(precision: str) -> None:
    """Let the ranks this process launches (Lightning's DDP launcher copies the environment) use its choice."""
    os.environ[CHOICE_ENV] = precision


def launched_externally() -> bool:
    """This process is one rank of a launch by torchrun, SLURM or Lightning's DDP launcher (it must
    not time alone: ranks that time apart could choose differently)."""
    return any(name in os.environ for name in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "PMI_RANK"))


class PrecisionRecord(pl.Callback):
    """Records how the training precision was chosen in each checkpoint (``convirt_precision``).

    Added to the run's callbacks by :func:`convirt.training.cli.configure_hardware`, so the saved
    config records it too.

    Args: the fields of :class:`PrecisionTiming` (typed, so that the saved config keeps them as they are).
    """

    def __init__(
        self,
        precision: str,
        reason: str = "",
        seconds_per_step: dict[str, float] | None = None,
        timing_seconds: float = 0.0,
        estimated_run_seconds: float | None = None,
    ) -> None:
        self.choice = PrecisionTiming(
            precision, dict(seconds_per_step or {}), timing_seconds, estimated_run_seconds, reason
        )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["convirt_precision"] = self.choice.as_dict()
