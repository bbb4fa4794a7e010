import pytest
import torch
import torch.nn.functional as F

from convirt.zeroshot import list_descriptor_sets, load_descriptors
from convirt.zeroshot.prompts import descriptor_prompts, ensemble_prompts, name_prompts
from convirt.zeroshot.scoring import class_embeddings, combine_observations, pair_probabilities


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
    with pytest.raises(ValueError, match="bad.yaml: line 2: finding 'Edema' needs a non-empty list"):
        load_descriptors(str(bad))
    bad.write_text("findings:\n  Edema:\n    observations: [haze]\n    colour: red\n")
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        load_descriptors(str(bad))


@pytest.mark.parametrize("name", ["chexpert", "nih14", "pneumonia", "tuberculosis", "covid19", "phantom"])
def test_every_shipped_set_is_valid(name):
    descriptors = load_descriptors(name)
    assert descriptors.name == name and descriptors.findings
    assert all(len(f.observations) >= 2 for f in descriptors.findings)
    if name in ("chexpert", "nih14"):
        assert len(descriptors.findings) == 14


def test_duplicate_finding_and_unknown_top_key_are_named_with_lines(tmp_path):
    bad = tmp_path / "dup.yaml"
    bad.write_text("findings:\n  Edema:\n    observations: [haze]\n  Edema:\n    observations: [lines]\n")
    with pytest.raises(ValueError, match="dup.yaml: line 4: duplicate key 'Edema' \\(first at line 2\\)"):
        load_descriptors(str(bad))
    bad.write_text("name: x\nfinding:\n  Edema:\n    observations: [haze]\n")
    with pytest.raises(ValueError, match="non-empty 'findings' mapping"):
        load_descriptors(str(bad))
    bad.write_text("name: x\nversion: 2\nfindings:\n  Edema:\n    observations: [haze]\n")
    with pytest.raises(ValueError, match="line 2: unknown key 'version'"):
        load_descriptors(str(bad))
    bad.write_text("findings:\n  Edema:\n    observations: [haze]\n    synonyms: []\n")
    with pytest.raises(ValueError, match="synonyms must be a non-empty list"):
        load_descriptors(str(bad))


def test_negative_prompt_and_template_ensembles():
    descriptors = load_descriptors("pneumonia")
    positives, negatives = name_prompts(descriptors)
    assert positives == ["There is pneumonia."] and negatives == ["Normal chest radiograph."]
    pos, pos_owner, neg, neg_owner = ensemble_prompts(descriptors)
    assert len(pos) == 4 * 3 and set(pos_owner) == {0} and "No evidence of lung infection." in neg
    assert neg[-1] == "Normal chest radiograph." and len(neg) == len(neg_owner) == 4 * 3 + 1


def test_class_embeddings_average_then_normalise():
    embeddings = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    classes = class_embeddings(embeddings, [0, 0, 1], 2)
    assert torch.allclose(classes, F.normalize(torch.tensor([[1.0, 1.0], [1.0, 1.0]]), dim=1), atol=1e-6)
    with pytest.raises(ValueError, match="classes without prompts: \\[2\\]"):
        class_embeddings(embeddings, [0, 0, 1], 3)
