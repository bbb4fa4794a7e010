"""Two-process DDP on CPU (gloo) through the `convirt fit` command."""

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import TINY_MODEL


def _fit(config: dict, tmp_path, command: str = "fit") -> None:
    """`convirt fit` (or ``command``) on ``config`` in a subprocess (DDP launches its second rank from it)."""
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "convirt.cli.main", command, "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _one_process_module(records):
    """The module the fit started from (its hyperparameters and first weights), in one process."""
    from convirt.training import ContrastiveModule

    hparams = records[0]["hparams"]
    module = ContrastiveModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    module.load_state_dict(records[0]["weights"])
    return module


def _global_batch(parts, pad):
    """The ranks' batches of one step as one batch, in rank order (token ids padded to the longest text:
    each rank pads its batch to its own longest)."""
    import torch

    def joined(key):
        tensors = [p[key] for p in parts]
        if tensors[0].ndim == 2:
            width = max(t.shape[1] for t in tensors)
            tensors = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad) for t in tensors]
        return torch.cat(tensors)

    return {k: joined(k) for k in ("image", "text", "negative_text") if k in parts[0]}


def _pad_of(records):
    from convirt.data.stream import pad_id_of
    from convirt.models import create_tokenizer

    return pad_id_of(create_tokenizer(TINY_MODEL, text_model_path=records[0]["hparams"]["text_model_path"]))


def _one_process_step(records, negatives_loss):
    """Loss and gradients of one process over both ranks' step-1 batches (rank order) and, with
    text-only negatives, both ranks' negatives, from the weights the fit started with."""
    from convirt.losses import create_loss

    module = _one_process_module(records)
    module.loss_fn = create_loss("clip")
    # As the fit ran it: text trunk without dropout, image batch-norm on its running statistics
    # (the tiny towers have no other random or batch-dependent layer).
    module.eval()
    batch = _global_batch([r["batch"] for r in records], _pad_of(records))
    features = module(batch["image"], batch["text"])
    loss = module._loss(*features, batch if negatives_loss else {})
    loss.backward()
    return float(loss.detach()), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


def _one_process_fit(records):
    """The final weights of one process trained (Lightning, one CPU) on the global batches the ranks
    read, step after step, from the weights, hyperparameters and schedule the fit started with."""
    import lightning as L
    from torch.utils.data import DataLoader

    module, pad = _one_process_module(records), _pad_of(records)
    batches = [_global_batch(parts, pad) for parts in zip(*(r["steps"] for r in records))]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    return {k: v.detach() for k, v in module.state_dict().items()}


@pytest.mark.slow  # 2 gloo processes (13 s or more on 2 cores)
@pytest.mark.multiprocess
@pytest.mark.parametrize("variant", ["plain", "negatives+gradcache"])
def test_two_rank_fit_step_equals_one_process_over_both_batches(phantom_shards, tiny_text_model, tmp_path, variant):
    # Had the loss been built for one process (world_size 1), each rank's loss would cover its
    # own 4 samples only: the loss and every gradient below would differ.
    import torch

    steps = tmp_path / "first-step"
    model = {
        "model_name": TINY_MODEL,
        "pretrained": False,
        "text_model_path": tiny_text_model,
        "text_dropout": False,
        "freeze_image_norm": True,
        "learning_rate": 1e-3,
    }
    data = {"shards": str(phantom_shards), "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8}
    if variant != "plain":
        model["sub_batch_size"] = 2  # GradCache under DDP
        data.update(negative_texts=str(phantom_shards), negatives_per_batch=3)
    config = {
        "trainer": {
            "accelerator": "cpu",
            "strategy": "ddp",
            "devices": 2,
            "max_steps": 2,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "precision": "32-true",
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, "save_top_k": 0},
                },
                {"class_path": "tests.training.batch_counter.FirstStep", "init_args": {"folder": str(steps)}},
            ],
        },
        "model": model,
        "data": data,
    }
    _fit(config, tmp_path)
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    records = [torch.load(steps / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    assert not torch.equal(records[0]["batch"]["image"], records[1]["batch"]["image"])  # ranks read their own
    if variant != "plain":
        assert not torch.equal(records[0]["batch"]["negative_text"], records[1]["batch"]["negative_text"])
    loss, grads = _one_process_step(records, negatives_loss=variant != "plain")
    # Each rank logs the loss of its own rows (the whole matrix's, for the plain CLIP loss): their
    # mean is the global batch's loss.
    assert sum(r["loss"] for r in records) / len(records) == pytest.approx(loss, rel=1e-5)
    for record in records:
        assert record["grads"].keys() == grads.keys() and len(grads) > 20
        for name, grad in grads.items():
            error = float((record["grads"][name] - grad).norm() / grad.norm().clamp_min(1e-12))
            assert error < 1e-4 or (record["grads"][name] - grad).abs().max() < 1e-6, (name, error)


@pytest.mark.slow  # 2 gloo processes, 2 epochs (about 40 s on 2 cores)
def test_resampled_ranks_get_equal_batches_with_fewer_shards_than_ranks_times_workers(
    phantom_csv, tiny_text_model, tmp_path
):
    import json

    from convirt.data.sources import read_rows
    from convirt.data.writer import write_shards

    shards = tmp_path / "shards"
    manifest = write_shards(
        read_rows("csv", str(phantom_csv)),
        shards,
        image_size=64,
        shard_size=1000,
        val_fraction=0,
        test_fraction=0.2,
        progress=False,
    )
    assert len(manifest["splits"]["train"]["shards"]) == 1  # one shard for 2 ranks x 2 workers
    counts = tmp_path / "counts.jsonl"
    config = {
        "trainer": {
            "accelerator": "cpu",
            "strategy": "ddp",
            "devices": 2,
            "max_epochs": 2,
            "logger": False,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": "tests.training.batch_counter.BatchCounter", "init_args": {"path": str(counts)}}
            ],
        },
        "model": {"model_name": TINY_MODEL, "pretrained": False, "text_model_path": tiny_text_model},
        "data": {
            "shards": str(shards),
            "batch_size": 4,
            "num_workers": 2,
            "shuffle_buffer": 8,
            "resampled": True,
            "samples_per_epoch": 32,
        },
    }
    _fit(config, tmp_path)
    records = [json.loads(line) for line in counts.read_text().splitlines()]
    assert sorted((r["epoch"], r["rank"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # 32 samples per epoch, batch 4, 2 ranks: 4 batches on each rank, every epoch.
    assert {r["batches"] for r in records} == {4}
    by_epoch = {(r["epoch"], r["rank"]): r["keys"] for r in records}
    assert by_epoch[(0, 0)] != by_epoch[(0, 1)]  # ranks draw differently
    assert by_epoch[(0, 0)] != by_epoch[(1, 0)]  # and epochs too


@pytest.mark.slow  # 2 gloo processes (about 35 s on 2 cores)
def test_pretrain_text_with_two_gloo_processes(phantom_shards, tiny_text_model, tmp_path):
    output = tmp_path / "text-model"
    config = {
        "trainer": {
            "accelerator": "cpu",
            "strategy": "ddp",
            "devices": 2,
            "max_steps": 3,
            "logger": False,
            "enable_progress_bar": False,
            "enable_checkpointing": False,
            "default_root_dir": str(tmp_path),
        },
        "model": {"model_name": TINY_MODEL, "text_model_path": tiny_text_model, "output": str(output)},
        "data": {"shards": str(phantom_shards), "batch_size": 4},
    }
    _fit(config, tmp_path, command="pretrain-text")
    assert (output / "config.json").is_file()  # written once, by rank 0
