import pytest

from convirt.models import create_model
from convirt.models.freeze import freeze_image_groups, freeze_text_layers
from tests.conftest import TINY_MODEL


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
