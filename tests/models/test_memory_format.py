"""Channels-last layout of a convolutional image tower: the same model, saved and loaded as usual."""

import torch

from convirt.models import create_model
from convirt.models.memory_format import channels_last_images, is_convolutional, to_channels_last
from tests.conftest import TINY_MODEL


def test_channels_last_gives_the_same_features_and_a_plain_state_dict(tiny_text_model):
    torch.manual_seed(0)
    plain = create_model(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model).eval()
    fast = create_model(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model).eval()
    fast.load_state_dict(plain.state_dict())
    assert is_convolutional(fast) and to_channels_last(fast)
    conv = next(m for m in fast.visual.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = plain.encode_image(images, normalize=True)
        assert torch.allclose(fast.encode_image(channels_last_images(images), normalize=True), expected, atol=1e-5)
    again = create_model(TINY_MODEL, pretrained=False, text_model_path=tiny_text_model).eval()
    again.load_state_dict(fast.state_dict())
    with torch.no_grad():
        assert torch.allclose(again.encode_image(images, normalize=True), expected, atol=1e-5)


def test_a_vit_is_left_alone(tiny_text_model):
    vit = create_model("test-tiny-vit", pretrained=False, text_model_path=tiny_text_model)
    assert not is_convolutional(vit) and not to_channels_last(vit)
