import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from convirt.losses import TextNegativesClipLoss, create_loss


def _features(n: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_without_negatives_it_is_open_clips_clip_loss():
    images, texts, scale = _features(6, 0), _features(6, 1), torch.tensor(12.0)
    expected = ClipLoss()(images, texts, scale)
    assert torch.allclose(create_loss("clip")(images, texts, scale), expected, atol=1e-6)


def test_negatives_widen_only_the_image_to_text_softmax():
    images, texts, negatives, scale = _features(5, 0), _features(5, 1), _features(3, 2), torch.tensor(10.0)
    rows = torch.arange(5)
    image_to_text = F.cross_entropy(scale * images @ torch.cat([texts, negatives]).T, rows)
    text_to_image = F.cross_entropy(scale * texts @ images.T, rows)
    loss = TextNegativesClipLoss()(images, texts, scale, negatives=negatives)
    assert torch.allclose(loss, (image_to_text + text_to_image) / 2, atol=1e-6)


def test_a_negative_close_to_the_images_costs_more_than_a_far_one():
    images = _features(4, 0)
    loss = TextNegativesClipLoss()
    close = loss(images, images, torch.tensor(10.0), negatives=images[:1])
    far = loss(images, images, torch.tensor(10.0), negatives=-images[:1])
    assert close > far


def test_every_loss_takes_one_call_and_refuses_extras_it_has_no_use_for():
    images, texts, scale = _features(4, 0), _features(4, 1), torch.tensor(10.0)
    groups = torch.tensor([0, 1, 0, 2])
    for name in ("clip", "siglip", "convirt"):
        loss = create_loss(name)(
            images,
            texts,
            scale,
            torch.tensor(-5.0),
            text_groups=groups if name == "convirt" else None,
            negatives=texts[:2] if name == "clip" else None,
        )
        assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="need model.loss 'clip'"):
        create_loss("convirt")(images, texts, scale, negatives=texts[:2])
    with pytest.raises(ValueError, match="need loss 'convirt'"):
        create_loss("clip")(images, texts, scale, text_groups=groups)
