"""`convirt index eval` (evaluate_index_folder) reads the index's rows once into arrays, holds none of them,
and gives the numbers of the computation over all rows as dicts."""

import json
import weakref
from types import SimpleNamespace

import numpy as np
import pytest

from convirt.bench import evaluate_index_folder
from convirt.data.labels import label_matrix
from convirt.data.schema import finding_set
from convirt.embeddings.store import PartWriter
from convirt.retrieval import (
    build_index_folder,
    index_vectors,
    knn_scores,
    load_index,
    retrieval_metrics,
    same_patient_exclusions,
    search,
)
from convirt.zeroshot.metrics import per_finding_auroc

LABELS = [["No Finding"], ["Edema"], ["Edema", "Cardiomegaly"], [], ["Cardiomegaly"], ["Pneumonia", "Edema"]]


def held_rows(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the index folder's metadata rows parsed and alive at once: ``peak`` (``parsed`` in all)."""
    count = {"live": 0, "peak": 0, "parsed": 0}

    class Row(dict):  # a dict that can be watched (a plain one takes no weak reference)
        pass

    def gone() -> None:
        count["live"] -= 1

    def loads(text, *args, **kwargs):
        row = json.loads(text, *args, **kwargs)
        if not isinstance(row, dict):
            return row
        row = Row(row)
        count["live"], count["parsed"] = count["live"] + 1, count["parsed"] + 1
        count["peak"] = max(count["peak"], count["live"])
        weakref.finalize(row, gone)
        return row

    monkeypatch.setattr("convirt.retrieval.folder.json", SimpleNamespace(loads=loads, dumps=json.dumps))
    return count


def _rows(n: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Clustered vectors whose labels follow their cluster (mostly); three images a patient, every tenth without one."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(LABELS), 8))
    cluster = rng.integers(len(LABELS), size=n)
    vectors = (centres[cluster] + 0.4 * rng.normal(size=(n, 8))).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = []
    for i in range(n):
        labels = LABELS[cluster[i] if rng.random() < 0.8 else rng.integers(len(LABELS))]
        row = {"key": f"img{i}", "labels": labels, "text": f"report {cluster[i]}"}
        if i % 10:
            row["patient_id"] = f"p{i // 3}"
        rows.append(row)
    return vectors, rows


def _folder(path, vectors, rows, modality="image"):
    writer = PartWriter(path)
    writer.add(vectors, rows)
    writer.close()
    (path / "info.json").write_text(json.dumps({"model_name": "m", "modality": modality}))
    return path


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    vectors, rows = _rows(150)
    root = tmp_path_factory.mktemp("eval")
    build_index_folder(vectors, rows, root / "index")
    query_vectors, query_rows = _rows(40, seed=1)
    for i, row in enumerate(query_rows):  # some queries are patients of the index
        row["patient_id"] = f"p{i}"
    _folder(root / "queries", query_vectors, query_rows)
    _folder(root / "texts", vectors[::-1].copy(), [{"key": r["key"], "text": r["text"]} for r in rows[::-1]], "text")
    return root, vectors, rows, query_vectors, query_rows


def _over_all_rows(index, rows, queries, k, knn, include_same_patient, findings):
    """The numbers as computed before the columns: from every row held as a dict."""
    query_vectors, query_rows, own = queries
    only = set(findings) if findings else None
    self_ids = [{i} if own else set() for i in range(len(query_rows))]
    exclude = self_ids
    if not include_same_patient:
        # A row without a patient id is its own patient (its key), as every other evaluation has it.
        patient = (
            [str(m.get("patient_id") or m["key"]) for m in query_rows],
            [str(m.get("patient_id") or m["key"]) for m in rows],
        )
        exclude = [a | b for a, b in zip(self_ids, same_patient_exclusions(*patient))]
    depth = max(k, knn) + max(len(e) for e in exclude)
    similarities, ids = search(index, query_vectors, min(depth, index.ntotal))

    def sets(some):
        return [finding_set(m.get("labels", [])) & only if only else finding_set(m.get("labels", [])) for m in some]

    result = retrieval_metrics(ids, sets(query_rows), sets(rows), k, exclude)
    if knn:
        names = sorted(set().union(*sets(rows)))
        scores = knn_scores(ids, similarities, label_matrix(rows, names), knn, exclude)
        result["auroc"] = per_finding_auroc(label_matrix(query_rows, names), scores, names)
    return result


@pytest.mark.parametrize(
    "queries, include_same_patient, findings",
    [(False, False, None), (False, True, None), (True, False, None), (False, False, ["Edema"])],
)
def test_eval_holds_no_row_and_gives_the_numbers_of_all_rows(
    indexed, monkeypatch, queries, include_same_patient, findings
):
    root, vectors, rows, query_vectors, query_rows = indexed
    index = load_index(root / "index")[0]
    count = held_rows(monkeypatch)
    result = evaluate_index_folder(
        root / "index",
        k=5,
        queries=root / "queries" if queries else None,
        include_same_patient=include_same_patient,
        knn=7,
        texts=None if queries else root / "texts",
        findings=findings,
    )
    # Every row was read (once, or twice with texts: their pass), never more than three alive at once (the
    # row being read, the one before it, and the last of the first pass while the texts' pass runs).
    assert count["parsed"] >= len(rows) and count["peak"] <= 3, count
    # The indexed images query with their stored vectors (renormalised: a last bit may differ, and break a tie).
    asked = (query_vectors, query_rows, False) if queries else (index_vectors(index)[1], rows, True)
    expected = _over_all_rows(index, rows, asked, 5, 7, include_same_patient, findings)
    assert {key: result[key] for key in expected if key != "auroc"} == pytest.approx(
        {key: value for key, value in expected.items() if key != "auroc"}, nan_ok=True
    )
    assert result["knn"]["auroc"] == pytest.approx(expected["auroc"], nan_ok=True)
    assert result["queries"] == len(asked[1]) and result["same_patient_excluded"] is not include_same_patient
    if not queries:  # each image's own report is among its nearest texts at least sometimes
        assert 0 <= result["image_text"]["image_to_text"]["recall_at_1"] <= 1


def test_an_index_without_its_vectors_is_refused_before_its_rows_are_read(tmp_path, monkeypatch):
    from convirt.retrieval.ondisk import ArrayPart, build_out_of_core

    vectors, rows = _rows(600)
    build_out_of_core([ArrayPart("part-0", vectors, rows)], tmp_path / "ooc", "IVF4,Flat", train_size=600)
    count = held_rows(monkeypatch)
    with pytest.raises(ValueError, match="keeps no map of its ids .* --queries"):
        evaluate_index_folder(tmp_path / "ooc", k=5)
    assert count["parsed"] == 0
