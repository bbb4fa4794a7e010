"""Random state of a training process: taken for GradCache's replay and saved per rank for exact resume."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn


def rng_state() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """This process's CPU and CUDA random state (dropout draws)."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def rng_state_of_rank(
    saved: dict[str, Any] | None, rank: int, world_size: int
) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """This rank's random state from a checkpoint's ``convirt_rng`` (``None``: nothing saved).

    A checkpoint from another number of ranks restores rank ``r`` from the saved rank ``r``
    where there was one (rank 0's otherwise), and says that the run is no longer exact."""
    if not saved:
        return None
    ranks = saved.get("ranks") or [{"cpu": saved["cpu"], "cuda": saved["cuda"]}]
    if len(ranks) != world_size:
        rank_zero_warn(
            f"the checkpoint was saved by {len(ranks)} process(es) and resumes on {world_size}: "
            f"dropout draws differ from the uninterrupted run's (resume is not exact)"
        )
    state = ranks[rank] if rank < len(ranks) else ranks[0]
    return state["cpu"], list(state["cuda"])


def set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    """Restore a state of :func:`rng_state`; CUDA only where the device count matches (else a warning)."""
    torch.set_rng_state(state[0])
    if not (state[1] and torch.cuda.is_available()):
        return
    if len(state[1]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state[1])
    else:
        warnings.warn(
            f"the checkpoint holds the random state of {len(state[1])} CUDA device(s), this process "
            f"sees {torch.cuda.device_count()}: CUDA dropout draws differ from the uninterrupted "
            f"run's (resume is not exact)",
            stacklevel=2,
        )
