import numpy as np

from convirt.zeroshot.metrics import auroc, mean_defined, per_finding_auroc


def test_auroc_is_none_without_both_classes():
    assert auroc(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3])) is None
    assert auroc(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3])) == 1.0


def test_per_finding_and_mean_skip_undefined():
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    scores = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3]])
    values = per_finding_auroc(labels, scores, ["a", "b"])
    assert values == {"a": 1.0, "b": None}
    assert mean_defined(values) == 1.0
