import pytest
import torch
import torch.nn.functional as F

from convirt.losses import create_loss


def test_clip_loss_is_low_for_aligned_pairs_and_high_for_shuffled():
    torch.manual_seed(0)
    features = F.normalize(torch.randn(16, 8), dim=1)
    loss = create_loss("clip")
    aligned = loss(features, features, torch.tensor(20.0))
    shuffled = loss(features, features[torch.randperm(16)], torch.tensor(20.0))
    assert aligned < 0.5 < shuffled


def test_siglip_loss_runs_with_bias():
    features = F.normalize(torch.randn(4, 8), dim=1)
    value = create_loss("siglip")(features, features, torch.tensor(10.0), torch.tensor(-10.0))
    assert torch.isfinite(value)


def test_unknown_loss_lists_known():
    with pytest.raises(ValueError, match="unknown loss 'infonce'; known: clip, siglip"):
        create_loss("infonce")
