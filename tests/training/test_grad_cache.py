"""GradCache: sub-batch encoding with the full-batch loss gives the full-batch gradients."""

import pytest
import torch

from convirt.losses import create_loss
from convirt.training import ContrastiveModule
from tests.conftest import TINY_MODEL


def _module(text_model, loss, sub_batch_size=None):
    torch.manual_seed(0)
    module = ContrastiveModule(model_name=TINY_MODEL, pretrained=False, text_model_path=text_model, loss=loss,
                               sub_batch_size=sub_batch_size)
    module.loss_fn = create_loss(loss)
    module.eval()  # no dropout, batch-norm on running statistics: the step is a function of the batch alone
    return module


def _grads(module, batch, grad_cache):
    module.zero_grad(set_to_none=True)
    out = module.training_step(batch, 0) if grad_cache else module._step(batch, "train")
    out.backward()
    return {name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()
            if p.requires_grad}


@pytest.mark.parametrize("loss", ["clip", "siglip", "convirt"])
def test_grad_cache_gradients_equal_the_full_batch_step(tiny_text_model, phantom_shards, loss):
    from convirt.data.stream import build_batches
    from convirt.data.transforms import build_image_transform
    from convirt.data.writer import shard_urls
    from convirt.models import create_tokenizer

    tokenizer = create_tokenizer(TINY_MODEL, text_model_path=tiny_text_model)
    transform = build_image_transform(64, [0.5] * 3, [0.5] * 3, train=False)
    batch = next(iter(build_batches(shard_urls(str(phantom_shards), "train"), transform, tokenizer, 10)))
    full = _grads(_module(tiny_text_model, loss), batch, grad_cache=False)
    cached = _grads(_module(tiny_text_model, loss, sub_batch_size=3), batch, grad_cache=True)
    assert full.keys() == cached.keys() and len(full) > 20
    unused = {n for n, g in full.items() if g is None}  # e.g. the logit scale under the fixed-tau ConVIRT loss
    assert unused == {n for n, g in cached.items() if g is None}
    assert any(full[n].abs().max() > 1e-3 for n in full if n not in unused)  # a real gradient, not all zeros
    for name in set(full) - unused:
        assert torch.allclose(full[name], cached[name], atol=1e-5, rtol=1e-4), name  # float32 summation order


def test_sub_batch_size_must_be_positive(tiny_text_model):
    with pytest.raises(ValueError, match="sub_batch_size must be positive"):
        ContrastiveModule(model_name=TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, sub_batch_size=0)


def test_grad_cache_trains_through_lightning_with_clipping(phantom_shards, tiny_text_model, tmp_path):
    import lightning as L

    from convirt.training import ShardDataModule

    module = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, sub_batch_size=3,
                               warmup_steps=1, learning_rate=1e-3)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    data = ShardDataModule(str(phantom_shards), model_name=TINY_MODEL, text_model_path=tiny_text_model,
                           batch_size=8, num_workers=0, shuffle_buffer=16)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        limit_val_batches=1, gradient_clip_val=1.0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    moved = [n for n, p in module.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) > 20 and torch.isfinite(trainer.callback_metrics["train/loss"])
