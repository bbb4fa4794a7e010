import pytest
import torch
from torch import nn

from convirt.zeroshot.saliency import gradcam, last_conv_layer


class _Tower(nn.Module):
    """A CNN with global average pooling: positive weights, so bright regions raise every feature."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))

    def encode_image(self, images, normalize=False):
        return self.visual(images).mean(dim=(2, 3))


def test_gradcam_points_at_the_region_that_drives_the_score():
    torch.manual_seed(0)
    model = _Tower()
    with torch.no_grad():
        model.visual[0].weight.abs_()
        model.visual[2].weight.abs_()
        model.visual[0].bias.zero_()
    image = torch.zeros(3, 16, 16)
    image[:, 2:6, 3:7] = 1.0  # one bright patch: the only thing that raises the score
    cam = gradcam(model, image, torch.ones(4))
    assert cam.shape == (16, 16) and float(cam.max()) == pytest.approx(1.0) and float(cam.min()) >= 0
    assert cam[2:6, 3:7].mean() > 5 * cam[9:, 9:].mean()
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_a_tower_without_feature_maps_is_refused():
    class _Vit(nn.Module):
        visual = nn.Sequential(nn.Conv2d(3, 4, 16, stride=16), nn.Flatten())

    with pytest.raises(ValueError, match="Grad-CAM needs a CNN tower"):
        last_conv_layer(_Vit())
    assert isinstance(last_conv_layer(_Tower()), nn.Conv2d)
