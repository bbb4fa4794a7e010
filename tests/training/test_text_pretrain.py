"""Report pretraining of the text tower: section pairs from shards, `convirt pretrain-text`."""

import subprocess
import sys

import pytest
import torch

from convirt.data.section_pairs import read_section_pairs
from convirt.models import create_model, create_tokenizer
from tests.conftest import TINY_MODEL, quiet_trainer


def test_section_pairs_are_findings_and_impression_of_one_report(phantom_shards):
    pairs = read_section_pairs(phantom_shards, "train")
    assert pairs and all(first and second for first, second in pairs)
    assert len(set(pairs)) == len(pairs)  # repeated reports count once
    assert not any("IMPRESSION" in first or "FINDINGS" in second for first, second in pairs)
    reversed_pairs = read_section_pairs(phantom_shards, "train", first="impression", second="findings")
    assert {(b, a) for a, b in reversed_pairs} == set(pairs)


def test_section_pair_errors_name_the_problem(phantom_shards):
    with pytest.raises(ValueError, match="unknown section 'finding'; known: findings"):
        read_section_pairs(phantom_shards, "train", first="finding")
    with pytest.raises(ValueError, match="must differ"):
        read_section_pairs(phantom_shards, "train", first="impression", second="impression")
    with pytest.raises(ValueError, match=r"has both a findings and an technique section \(\d+ reports"):
        read_section_pairs(phantom_shards, "train", second="technique")


def test_pretrain_text_writes_a_text_model_that_fit_can_load(phantom_shards, tiny_text_model, tmp_path):
    output = tmp_path / "text-model"
    command = [
        sys.executable,
        "-m",
        "convirt.cli.main",
        "pretrain-text",
        "--model.model_name",
        TINY_MODEL,
        "--model.text_model_path",
        tiny_text_model,
        "--model.output",
        str(output),
        "--model.learning_rate",
        "1e-3",
        "--model.warmup_steps",
        "1",
        "--data.shards",
        str(phantom_shards),
        "--data.batch_size",
        "8",
        "--trainer.max_epochs",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (output / "config.json").is_file() and (output / "tokenizer_config.json").is_file()
    assert not (tmp_path / "text-model.tmp").exists()

    before = create_model(TINY_MODEL, pretrained=True, text_model_path=tiny_text_model, pretrained_image=False).eval()
    after = create_model(TINY_MODEL, pretrained=True, text_model_path=str(output), pretrained_image=False).eval()
    tokens = create_tokenizer(TINY_MODEL, str(output))(["no focal consolidation", "large left effusion"])
    with torch.no_grad():
        trained = after.text.transformer(input_ids=tokens).last_hidden_state
        untrained = before.text.transformer(input_ids=tokens).last_hidden_state
    assert not torch.allclose(trained, untrained)  # the trunk trained and was saved


def test_pretrain_text_refuses_image_only_reports(tmp_path, phantom_shards):
    from convirt.training.text_pretrain import SectionPairsDataModule

    data = SectionPairsDataModule(str(phantom_shards), model_name=TINY_MODEL, second="history")
    with pytest.raises(ValueError, match="has both a findings and an history section"):
        data.setup("fit")


def test_a_checkpoint_finds_its_text_model_folder_from_anywhere(tiny_text_model, tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    from convirt.models import load_checkpoint
    from convirt.training import save_initial_checkpoint

    copy = tmp_path / "texts" / "model"
    shutil.copytree(tiny_text_model, copy)
    monkeypatch.chdir(tmp_path)
    checkpoint = save_initial_checkpoint(
        str(tmp_path / "a.ckpt"), TINY_MODEL, pretrained=False, text_model_path="texts/model"
    )  # relative, as in a recipe
    monkeypatch.chdir(Path(tiny_text_model).parent)
    assert load_checkpoint(checkpoint).text_model_path == str(copy)

    shutil.rmtree(copy)
    with pytest.raises(FileNotFoundError, match=f"trained with the local text model {copy}, which is not there"):
        load_checkpoint(checkpoint)
    assert load_checkpoint(checkpoint, text_model_path=tiny_text_model).text_model_path == tiny_text_model


def test_pretrain_text_without_validation_reports(phantom_csv, tiny_text_model, tmp_path):

    from convirt.data.sources import read_rows
    from convirt.data.writer import write_shards
    from convirt.training.text_pretrain import SectionMatchingModule, SectionPairsDataModule

    shards = tmp_path / "shards"
    write_shards(
        read_rows("csv", str(phantom_csv)), shards, image_size=64, val_fraction=0, test_fraction=0.2, progress=False
    )
    data = SectionPairsDataModule(str(shards), model_name=TINY_MODEL, text_model_path=tiny_text_model, batch_size=8)
    module = SectionMatchingModule(
        TINY_MODEL, text_model_path=tiny_text_model, output=str(tmp_path / "out"), warmup_steps=1
    )
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2 and (tmp_path / "out" / "config.json").is_file()
