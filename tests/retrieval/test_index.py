import numpy as np
import pytest

from convirt.retrieval import build_index, label_precision_at_k, load_index, save_index, search


def _vectors(n=500, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_equals_exact_search():
    x = _vectors()
    index, info = build_index(x, "Flat")
    assert (info.count, info.dim, info.metric) == (500, 16, "inner_product")
    scores, ids = search(index, x[:20], 5)
    exact = np.argsort(-(x[:20] @ x.T), axis=1)[:, :5]
    assert np.array_equal(ids, exact)
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_hnsw_recall_against_exact():
    x = _vectors(2000, 32, seed=1)
    index, _ = build_index(x, "HNSW32")
    _, ids = search(index, x[:100], 10)
    exact = np.argsort(-(x[:100] @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall > 0.9


def test_save_and_load_round_trip(tmp_path):
    x = _vectors()
    index, info = build_index(x, "Flat", fingerprint={"model_name": "m"})
    save_index(index, info, tmp_path / "idx")
    loaded, loaded_info = load_index(tmp_path / "idx")
    assert loaded.ntotal == 500 and loaded_info == info
    with pytest.raises(FileNotFoundError, match="convirt index build"):
        load_index(tmp_path / "none")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="empty"):
        build_index(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="2-D"):
        build_index(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        build_index(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="bad FAISS factory string 'Flat9'"):
        build_index(_vectors(10, 4), "Flat9")
    index, _ = build_index(_vectors(10, 4))
    with pytest.raises(ValueError, match="dimension 5 does not match the index dimension 4"):
        search(index, _vectors(2, 5), 3)


def test_label_precision_excludes_the_query_itself():
    sets = [frozenset(), frozenset(), frozenset({"Edema"}), frozenset({"Edema"})]
    neighbours = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 0, 2]])
    assert label_precision_at_k(neighbours, sets, sets, k=1, query_ids=[0, 1, 2, 3]) == 0.75
    assert label_precision_at_k(neighbours, sets, sets, k=2, query_ids=[0, 1, 2, 3]) == 0.5
    with pytest.raises(ValueError, match="fewer than k=3"):
        label_precision_at_k(neighbours, sets, sets, k=3, query_ids=[0, 1, 2, 3])
