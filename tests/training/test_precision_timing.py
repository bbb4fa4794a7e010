"""Training precision on a CPU with native bf16 is chosen by timing the run's own steps."""

import dataclasses

import pytest
import yaml

import convirt.training.cli as training_cli
from convirt._hardware import cpu_info
from convirt.cli.main import main
from convirt.models.checkpoint import read_run
from convirt.training import precision_timing as timing
from tests.conftest import TINY_MODEL


def _config(tmp_path, shards, text_model, **trainer):
    config = {
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": 1,
            "limit_val_batches": 1,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path / "fit"),
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0},
                }
            ],
            **trainer,
        },
        "model": {"model_name": TINY_MODEL, "pretrained": False, "text_model_path": text_model, "warmup_steps": 1},
        "data": {"shards": str(shards), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 16},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def native_bf16(monkeypatch):
    """This CPU as one with native bf16 (AMX): the rule can no longer decide, so the fit times."""
    monkeypatch.setattr(training_cli, "cpu_info", lambda: dataclasses.replace(cpu_info(), native_bf16=True))
    monkeypatch.setenv(timing.CHOICE_ENV, "")  # recorded, so that what a fit sets is undone after the test
    monkeypatch.delenv(timing.CHOICE_ENV)


def test_a_fit_times_both_candidates_keeps_the_faster_and_records_both(
    phantom_shards, tiny_text_model, tmp_path, native_bf16, monkeypatch
):
    timed = []

    def fake_step(module, loss, precision, steps=2, deadline=None):
        timed.append(precision)
        assert loss().requires_grad  # the run's own module, on a synthetic batch
        return {"32-true": [0.02, 0.02], "bf16-mixed": [0.01, 0.01]}[precision]  # bf16 faster here

    monkeypatch.setattr(timing, "time_train_step", fake_step)
    monkeypatch.setattr(timing, "estimated_steps", lambda config: 100_000)  # a long run: the timing pays
    config = _config(tmp_path, phantom_shards, tiny_text_model)
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "2"]) == 0
    assert timed == ["32-true", "bf16-mixed"]
    saved = yaml.safe_load((tmp_path / "fit" / "config.yaml").read_text())["trainer"]
    run = read_run(tmp_path / "ckpt" / "last.ckpt")
    assert saved["precision"] == run["precision"] == "bf16-mixed"
    choice = run["precision_choice"]
    assert choice["precision"] == "bf16-mixed" and choice["seconds_per_step"] == {"32-true": 0.02, "bf16-mixed": 0.01}
    assert "kept the faster" in choice["reason"]


def test_the_real_timing_keeps_the_faster_and_stays_within_its_budget(phantom_shards, tiny_text_model):
    from convirt.models.factory import create_tokenizer
    from convirt.training import ContrastiveModule

    def build():
        module = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model)
        tokenizer = create_tokenizer(TINY_MODEL, text_model_path=tiny_text_model)
        return module, timing.contrastive_step(module, tokenizer, 8, 64)

    found = timing.choose_by_timing(build, steps_in_run=20_000)
    assert set(found.seconds_per_step) == {"32-true", "bf16-mixed"}
    assert found.precision == min(found.seconds_per_step, key=found.seconds_per_step.get)
    assert found.timing_seconds < timing.BUDGET_FRACTION * found.estimated_run_seconds


def test_a_run_too_short_to_pay_for_the_timing_keeps_float32_untimed(monkeypatch):
    calls = []

    def fake_step(module, loss, precision, steps=2, deadline=None):
        calls.append(precision)
        return [1.0, 1.0]

    monkeypatch.setattr(timing, "time_train_step", fake_step)
    found = timing.choose_by_timing(lambda: (None, None), steps_in_run=10)  # a 10 s run: 4% is 0.4 s
    assert calls == ["32-true"] and found.precision == "32-true" and "too short" in found.reason


def test_ranks_use_the_launching_processes_choice_and_external_launches_do_not_time(monkeypatch, native_bf16):
    monkeypatch.setattr(timing, "choose_by_timing", lambda *a, **k: pytest.fail("a rank must not time"))
    config = {"trainer": {"accelerator": "cpu"}, "model": {}, "data": {}}
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank Lightning launched, with its parent's choice
    monkeypatch.setenv(timing.CHOICE_ENV, "bf16-mixed")
    assert training_cli._choose_training_precision(config, "cpu", "fit")["precision"] == "bf16-mixed"
    monkeypatch.delenv(timing.CHOICE_ENV)  # a rank of torchrun: no parent timed
    assert training_cli._choose_training_precision(config, "cpu", "fit")["precision"] == "32-true"
    monkeypatch.delenv("LOCAL_RANK")
    assert training_cli._choose_training_precision(config, "cpu", "validate")["precision"] == "32-true"


