import pytest

from convirt.models import create_model
from convirt.models.freeze import freeze_image_groups, freeze_text_layers
from tests.conftest import TINY_MODEL, quiet_trainer, tiny_datamodule


def _trainable(module):
    return {name for name, p in module.named_parameters() if p.requires_grad}


def test_freezing_stops_at_the_requested_depth(tiny_text_model):
    model = create_model(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model)
    assert freeze_image_groups(model, 0) == 0 and freeze_text_layers(model, 0) == 0
    assert freeze_image_groups(model, 2) > 0
    trainable = _trainable(model.visual.trunk)
    assert not any(name.startswith(("conv_stem", "bn1", "blocks.0.")) for name in trainable)
    assert any(name.startswith("blocks.1.") for name in trainable)
    assert freeze_text_layers(model, 1) > 0
    text = _trainable(model.text.transformer)
    assert not any(name.startswith(("embeddings.", "encoder.layer.0.")) for name in text)
    assert any(name.startswith("encoder.layer.1.") for name in text)
    assert "logit_scale" in _trainable(model)


def test_freezing_more_text_layers_than_exist_is_an_error(tiny_text_model):
    model = create_model(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model)
    with pytest.raises(ValueError, match="freeze_text_layers=5 but the text tower has 2 layers"):
        freeze_text_layers(model, 5)


def test_lock_tower_freezes_the_trunk_not_the_head(tiny_text_model):
    import pytest

    from convirt.models import create_model
    from convirt.models.freeze import lock_tower
    from tests.conftest import TINY_MODEL

    model = create_model(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model)
    assert lock_tower(model, "image") == sum(p.numel() for p in model.visual.trunk.parameters())
    assert not any(p.requires_grad for p in model.visual.trunk.parameters())
    assert all(p.requires_grad for p in model.visual.head.parameters())
    assert lock_tower(model, "text") > 0 and all(p.requires_grad for p in model.text.proj.parameters())
    with pytest.raises(ValueError, match="unknown tower 'audio'"):
        lock_tower(model, "audio")


def test_locked_trunk_trains_in_eval_mode_and_checkpointing_runs(phantom_shards, tiny_text_model, tmp_path):
    import torch

    from convirt.training import ContrastiveModule
    from tests.conftest import TINY_MODEL

    module = ContrastiveModule(
        TINY_MODEL,
        pretrained=False,
        text_model_path=tiny_text_model,
        lock_image_tower=True,
        gradient_checkpointing=True,
        warmup_steps=1,
    )
    trunk = {n: p.detach().clone() for n, p in module.model.visual.trunk.named_parameters()}
    data = tiny_datamodule(phantom_shards, tiny_text_model)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert not module.model.visual.trunk.training
    assert module.model.text.transformer.training  # Hugging Face towers load in eval mode: trained in train mode
    assert all(torch.equal(p, trunk[n]) for n, p in module.model.visual.trunk.named_parameters())
    quiet = ContrastiveModule(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model, text_dropout=False)
    quiet.on_fit_start()
    assert not quiet.model.text.transformer.training and quiet.model.visual.trunk.training


def test_freeze_image_norm_keeps_the_pretrained_statistics_while_the_trunk_trains(
    phantom_shards, tiny_text_model, tmp_path
):
    import torch

    from convirt.training import ContrastiveModule
    from tests.conftest import TINY_MODEL

    def norms(module: ContrastiveModule) -> dict[str, torch.Tensor]:
        return {
            name: tensor.detach().clone()
            for name, tensor in module.model.visual.trunk.state_dict().items()
            if name.endswith(("running_mean", "running_var"))
        }

    def fit(freeze: bool) -> tuple[dict[str, torch.Tensor], ContrastiveModule]:
        torch.manual_seed(0)
        module = ContrastiveModule(
            TINY_MODEL,
            pretrained=False,
            text_model_path=tiny_text_model,
            warmup_steps=1,
            freeze_image_norm=freeze,
            learning_rate=1e-2,
        )
        before = norms(module)
        weights = {n: p.detach().clone() for n, p in module.model.visual.trunk.named_parameters()}
        data = tiny_datamodule(phantom_shards, tiny_text_model)
        quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(module, datamodule=data)
        assert any(not torch.equal(p, weights[n]) for n, p in module.model.visual.trunk.named_parameters())
        return before, module

    before, module = fit(freeze=True)
    assert before and all(torch.equal(value, norms(module)[name]) for name, value in before.items())
    assert module.model.visual.trunk.training  # only the norm layers are in eval mode
    before, module = fit(freeze=False)
    assert any(not torch.equal(value, norms(module)[name]) for name, value in before.items())
