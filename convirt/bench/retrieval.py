"""Image-to-image search, kNN diagnosis and image<->text recall of an index folder, from its metadata.

``retrieval/`` takes arrays (neighbour ids, finding sets, label matrices, text groups); this
module reads them off the index folder's and embedding folders' metadata rows, so that `convirt
index eval` and any script get the same numbers from one call. The index's rows are read in one
pass into columns of arrays (:mod:`convirt.data.columns`), never held: an index may have millions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, overload

import numpy as np

from convirt._embedding_space import check_same_space
from convirt.data.columns import IdColumn, IdGroups, LabelColumn, LabelSets, patient_of
from convirt.data.stream import pad_id_of, text_group
from convirt.embeddings.encode import Encoder, embed_image_files, embed_texts
from convirt.embeddings.store import load_embedding_folder
from convirt.models import model_fingerprint
from convirt.models.checkpoint import LoadedModel
from convirt.retrieval import (
    image_text_recall,
    index_vectors,
    knn_scores,
    retrieval_metrics,
    search,
)
from convirt.retrieval.folder import IndexFolderOutput, open_index_folder, patient_rows, search_index_folder
from convirt.zeroshot.metrics import mean_defined, per_finding_auroc


def evaluate_index_folder(
    index: str | os.PathLike[str],
    k: int = 5,
    queries: str | os.PathLike[str] | None = None,
    include_same_patient: bool = False,
    knn: int = 0,
    texts: str | os.PathLike[str] | None = None,
    findings: list[str] | None = None,
) -> dict[str, Any]:
    """Label-aware precision@k, mAP@k and recall@k of an index folder's image-to-image search.

    A neighbour is relevant when its finding set (``No Finding`` = the empty set) equals the
    query's, restricted to ``findings`` when given.

    Args:
        index: An index folder (`convirt index build`).
        k: Neighbours scored.
        queries: An embedding folder to query with (default: the indexed images, each leaving itself out).
        include_same_patient: Count the query patient's other images (left out by default: they inflate scores).
        knn: Also score kNN diagnosis with this many neighbours: AUROC per finding (``knn``).
        texts: The `convirt embed --texts` folder of the same samples: also image<->text R@1/5/10 (``image_text``).
        findings: Count only these findings as labels.

    Raises:
        ValueError: The queries or texts come from another model, the indexed images carry no
            labels for kNN, or no indexed image has a report in ``texts``.
    """
    folder = open_index_folder(index)
    # The indexed images as queries: an index without its vectors is refused before its rows are read.
    own = index_vectors(folder.index)[1] if queries is None else None
    metadata = folder.metadata
    labels, patients = LabelColumn(), IdColumn(patient_of)
    for row in metadata:  # the one pass over the index's rows
        labels.add(row)
        if not include_same_patient:
            patients.add(row)
    index_labels, groups = labels.sets(), None if include_same_patient else patients.groups()
    query_meta: Sequence[dict[str, Any]] = metadata
    if queries is not None:
        embedded = load_embedding_folder(queries)
        check_same_space(folder.info.fingerprint, embedded.info, what="index (queries)")
        vectors, query_meta = embedded.vectors, embedded.rows
        query_labels = _label_sets(query_meta)
        codes = np.array([groups.code(patient_of(m)) for m in query_meta], dtype=np.int32) if groups else None
        exclude = _Exclusions(len(query_meta), groups, codes)
    else:
        assert own is not None  # read above
        vectors, query_labels = own, index_labels
        exclude = _Exclusions(len(metadata), groups, groups.codes if groups else None, own=True)
    depth = max(k, knn) + exclude.largest()
    similarities, ids = search(folder.index, vectors, min(depth, folder.index.ntotal))
    only = set(findings) if findings else None
    index_sets = index_labels.findings(only)
    result: dict[str, Any] = retrieval_metrics(ids, query_labels.findings(only), index_sets, k, exclude)
    if only is not None:
        result["findings"] = sorted(only)
    result.update(
        {"indexed": len(metadata), "factory": folder.info.factory, "same_patient_excluded": not include_same_patient}
    )
    if knn:
        names = sorted(set().union(*index_sets.values))
        if not names:
            raise ValueError("the indexed images carry no finding labels; kNN diagnosis needs them")
        scores = knn_scores(ids, similarities, index_labels.matrix(names), knn, exclude)
        auroc = per_finding_auroc(query_labels.matrix(names), scores, names)
        result["knn"] = {"k": knn, "auroc": auroc, "mean_auroc": mean_defined(auroc)}
    if texts is not None:
        result["image_text"] = _image_text(vectors, query_meta, texts, folder.info.fingerprint)
    return result


def _label_sets(rows: Sequence[dict[str, Any]]) -> LabelSets:
    column = LabelColumn()
    for row in rows:
        column.add(row)
    return column.sets()


class _Exclusions(Sequence[set[int]]):
    """Per query, the index rows it never counts: its patient's and, for an indexed query, its own.

    Each set is made when asked: held, a set per query would outweigh the rows themselves over an index's millions.

    Args:
        count: Queries.
        patients: The index rows grouped by patient; ``None``: no patient left out.
        codes: ``(Q,)`` each query's patient in ``patients`` (-1: not indexed).
        own: The queries are the indexed rows ``0..Q-1``, each leaving itself out.
    """

    def __init__(
        self, count: int, patients: IdGroups | None = None, codes: np.ndarray | None = None, own: bool = False
    ) -> None:
        self.queries, self.patients, self.own = count, patients, own
        self.codes = codes if codes is not None else np.full(count, -1, dtype=np.int32)

    def __len__(self) -> int:
        return self.queries

    @overload
    def __getitem__(self, item: int) -> set[int]: ...

    @overload
    def __getitem__(self, item: slice) -> list[set[int]]: ...

    def __getitem__(self, item: int | slice) -> set[int] | list[set[int]]:
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(self.queries))]
        query = int(item) + self.queries if int(item) < 0 else int(item)
        if not 0 <= query < self.queries:
            raise IndexError(f"query {item} of {self.queries}")
        excluded = set(self.patients.rows_of(int(self.codes[query])).tolist()) if self.patients else set()
        return excluded | {query} if self.own else excluded

    def largest(self) -> int:
        """The most rows a query leaves out."""
        sizes = self.patients.sizes(self.codes) if self.patients else np.zeros(self.queries, dtype=np.int64)
        if self.own:  # an indexed query is among its own patient's rows, where patients are left out
            sizes = sizes if self.patients else sizes + 1
        return int(sizes.max(initial=0))


def _image_text(
    image_vectors: np.ndarray,
    image_meta: Sequence[dict[str, Any]],
    texts: str | os.PathLike[str],
    fingerprint: dict[str, Any],
) -> dict[str, Any]:
    """Image<->text recall of the images that have a report among ``texts`` (matched by key)."""
    embedded = load_embedding_folder(texts)
    check_same_space(fingerprint, embedded.info, what="index (texts)")
    own = {row["key"]: text_group(row.get("text", "")) for row in embedded.rows}
    keep, groups = [], []
    for i, row in enumerate(image_meta):  # one pass: the index's rows may be read from their file
        if row["key"] in own:
            keep.append(i)
            groups.append(own[row["key"]])
    if not keep:
        raise ValueError(f"no indexed image has a report in {texts} (keys differ)")
    return image_text_recall(
        image_vectors[keep], groups, embedded.vectors, [text_group(row.get("text", "")) for row in embedded.rows]
    )


def query_index_folder(
    folder: IndexFolderOutput,
    loaded: LoadedModel,
    image: str | os.PathLike[str] | None = None,
    text: str | None = None,
    k: int = 5,
    exclude_same_patient: bool = False,
    patient: str | None = None,
) -> list[dict[str, Any]]:
    """The ``k`` indexed images nearest an image file or a report text, embedded by ``loaded``.

    Args:
        folder: A loaded index folder.
        loaded: The model that embeds the query; it must be the one the index was built with.
        image, text: The query (exactly one).
        k: Neighbours returned: per hit ``rank``, ``score`` and its metadata row.
        exclude_same_patient: Leave out the query patient's images (``patient``, or the patient
            of the indexed row whose path is ``image``).

    Raises:
        ValueError: Another model than the index's, not exactly one query, or no patient to exclude.
    """
    if (image is None) == (text is None):
        raise ValueError("query with an image or a text (one of them)")
    check_same_space(folder.info.fingerprint, model_fingerprint(loaded))
    encoder = Encoder(loaded.model, pad_id=pad_id_of(loaded.tokenizer))
    if image is not None:
        vector = embed_image_files(encoder, [image], loaded.preprocess_cfg)
    else:
        loaded.require_text("a text query")
        vector = embed_texts(encoder, loaded.tokenizer, [str(text)]).numpy()
    modality = "image" if image is not None else "text"
    made = {**model_fingerprint(loaded), **encoder.precision(modality).as_info()}
    check_same_space(folder.info.fingerprint, made, what="index (the query's precision)")
    excluded = patient_rows(folder.metadata, patient, image) if exclude_same_patient else set()
    return search_index_folder(folder, vector, k, excluded)
