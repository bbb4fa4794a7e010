"""GradCache: sub-batch encoding with the full-batch loss gives the full-batch gradients."""

import pytest
import torch

from convirt.losses import create_loss
from convirt.training import ContrastiveModule
from tests.conftest import TINY_MODEL, quiet_trainer, tiny_datamodule


def _module(text_model, loss, sub_batch_size=None):
    torch.manual_seed(0)
    module = ContrastiveModule(
        model_name=TINY_MODEL, pretrained=False, text_model_path=text_model, loss=loss, sub_batch_size=sub_batch_size
    )
    module.loss_fn = create_loss(loss)
    module.eval()  # no dropout, batch-norm on running statistics: the step is a function of the batch alone
    return module


def _grads(module, batch, grad_cache):
    module.zero_grad(set_to_none=True)
    out = module.training_step(batch, 0) if grad_cache else module._step(batch, "train")
    out.backward()
    return {
        name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters() if p.requires_grad
    }


def _batch(text_model, shards):
    from convirt.data.shards import shard_urls
    from convirt.data.stream import build_batches
    from convirt.data.transforms import build_image_transform
    from convirt.models import create_tokenizer

    tokenizer = create_tokenizer(TINY_MODEL, text_model_path=text_model)
    transform = build_image_transform(64, [0.5] * 3, [0.5] * 3, train=False)
    return next(iter(build_batches(shard_urls(str(shards), "train"), transform, tokenizer, 10)))


@pytest.mark.parametrize("loss", ["clip", "siglip", "convirt"])
def test_grad_cache_gradients_equal_the_full_batch_step(tiny_text_model, phantom_shards, loss):
    batch = _batch(tiny_text_model, phantom_shards)
    full = _grads(_module(tiny_text_model, loss), batch, grad_cache=False)
    cached = _grads(_module(tiny_text_model, loss, sub_batch_size=3), batch, grad_cache=True)
    assert full.keys() == cached.keys() and len(full) > 20
    unused = {n for n, g in full.items() if g is None}  # e.g. the logit scale under the fixed-tau ConVIRT loss
    assert unused == {n for n, g in cached.items() if g is None}
    assert any(full[n].abs().max() > 1e-3 for n in full if n not in unused)  # a real gradient, not all zeros
    for name in set(full) - unused:
        assert _close(full[name], cached[name]), (name, _error(full[name], cached[name]))


def _train_mode(text_model, loss, sub_batch_size=None):
    module = _module(text_model, loss, sub_batch_size)
    module.train()  # dropout on, batch-norm on batch statistics: as in `convirt fit`
    return module


def _sub_batch_reference(module, batch, size, seed):
    """The gradients GradCache stands for in train mode: each sub-batch encoded with a graph in
    turn (each its own dropout masks and batch statistics), one loss over all their features."""
    torch.manual_seed(seed)
    module.zero_grad(set_to_none=True)
    parts = [slice(start, start + size) for start in range(0, batch["image"].shape[0], size)]
    features = [module(batch["image"][part], batch["text"][part]) for part in parts]
    loss = module._loss(torch.cat([f[0] for f in features]), torch.cat([f[1] for f in features]), batch)
    loss.backward()
    return {
        name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters() if p.requires_grad
    }


def _grad_cache(module, batch, seed):
    torch.manual_seed(seed)
    return _grads(module, batch, grad_cache=True)


def _error(expected, got):
    """The difference relative to the gradient's size (float32 sums in another order differ by
    about 1e-6 of it; which elements stray depends on the CPU's kernels)."""
    return float((expected - got).norm() / expected.norm().clamp_min(1e-12))


def _close(expected, got):
    return bool(_error(expected, got) < 1e-4 or (expected - got).abs().max() < 1e-6)


def _same(first, second):
    return first.keys() == second.keys() and all(
        (a is None) == (b is None) and (a is None or _close(a, b)) for a, b in zip(first.values(), second.values())
    )


