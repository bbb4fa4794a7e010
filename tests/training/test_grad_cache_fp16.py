"""GradCache under ``16-mixed``: the cached gradients are taken of the scaled loss, as a plain step's are."""

import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision

from convirt.training import ContrastiveModule
from convirt.training import grad_cache as grad_cache_code
from tests.conftest import quiet_trainer
from tests.training.test_grad_cache import _first_step_grads

SCALE = 2.0**16
LOSS_WEIGHT = 2.0**-24  # feature gradients ~1e-9: under fp16's smallest subnormal (6e-8) unless scaled


class SmallLoss(ContrastiveModule):
    """The contrastive loss times ``LOSS_WEIGHT``: the small per-sample gradients of a very large
    batch, which fp16 keeps only once the ``GradScaler`` has scaled them up."""

    def _loss(self, *args, **kwargs):
        return super()._loss(*args, **kwargs) * LOSS_WEIGHT


def _first_step(shards, text_model, folder, precision, sub_batch_size):
    """The unscaled gradients the optimiser gets at step 1 (Lightning's fit), and the scaler."""
    if precision != "16-mixed":
        return _first_step_grads(shards, text_model, folder, precision, sub_batch_size, SmallLoss), None
    # Trainer(precision="16-mixed") turns into bf16-mixed on a CPU; the plugin does not.
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    return _first_step_grads(shards, text_model, folder, None, sub_batch_size, SmallLoss, plugins=[plugin]), scaler


def _flat(grads):
    return torch.cat([grads[n].float().flatten() for n in sorted(grads)])


def _error(expected, got):
    return float((expected - got).norm() / expected.norm())


@pytest.mark.parametrize("precision", ["16-mixed", "32-true"])
def test_grad_cache_gives_the_full_batch_gradients_under_the_loss_scale(
    phantom_shards, tiny_text_model, tmp_path, precision
):
    full, full_scaler = _first_step(phantom_shards, tiny_text_model, tmp_path / "full", precision, None)
    cached, cached_scaler = _first_step(phantom_shards, tiny_text_model, tmp_path / "cached", precision, 3)
    assert full.keys() == cached.keys() and len(full) > 20
    if precision == "16-mixed":
        # no overflow skipped the step: the scale stayed, and the gradients are the unscaled ones
        assert full_scaler.get_scale() == cached_scaler.get_scale() == SCALE
    assert (_flat(full) != 0).float().mean() > 0.5  # real gradients, not underflown zeros
    assert _error(_flat(full), _flat(cached)) < (1e-3 if precision == "16-mixed" else 1e-4)


def test_grad_cache_without_the_loss_scale_underflows_under_16_mixed(
    phantom_shards, tiny_text_model, tmp_path, monkeypatch
):
    full, _ = _first_step(phantom_shards, tiny_text_model, tmp_path / "full", "16-mixed", None)
    monkeypatch.setattr(grad_cache_code, "_loss_scale", lambda module: None)  # the cached gradients of the bare loss
    cached, _ = _first_step(phantom_shards, tiny_text_model, tmp_path / "cached", "16-mixed", 3)
    assert (_flat(full) != 0).float().mean() > 0.5
    assert (_flat(cached) == 0).all()  # the fp16 gradients of features and logits underflowed: nothing is left


def test_loss_scale_comes_only_from_a_16_mixed_scaler(tmp_path):
    from types import SimpleNamespace

    def scale_of(**options):
        return grad_cache_code._loss_scale(SimpleNamespace(_trainer=quiet_trainer(tmp_path, **options)))

    assert grad_cache_code._loss_scale(SimpleNamespace(_trainer=None)) is None
    assert scale_of(precision="32-true") is None
    assert scale_of(precision="bf16-mixed") is None
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    assert scale_of(plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)]) == SCALE
