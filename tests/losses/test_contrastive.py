import math

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


def _siglip_reference(images, texts, scale, bias):
    """Zhai et al. (2023), as open_clip's SigLipLoss: -(1/B) sum over all B*B pairs (i, j) of
    log sigmoid(z_ij * (scale * <x_i, y_j> + bias)), z_ij = 1 for i == j and -1 otherwise."""
    total = 0.0
    for i, image in enumerate(images.tolist()):
        for j, text in enumerate(texts.tolist()):
            logit = scale * sum(a * b for a, b in zip(image, text)) + bias
            total += math.log1p(math.exp(-(1 if i == j else -1) * logit))  # -log sigmoid(z * logit)
    return total / len(images)


def test_siglip_loss_is_the_pairwise_sigmoid_loss_with_bias():
    torch.manual_seed(0)
    images, texts = (F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1) for _ in range(2))
    loss = create_loss("siglip")
    for scale, bias in ((10.0, -10.0), (2.0, 0.5), (1.0, 0.0)):
        value = loss(images, texts, torch.tensor(scale, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64))
        assert float(value) == pytest.approx(_siglip_reference(images, texts, scale, bias), rel=1e-9, abs=1e-12)
    # Limits: orthonormal pairs at a large scale with the bias halfway give each of the 3 x 3
    # logits a margin of 50: the loss is about 9 * exp(-50) / 3. Mismatched, the 3 wrong positives
    # cost 50 each and the 3 "negatives" that are true pairs 50 each: (3 * 50 + 3 * 50) / 3.
    basis = torch.eye(3, dtype=torch.float64)
    scale, bias = torch.tensor(100.0, dtype=torch.float64), torch.tensor(-50.0, dtype=torch.float64)
    assert float(loss(basis, basis, scale, bias)) < 1e-20
    assert float(loss(basis, basis[[1, 2, 0]], scale, bias)) == pytest.approx(100.0, rel=1e-9)


def test_unknown_loss_lists_known():
    with pytest.raises(ValueError, match="unknown loss 'infonce'; known: clip, siglip"):
        create_loss("infonce")