@pytest.mark.parametrize("loss", ["clip", "convirt"])
def test_grad_cache_in_train_mode_replays_the_dropout_of_its_first_pass(
    tiny_text_model, phantom_shards, loss, monkeypatch
):
    from convirt.training import grad_cache as module_code

    batch = _batch(tiny_text_model, phantom_shards)
    reference = _sub_batch_reference(_train_mode(tiny_text_model, loss), batch, 3, seed=5)
    other_masks = _sub_batch_reference(_train_mode(tiny_text_model, loss), batch, 3, seed=6)
    assert not _same(reference, other_masks)  # dropout acts
    assert _same(reference, _grad_cache(_train_mode(tiny_text_model, loss, sub_batch_size=3), batch, seed=5))
    # Without the replay of the random state the second pass draws new masks: the test sees it.
    monkeypatch.setattr(module_code, "set_rng_state", lambda state: None)
    assert not _same(reference, _grad_cache(_train_mode(tiny_text_model, loss, sub_batch_size=3), batch, seed=5))


def test_sub_batch_size_must_be_positive(tiny_text_model):
    with pytest.raises(ValueError, match="sub_batch_size must be positive"):
        ContrastiveModule(model_name=TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, sub_batch_size=0)


def test_grad_cache_trains_through_lightning_with_clipping(phantom_shards, tiny_text_model, tmp_path):

    module = ContrastiveModule(
        TINY_MODEL,
        pretrained=False,
        text_model_path=tiny_text_model,
        sub_batch_size=3,
        warmup_steps=1,
        learning_rate=1e-3,
    )
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    data = tiny_datamodule(phantom_shards, tiny_text_model)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=1, gradient_clip_val=1.0)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    moved = [n for n, p in module.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) > 20 and torch.isfinite(trainer.callback_metrics["train/loss"])


def _first_step_grads(shards, text_model, folder, precision, sub_batch_size, module_class=ContrastiveModule, **options):
    """The gradients the optimiser gets at step 1 of Lightning's fit (``options``: more of the trainer's,
    e.g. a precision plugin in place of ``precision``)."""
    from tests.training.batch_counter import FirstStep

    torch.manual_seed(0)
    module = module_class(
        TINY_MODEL,
        pretrained=False,
        text_model_path=text_model,
        sub_batch_size=sub_batch_size,
        text_dropout=False,
        freeze_image_norm=True,
    )
    data = tiny_datamodule(shards, text_model)
    if precision is not None:
        options["precision"] = precision
    trainer = quiet_trainer(folder, max_steps=1, limit_val_batches=0, callbacks=[FirstStep(str(folder))], **options)
    trainer.fit(module, datamodule=data)
    return torch.load(folder / "rank0.pt", weights_only=False)["grads"]


def test_grad_cache_under_bf16_mixed_precision_gives_the_full_batch_gradients(
    phantom_shards, tiny_text_model, tmp_path
):
    # Lightning's autocast wraps the training step, so both GradCache passes run in bf16 and the
    # surrogate's backward hands Lightning the gradients (no scaler with bf16).
    full = _first_step_grads(phantom_shards, tiny_text_model, tmp_path / "full", "bf16-mixed", None)
    cached = _first_step_grads(phantom_shards, tiny_text_model, tmp_path / "cached", "bf16-mixed", 3)
    fp32 = _first_step_grads(phantom_shards, tiny_text_model, tmp_path / "fp32", "32-true", None)
    assert full.keys() == cached.keys() == fp32.keys() and len(full) > 20

    def flat(grads):
        return torch.cat([grads[n].float().flatten() for n in sorted(grads)])

    cosine = torch.nn.functional.cosine_similarity
    # bf16 keeps 8 bits of mantissa: the two bf16 steps agree with each other as with fp32's
    assert cosine(flat(full), flat(cached), dim=0) > 0.99
    assert cosine(flat(fp32), flat(cached), dim=0) > 0.99
    assert not torch.equal(flat(full), flat(fp32))  # bf16 really ran
