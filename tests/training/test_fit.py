import pytest
import torch

from convirt.models import load_checkpoint
from convirt.training import ContrastiveModule
from tests.conftest import TINY_MODEL, quiet_trainer, tiny_datamodule


def test_fit_a_few_steps_then_reload_the_checkpoint(phantom_shards, tiny_text_model, tmp_path):
    module = ContrastiveModule(
        TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, learning_rate=1e-3, warmup_steps=1
    )
    data = tiny_datamodule(phantom_shards, tiny_text_model)
    trainer = quiet_trainer(tmp_path, enable_checkpointing=True, max_steps=4, limit_val_batches=2)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 4
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    loaded = load_checkpoint(path)
    assert loaded.model_name == TINY_MODEL
    images = torch.randn(2, 3, 64, 64)
    module.eval()
    with torch.no_grad():
        assert torch.allclose(module.model.encode_image(images), loaded.model.encode_image(images), atol=1e-6)
    assert float(module.model.logit_scale.exp()) <= 100.0


def test_train_epoch_length_follows_the_manifest(phantom_shards, tiny_text_model):
    data = tiny_datamodule(phantom_shards, tiny_text_model, shuffle_buffer=1000)
    data.setup("fit")
    train = data.manifest["splits"]["train"]["samples"]
    assert len(data.train_dataloader()) == max(1, train // 8)


def test_every_epoch_yields_the_batches_its_length_promises_with_two_workers(phantom_shards, tiny_text_model):
    # The phantom's training shards hold 20, 20, 20 and 2 samples: split over 2 workers, each
    # worker's shards ran dry after 3 batches, 6 of the 8 the epoch promised (so that Lightning
    # never reached the end-of-epoch validation): the stream now cycles the shards without end.
    data = tiny_datamodule(phantom_shards, tiny_text_model, num_workers=2)
    data.setup("fit")
    loader = data.train_dataloader()
    assert len(loader) == 8
    for _ in range(2):  # two epochs
        batches = list(loader)
        assert len(batches) == len(loader) and all(len(batch["key"]) == 8 for batch in batches)


def test_convirt_loss_with_repeated_reports_trains(phantom_shards, tiny_text_model, tmp_path):
    import pytest

    module = ContrastiveModule(
        TINY_MODEL,
        pretrained=False,
        text_model_path=tiny_text_model,
        loss="convirt",
        repeated_reports_as_positives=True,
        warmup_steps=1,
    )
    data = tiny_datamodule(phantom_shards, tiny_text_model)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2
    with pytest.raises(ValueError, match="needs loss 'convirt'"):
        ContrastiveModule(
            TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, repeated_reports_as_positives=True
        )


def test_retrieval_recalls_by_hand():
    from convirt.training.metrics import retrieval_recalls

    images = torch.eye(3)
    texts = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # pairs 1 and 2 are swapped
    recalls = retrieval_recalls(images, texts, ks=(1, 2))
    expected = {"i2t_R@1": 1 / 3, "i2t_R@2": 1.0, "t2i_R@1": 1 / 3, "t2i_R@2": 1.0}
    assert recalls.keys() == expected.keys()
    assert all(abs(recalls[k] - v) < 1e-6 for k, v in expected.items())


def test_validation_logs_recall_at_k(phantom_shards, tiny_text_model, tmp_path):
    module = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, warmup_steps=1)
    data = tiny_datamodule(phantom_shards, tiny_text_model)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.validate(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert {"val/i2t_R@1", "val/i2t_R@5", "val/i2t_R@10", "val/t2i_R@10", "val/loss"} <= set(metrics)
    assert 0 <= float(metrics["val/i2t_R@1"]) <= float(metrics["val/i2t_R@10"]) <= 1


def test_zero_shot_callback_logs_auroc_during_training(phantom_shards, tiny_text_model, tmp_path):
    import pytest

    from convirt.training.callbacks import ZeroShotEvaluation

    module = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, warmup_steps=1)
    data = tiny_datamodule(phantom_shards, tiny_text_model)
    callback = ZeroShotEvaluation("phantom", every_n_steps=2, split="test", max_batches=2)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[callback])
    trainer.fit(module, datamodule=data)
    assert "zeroshot/mean_auroc" in trainer.callback_metrics and "zeroshot/Edema" in trainer.callback_metrics
    assert module.model.training  # train mode restored after the evaluation
    with pytest.raises(ValueError, match="unknown descriptor set 'nope'"):
        ZeroShotEvaluation("nope")


def test_shard_pattern_with_samples_per_epoch_trains_and_logs_skipped_samples(
    phantom_shards, tiny_text_model, tmp_path
):
    import pytest

    from convirt.data.shards import shard_urls

    train, val = shard_urls(phantom_shards, "train"), shard_urls(phantom_shards, "val")
    pattern = str(phantom_shards / f"train-{{000000..{len(train) - 1:06d}}}.tar")
    with pytest.raises(ValueError, match="give data.samples_per_epoch"):
        tiny_datamodule(pattern, tiny_text_model, batch_size=32, num_workers=1, shuffle_buffer=1000).setup("fit")
    data = tiny_datamodule(
        pattern,
        tiny_text_model,
        shuffle_buffer=1000,
        samples_per_epoch=24,
        val_shards="::".join(val),
        resampled=True,
        text_sampling="sentence",
    )
    module = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, learning_rate=1e-3)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    assert trainer.callback_metrics["train/skipped_samples"] == 0
    assert "val/loss" in trainer.callback_metrics


def test_text_only_negatives_join_training_batches(phantom_shards, tiny_text_model, tmp_path):
    import pytest

    data = tiny_datamodule(
        phantom_shards,
        tiny_text_model,
        negative_texts=str(phantom_shards),
        negative_labels=["No Finding"],
        negatives_per_batch=5,
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["negative_text"].shape[0] == 5 and batch["negative_text"].dtype == batch["text"].dtype
    assert "negative_text" not in next(iter(data.val_dataloader()))
    module = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, warmup_steps=1)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2
    siglip = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, loss="siglip")
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    with pytest.raises(ValueError, match="need model.loss 'clip'"):
        trainer.fit(siglip, datamodule=data)


@pytest.mark.slow  # several seconds (the fast suite keeps under 5 minutes)
def test_fewer_training_shards_than_ranks_is_warned(phantom_shards, tiny_text_model):
    # 4 training shards, 8 ranks: each rank would read them all (each sample 8 times an epoch).
    import warnings

    import lightning as L
    import pytest

    def loader_of_rank_0(world_size):
        data = tiny_datamodule(phantom_shards, tiny_text_model)
        data.trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=world_size, logger=False)  # not launched
        data.setup("fit")
        return data.train_dataloader()

    with pytest.warns(UserWarning, match="^4 training shards for 8 ranks: every rank reads all of them .*resampled"):
        loader_of_rank_0(8)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*training shards for")
        loader_of_rank_0(4)
