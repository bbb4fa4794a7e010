"""What the machine can do fast: the numeric precision and the CPU threads that fit it.

Infrastructure any layer may use (it imports only torch). bf16 autocast is fast only where the
hardware computes in bf16: CUDA devices of compute capability 8.0 or newer, and CPUs with AMX or
AVX512-BF16. Elsewhere it is emulated: on an AVX2 CPU bf16 autocast runs several times SLOWER
than fp32, and on a CUDA device without bf16 half precision (``16-mixed``) is the fast choice.
Lightning has no such rule (its default is always ``32-true``), hence this module.

The CPU's own flags are not enough: ``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` cap the
kernels torch may use (set them to ``avx2`` / ``AVX2`` to simulate the common CPU), so both are
read as well.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA values) that still allow its native bf16 kernels.
_ONEDNN_BF16_ISAS = frozenset(
    {
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX512_CORE_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512",
        "AVX10_1_512_AMX",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
        "ALL",
        "DEFAULT",
    }
)


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as torch will use it.

    Attributes:
        model: The processor's name (``/proc/cpuinfo`` model name, else :func:`platform.processor`).
        capability: ``torch.backends.cpu.get_cpu_capability()`` (``AVX512``, ``AVX2``, ``DEFAULT``...).
        bf16_instructions: The CPU has AMX or AVX512-BF16 instructions.
        native_bf16: bf16 runs natively here: the instructions exist and neither
            ``ATEN_CPU_CAPABILITY`` nor ``ONEDNN_MAX_CPU_ISA`` rules them out.
        cores: CPUs this process may run on.
        threads: torch intra-op threads.
    """

    model: str
    capability: str
    bf16_instructions: bool
    native_bf16: bool
    cores: int
    threads: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for ``metrics.json`` and benchmark tables)."""
        return asdict(self)

    def describe(self) -> str:
        """One line: ``Intel(R) Xeon(R) ... (capability AVX512, native bf16), 2 cores``."""
        bf16 = (
            "native bf16"
            if self.native_bf16
            else ("bf16 instructions capped off" if self.bf16_instructions else "no native bf16")
        )
        return f"{self.model} (capability {self.capability}, {bf16}), {self.cores} cores"


@dataclass(frozen=True)
class PrecisionChoice:
    """A Lightning precision and why it was chosen."""

    precision: str
    device: str
    reason: str


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _bf16_instructions() -> bool:
    """AMX or AVX512-BF16 present, per torch's cpuinfo (``/proc/cpuinfo`` flags as a fallback)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if None not in probes:
        return any(bool(probe()) for probe in probes)  # type: ignore[misc]
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text(encoding="utf-8", errors="replace") if cpuinfo.is_file() else ""
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_info() -> CpuInfo:
    """Describe this process's CPU: its name, the kernels torch uses, and whether bf16 is native."""
    capability = torch.backends.cpu.get_cpu_capability()
    instructions = _bf16_instructions()
    isa_cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    native = instructions and capability.startswith("AVX512") and isa_cap in _ONEDNN_BF16_ISAS
    return CpuInfo(
        model=_cpu_model(),
        capability=capability,
        bf16_instructions=instructions,
        native_bf16=native,
        cores=_cores(),
        threads=torch.get_num_threads(),
    )


def resolve_device(accelerator: object) -> str:
    """``cuda``, ``mps``, ``cpu`` or ``other`` for a Lightning accelerator name (``None``: ``auto``;
    an accelerator object or config: ``other``)."""
    name = (accelerator or "auto").lower() if isinstance(accelerator, str) or accelerator is None else "other"
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if name in ("gpu", "cuda"):
        return "cuda" if torch.cuda.is_available() or name == "cuda" else "cpu"
    return name if name in ("cpu", "mps") else "other"


def choose_precision(accelerator: object = "auto") -> PrecisionChoice:
    """The fastest precision that trains well on the device ``accelerator`` resolves to.

    ``bf16-mixed`` on CUDA devices with native bf16 (compute capability 8.0+) and on CPUs with AMX
    or AVX512-BF16 that torch may use; ``16-mixed`` on older CUDA devices (V100, T4); ``32-true``
    elsewhere (AVX2 CPUs, Apple MPS, other accelerators).

    Args:
        accelerator: Lightning's accelerator name (``auto``, ``cpu``, ``gpu``, ``cuda``, ``mps``).
    """
    device = resolve_device(accelerator)
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        if (major, minor) >= (8, 0):
            return PrecisionChoice(
                "bf16-mixed", device, f"CUDA {name} (compute capability {major}.{minor}) computes in bf16 natively"
            )
        return PrecisionChoice(
            "16-mixed",
            device,
            f"CUDA {name} (compute capability {major}.{minor}) has no native bf16; fp16 autocast with loss scaling",
        )
    if device == "cpu":
        cpu = cpu_info()
        if cpu.native_bf16:
            return PrecisionChoice(
                "bf16-mixed", device, f"CPU {cpu.model} has AMX / AVX512-BF16 (capability {cpu.capability})"
            )
        why = (
            "its bf16 instructions are capped off by ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA"
            if cpu.bf16_instructions
            else "it has no AMX or AVX512-BF16"
        )
        return PrecisionChoice(
            "32-true",
            device,
            f"CPU {cpu.model} (capability {cpu.capability}): {why}, "
            "where bf16 autocast is several times slower than fp32",
        )
    return PrecisionChoice("32-true", device, f"no bf16 / fp16 rule for the {device} accelerator; full precision")


def choose_num_threads(cores: int | None = None) -> int:
    """Intra-op threads for the training process: every core this process may run on (its
    affinity, which a container or ``taskset`` may narrow, where torch's own default counts the
    machine's physical cores), whatever the data-loader workers.

    The model's step costs far more than decoding its batch, so a worker is mostly idle and a
    core taken from torch for it slows the step (``benchmarks/threads.py`` measures the demo's
    step for each choice; BENCHMARKS.md, "CPU threads").
    """
    return cores or _cores()


def choose_serve_threads(cores: int | None = None) -> int:
    """Intra-op threads (torch and faiss) for a serving process: every core it may run on but one,
    which is left to the event loop that parses requests and to the image decodes (at least one).

    A parallel region waits at its barrier for its slowest thread; when the machine has no core to
    spare, a thread pre-empted by the request work stalls every region of a forward pass (the demo
    model's 16-image pass took 1,300 ms on two threads of a two-core machine whose other core was
    busy, 127 ms on one).
    """
    return max(1, (cores or _cores()) - 1)