def test_an_explicit_precision_always_wins(phantom_shards, tiny_text_model, tmp_path, native_bf16, monkeypatch):
    monkeypatch.setattr(timing, "choose_by_timing", lambda *a, **k: pytest.fail("an explicit value is not timed"))
    config = _config(tmp_path, phantom_shards, tiny_text_model)
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "1", "--trainer.precision", "32-true"]) == 0
    assert read_run(tmp_path / "ckpt" / "last.ckpt")["precision"] == "32-true"


def test_estimated_steps_reads_the_manifest(phantom_shards):
    config = {"trainer": {"max_epochs": 3}, "data": {"shards": str(phantom_shards), "batch_size": 8}}
    from convirt.data.shards import read_manifest

    train = read_manifest(str(phantom_shards))["splits"]["train"]["samples"]
    assert timing.estimated_steps(config) == 3 * -(-train // 8)
    assert timing.estimated_steps({"trainer": {"max_steps": 7}, "data": {}}) == 7
    assert timing.estimated_steps({"trainer": {"max_epochs": 3}, "data": {}}) is None


def test_report_pretraining_is_timed_on_report_pairs(phantom_shards, tiny_text_model, monkeypatch, native_bf16):
    timed = []

    def fake_step(module, loss, precision, steps=2, deadline=None):
        timed.append((type(module).__name__, precision, float(loss())))
        return [0.01, 0.01] if precision == "32-true" else [0.02, 0.02]

    monkeypatch.setattr(timing, "time_train_step", fake_step)
    monkeypatch.setattr(timing, "estimated_steps", lambda config: 100_000)
    config = {
        "trainer": {"accelerator": "cpu"},
        "model": {"model_name": TINY_MODEL, "text_model_path": tiny_text_model},
        "data": {"batch_size": 4},
    }
    chosen = training_cli._choose_training_precision(config, "cpu", "fit", text_pretraining=True)
    assert chosen["precision"] == "32-true"
    assert [(name, precision) for name, precision, _ in timed] == [
        ("SectionMatchingModule", "32-true"),
        ("SectionMatchingModule", "bf16-mixed"),
    ]


def test_a_resumed_fit_keeps_its_checkpoints_precision_and_a_second_fit_times_anew(
    phantom_shards, tiny_text_model, tmp_path, native_bf16, monkeypatch
):
    timed = []

    def fake_step(module, loss, precision, steps=2, deadline=None):
        timed.append(precision)
        return {"32-true": [0.02, 0.02], "bf16-mixed": [0.01, 0.01]}[precision]

    monkeypatch.setattr(timing, "time_train_step", fake_step)
    monkeypatch.setattr(timing, "estimated_steps", lambda config: 100_000)
    config = _config(tmp_path, phantom_shards, tiny_text_model)
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "1"]) == 0
    assert timed == ["32-true", "bf16-mixed"]
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    # A second run in the same process times again (the choice passed to launched ranks is not its own).
    monkeypatch.setattr(timing, "time_train_step", lambda *a, **k: {"32-true": [0.01], "bf16-mixed": [0.02]}[a[2]])
    again = tmp_path / "again"
    again.mkdir()
    assert (
        main(["fit", "--config", str(_config(again, phantom_shards, tiny_text_model)), "--trainer.max_steps", "1"]) == 0
    )
    assert read_run(again / "ckpt" / "last.ckpt")["precision"] == "32-true"
    # A resume of the first run goes on in its bf16, untimed.
    monkeypatch.setattr(timing, "choose_by_timing", lambda *a, **k: pytest.fail("a resume is not timed"))
    args = ["fit", "--config", str(config), "--trainer.max_steps", "2", "--ckpt_path", str(ckpt)]
    assert main(args) == 0
    assert read_run(ckpt)["precision"] == "bf16-mixed"


def test_a_run_of_unknown_length_is_not_timed():
    found = timing.choose_by_timing(lambda: pytest.fail("not built"), steps_in_run=None)
    assert found.precision == "32-true" and "unknown" in found.reason
