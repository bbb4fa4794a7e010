"""The precision that fits the hardware, with the device's capability mocked."""

import pytest
import torch

from convirt import _hardware
from convirt._hardware import choose_num_threads, choose_precision, choose_serve_threads, cpu_info


@pytest.fixture
def cuda(monkeypatch):
    """A CUDA device whose compute capability the test sets."""

    def make(capability, name="Mock GPU"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)

    return make


@pytest.fixture
def cpu(monkeypatch):
    """A CPU (no CUDA) with or without bf16 instructions, torch capability and oneDNN cap as set."""

    def make(bf16_instructions, capability, onednn=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(_hardware, "_bf16_instructions", lambda: bf16_instructions)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        if onednn is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)

    return make


def test_cuda_with_native_bf16_gets_bf16(cuda):
    cuda((9, 0), "NVIDIA H100")
    choice = choose_precision("auto")
    assert (choice.precision, choice.device) == ("bf16-mixed", "cuda")
    assert "H100" in choice.reason and "9.0" in choice.reason
    assert choose_precision("gpu").precision == "bf16-mixed"


@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (6, 1)])  # V100, T4, P40
def test_cuda_without_bf16_gets_fp16(cuda, capability):
    cuda(capability, "Tesla T4")
    choice = choose_precision("cuda")
    assert choice.precision == "16-mixed"
    assert "no native bf16" in choice.reason


def test_cpu_accelerator_ignores_a_present_gpu(cuda, monkeypatch):
    cuda((9, 0))
    monkeypatch.setattr(_hardware, "_bf16_instructions", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert choose_precision("cpu").precision == "32-true"


def test_cpu_with_amx_gets_bf16(cpu):
    cpu(bf16_instructions=True, capability="AVX512")
    choice = choose_precision("auto")
    assert (choice.precision, choice.device) == ("bf16-mixed", "cpu")
    assert cpu_info().native_bf16


def test_avx2_cpu_gets_fp32(cpu):
    cpu(bf16_instructions=False, capability="AVX2")
    choice = choose_precision("auto")
    assert (choice.precision, choice.device) == ("32-true", "cpu")
    assert "no AMX or AVX512-BF16" in choice.reason and "AVX2" in choice.reason
    assert not cpu_info().native_bf16


@pytest.mark.parametrize("capability, onednn", [("AVX2", None), ("AVX512", "AVX2"), ("AVX512", "avx512_core")])
def test_capped_kernels_count_as_no_bf16(cpu, capability, onednn):
    # ATEN_CPU_CAPABILITY=avx2 / ONEDNN_MAX_CPU_ISA=AVX2 simulate the common CPU on an AMX machine.
    cpu(bf16_instructions=True, capability=capability, onednn=onednn)
    choice = choose_precision("cpu")
    assert choice.precision == "32-true"
    assert "capped off" in choice.reason
    info = cpu_info()
    assert info.bf16_instructions and not info.native_bf16
    assert "capped off" in info.describe()


def test_cpu_info_names_the_processor():
    info = cpu_info()
    assert info.model and info.capability == torch.backends.cpu.get_cpu_capability()
    assert info.cores >= 1 and info.threads >= 1
    assert set(info.as_dict()) >= {"model", "capability", "native_bf16", "cores"}


def test_other_accelerators_get_fp32():
    assert choose_precision("mps").precision == "32-true"
    assert choose_precision("tpu").precision == "32-true"


def test_threads_go_to_the_model_on_every_core_this_process_may_use():
    assert choose_num_threads(cores=2) == 2
    assert choose_num_threads() == _hardware._cores() >= 1


def test_a_server_leaves_one_core_to_its_requests():
    assert choose_serve_threads(cores=2) == 1 and choose_serve_threads(cores=16) == 15
    assert choose_serve_threads(cores=1) == 1


def test_the_cli_fills_in_the_precision_only_where_the_config_leaves_it_open(cpu):
    from convirt.training.cli import configure_hardware

    threads = torch.get_num_threads()
    try:
        cpu(bf16_instructions=False, capability="AVX2")
        open_config = {"trainer": {"precision": None, "accelerator": "auto"}, "data": {"num_workers": 1}}
        configure_hardware(open_config)
        assert open_config["trainer"]["precision"] == "32-true"
        cpu(bf16_instructions=True, capability="AVX512")
        # Outside a fit a CPU with native bf16 keeps 32-true, as embeddings are made (a fit times both
        # candidates: tests/training/test_precision_timing.py).
        configure_hardware(open_config := {"trainer": {"precision": None, "accelerator": "cpu"}, "data": {}})
        assert open_config["trainer"]["precision"] == "32-true"
        explicit = {"trainer": {"precision": "32-true", "accelerator": "cpu"}, "data": {"num_workers": 0}}
        configure_hardware(explicit)
        assert explicit["trainer"]["precision"] == "32-true"  # an explicit value wins
    finally:
        torch.set_num_threads(threads)
