"""A run over several nodes needs a launcher on each (torchrun, srun, mpirun...): without one, the ranks
of the other nodes never come and the run waits for them until the process group's timeout (30
minutes), so it is refused at once instead."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# What the launchers Lightning knows set in every process they start (torchrun, SLURM, Lightning's own
# multi-node environment, Open MPI / MPICH, LSF), or the rendezvous address a hand-made launch gives.
LAUNCHER_VARIABLES = (
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "NODE_RANK",
    "GROUP_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "LSB_JOBID",
    "MASTER_ADDR",
)


def require_launcher(num_nodes: int, devices: Any, option: str) -> None:
    """Refuse ``num_nodes`` > 1 outside a launcher; ``option`` names the setting in the message.

    Raises:
        ValueError: Fewer than one node, or several without a launcher, in one line.
    """
    if num_nodes < 1:
        raise ValueError(f"{option} must be at least 1, got {num_nodes}")
    if num_nodes > 1 and not any(os.environ.get(name) for name in LAUNCHER_VARIABLES):
        per_node = devices if devices not in (None, "auto") else "N"
        raise ValueError(
            f"{option} {num_nodes} needs a launcher on every node (torchrun --nnodes {num_nodes} "
            f"--nproc_per_node {per_node} ..., or srun): run the command under it"
        )


@contextmanager
def starting_lightning() -> Iterator[None]:
    """Lightning's RuntimeError while it sets a run up (srun's task counts against the devices and nodes
    asked, ...) as a one-line ValueError: a setting to change, not a bug."""
    try:
        yield
    except RuntimeError as error:
        raise ValueError(f"Lightning cannot start this run: {str(error).strip().splitlines()[0]}") from error
