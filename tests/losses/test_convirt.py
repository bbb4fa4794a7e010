import pytest
import torch
import torch.nn.functional as F

from convirt.losses import ConVIRTLoss, create_loss


def _features(seed=0, n=8, d=6):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_matches_the_paper_formula():
    images, texts = _features()
    logits = images @ texts.T / 0.1
    targets = torch.arange(8)
    expected = 0.75 * F.cross_entropy(logits, targets) + 0.25 * F.cross_entropy(logits.T, targets)
    assert torch.allclose(ConVIRTLoss(0.75, 0.1)(images, texts), expected, atol=1e-6)
    assert isinstance(create_loss("convirt"), ConVIRTLoss)


def test_repeated_reports_become_positives_of_each_other():
    # Two copies of one boilerplate report (embedded slightly apart, e.g. after sentence
    # sampling), each image closest to the *other* copy: hard targets punish that, soft do not.
    images, texts = _features(1)
    texts, images = texts.clone(), images.clone()
    texts[1] = F.normalize(texts[0] + 0.05 * torch.eye(6)[1], dim=0)
    texts[0] = F.normalize(texts[0] + 0.05 * torch.eye(6)[2], dim=0)
    images[0], images[1] = texts[1], texts[0]
    loss = ConVIRTLoss()
    groups = torch.tensor([0, 0, 2, 3, 4, 5, 6, 7])
    hard = loss(images, texts)
    soft = loss(images, texts, text_groups=groups)
    assert soft < hard  # no penalty for matching an image to an identical copy of its report
    assert torch.allclose(loss(images, texts, text_groups=torch.arange(8)), hard, atol=1e-6)


def test_bad_parameters():
    with pytest.raises(ValueError, match="lambda"):
        ConVIRTLoss(weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        ConVIRTLoss(temperature=0)
