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


def _clustered(n=3000, d=32, centres=30, seed=2):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    return (c[rng.integers(centres, size=n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_ivfpq_with_refinement_matches_exact_search():
    from convirt.retrieval.index import index_vectors

    x = _clustered()
    exact = np.argsort(
        -((x / np.linalg.norm(x, axis=1, keepdims=True))[:50] @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T),
        axis=1,
    )[:, :10]
    plain, _ = build_index(x, "IVF16,PQ8x4", search_params="nprobe=8")
    refined, info = build_index(x, "IVF16,PQ8x4", refine=True, search_params="nprobe=8,k_factor_rf=8")
    recall = lambda ids: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])  # noqa: E731
    refined_recall = recall(search(refined, x[:50], 10)[1])
    assert info.refine and refined_recall >= 0.9
    assert refined_recall >= recall(search(plain, x[:50], 10)[1])
    ids, vectors = index_vectors(refined)
    assert np.array_equal(ids, np.arange(3000)) and vectors.shape == (3000, 32)


def test_ids_are_returned_as_given():
    x = _vectors(20, 8)
    ids = np.arange(1000, 1020)
    index, _ = build_index(x, "Flat", ids=ids)
    assert search(index, x[:3], 1)[1][:, 0].tolist() == [1000, 1001, 1002]
    with pytest.raises(ValueError, match="unique"):
        build_index(x, "Flat", ids=np.zeros(20))


@pytest.mark.parametrize(
    "factory, refine", [("Flat", False), ("HNSW32", False), pytest.param("IVF8,PQ4", True, marks=pytest.mark.slow)]
)  # 33 s
def test_merge_equals_one_shot_build(factory, refine):
    from convirt.retrieval import merge_indexes

    x = _clustered(1200, 16)
    a = build_index(x[:500], factory, refine=refine)
    b = build_index(x[500:], factory, refine=refine, ids=np.arange(500, 1200))
    merged, info = merge_indexes([a, b])
    one, _ = build_index(x, factory, refine=refine)
    s1, i1 = search(merged, x[:30], 5)
    s2, i2 = search(one, x[:30], 5)
    assert info.count == 1200 and np.array_equal(i1, i2) and np.allclose(s1, s2, atol=1e-5)
    with pytest.raises(ValueError, match="share ids"):
        merge_indexes(
            [a, build_index(x[:10], factory if factory != "IVF8,PQ4" else "Flat")] if factory == "Flat" else [a, a]
        )


def test_merge_refuses_other_models_and_unreadable_parts():
    from convirt.retrieval import merge_indexes

    x = _clustered(600, 16)
    a = build_index(x[:300], "Flat", fingerprint={"model_name": "m", "checkpoint_sha256": "aa"})
    b = build_index(
        x[300:], "Flat", ids=np.arange(300, 600), fingerprint={"model_name": "m", "checkpoint_sha256": "bb"}
    )
    with pytest.raises(ValueError, match="checkpoint_sha256 'aa'.* vs 'bb'"):
        merge_indexes([a, b])
    c = build_index(x, "IVF8,PQ4")
    with pytest.raises(ValueError, match="cannot return its vectors"):
        merge_indexes([c, c])
    with pytest.raises(ValueError, match="no indexes"):
        merge_indexes([])


def test_fingerprint_mismatch_on_load_names_both(tmp_path):
    x = _vectors(20, 8)
    index, info = build_index(x, fingerprint={"model_name": "demo", "checkpoint_sha256": "abc", "checkpoint": "a.ckpt"})
    save_index(index, info, tmp_path / "idx")
    load_index(tmp_path / "idx", fingerprint={"model_name": "demo", "checkpoint_sha256": "abc"})
    with pytest.raises(ValueError, match="checkpoint_sha256 'abc' \\(from a.ckpt\\) vs 'xyz' \\(from b.ckpt\\)"):
        load_index(
            tmp_path / "idx", fingerprint={"model_name": "demo", "checkpoint_sha256": "xyz", "checkpoint": "b.ckpt"}
        )
    mapped, _ = load_index(tmp_path / "idx", mmap=True)
    assert mapped.ntotal == 20


def test_search_params_are_stored_and_checked(tmp_path):
    index, info = build_index(_clustered(500, 16), "HNSW32", search_params="efSearch=80")
    save_index(index, info, tmp_path / "idx")
    loaded, loaded_info = load_index(tmp_path / "idx")
    assert loaded_info.search_params == "efSearch=80"
    import faiss

    assert faiss.downcast_index(loaded.index).hnsw.efSearch == 80
    with pytest.raises(ValueError, match="bad search parameters 'nprobe=4'"):
        build_index(_vectors(10, 4), "Flat", search_params="nprobe=4")


def test_training_too_few_vectors_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot train 'IVF8,PQ4' on 50 vectors"):
        build_index(_vectors(50, 16), "IVF8,PQ4")
