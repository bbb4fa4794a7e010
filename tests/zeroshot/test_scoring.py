import pytest
import torch
import torch.nn.functional as F

from convirt.zeroshot import list_descriptor_sets, load_descriptors
from convirt.zeroshot.prompts import descriptor_prompts, name_prompts
from convirt.zeroshot.scoring import combine_observations, pair_probabilities


def test_positive_prompt_wins_on_a_clear_case():
    image = F.normalize(torch.tensor([[1.0, 0.0, 0.2]]), dim=1)
    positive = F.normalize(torch.tensor([[1.0, 0.0, 0.0]]), dim=1)
    negative = F.normalize(torch.tensor([[0.0, 1.0, 0.0]]), dim=1)
    probs = pair_probabilities(image, positive, negative, logit_scale=10.0)
    assert probs.shape == (1, 1) and probs.item() > 0.99
    assert pair_probabilities(image, negative, positive, 10.0).item() < 0.01


def test_finding_probability_is_geometric_mean_of_its_observations():
    probs = torch.tensor([[0.9, 0.4, 0.5]])
    combined = combine_observations(probs, owner=[0, 0, 1], num_findings=2)
    assert torch.allclose(combined, torch.tensor([[0.6, 0.5]]), atol=1e-6)


def test_shipped_descriptor_sets_load_with_prompts():
    assert "phantom" in list_descriptor_sets()
    descriptors = load_descriptors("phantom")
    positives, negatives, owner = descriptor_prompts(descriptors)
    assert len(positives) == len(negatives) == len(owner) >= 2 * len(descriptors.findings)
    assert positives[0].startswith("There is ") and "There is no " in negatives[0]
    assert len(name_prompts(descriptors)[0]) == len(descriptors.findings)


def test_descriptor_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown descriptor set 'chexpret'; known: .*phantom"):
        load_descriptors("chexpret")
    bad = tmp_path / "bad.yaml"
    bad.write_text("findings:\n  Edema:\n    observations: []\n")
    with pytest.raises(ValueError, match="bad.yaml: finding 'Edema' needs a non-empty list"):
        load_descriptors(str(bad))
    bad.write_text("findings:\n  Edema:\n    observations: [haze]\n    colour: red\n")
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        load_descriptors(str(bad))
