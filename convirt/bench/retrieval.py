"""Image-to-image search, kNN diagnosis and image<->text recall of an index folder, from its metadata.

``retrieval/`` takes arrays (neighbour ids, finding sets, label matrices, text groups); this
module reads them off the index folder's and embedding folders' metadata rows, so that `convirt
index eval` and any script get the same numbers from one call.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from convirt._embedding_space import check_same_space
from convirt.data.labels import label_matrix
from convirt.data.schema import finding_set
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
    same_patient_exclusions,
    search,
)
from convirt.retrieval.folder import IndexFolderOutput, load_index_folder, patient_rows, search_index_folder
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
    folder = load_index_folder(index)
    metadata = folder.metadata
    if queries is not None:
        embedded = load_embedding_folder(queries)
        check_same_space(folder.info.fingerprint, embedded.info, what="index (queries)")
        vectors, query_meta = embedded.vectors, embedded.rows
        self_ids: list[set[int]] = [set() for _ in query_meta]
    else:
        _, vectors = index_vectors(folder.index)
        query_meta = metadata
        self_ids = [{row} for row in range(len(metadata))]
    exclude = self_ids
    if not include_same_patient:
        patients = same_patient_exclusions(
            [str(m.get("patient_id", "")) for m in query_meta], [str(m.get("patient_id", "")) for m in metadata]
        )
        exclude = [a | b for a, b in zip(self_ids, patients)]
    depth = max(k, knn) + max((len(e) for e in exclude), default=0)
    similarities, ids = search(folder.index, vectors, min(depth, folder.index.ntotal))
    only = set(findings) if findings else None

    def finding_sets(rows: list[dict[str, Any]]) -> list[frozenset[str]]:
        sets = [finding_set(m.get("labels", [])) for m in rows]
        return [s & only for s in sets] if only is not None else sets

    result: dict[str, Any] = retrieval_metrics(ids, finding_sets(query_meta), finding_sets(metadata), k, exclude)
    if only is not None:
        result["findings"] = sorted(only)
    result.update(
        {"indexed": len(metadata), "factory": folder.info.factory, "same_patient_excluded": not include_same_patient}
    )
    if knn:
        names = sorted(set().union(*finding_sets(metadata)))
        if not names:
            raise ValueError("the indexed images carry no finding labels; kNN diagnosis needs them")
        scores = knn_scores(ids, similarities, label_matrix(metadata, names), knn, exclude)
        auroc = per_finding_auroc(label_matrix(query_meta, names), scores, names)
        result["knn"] = {"k": knn, "auroc": auroc, "mean_auroc": mean_defined(auroc)}
    if texts is not None:
        result["image_text"] = _image_text(vectors, query_meta, texts, folder.info.fingerprint)
    return result


def _image_text(
    image_vectors: np.ndarray,
    image_meta: list[dict[str, Any]],
    texts: str | os.PathLike[str],
    fingerprint: dict[str, Any],
) -> dict[str, Any]:
    """Image<->text recall of the images that have a report among ``texts`` (matched by key)."""
    embedded = load_embedding_folder(texts)
    check_same_space(fingerprint, embedded.info, what="index (texts)")
    own = {row["key"]: text_group(row.get("text", "")) for row in embedded.rows}
    keep = [i for i, row in enumerate(image_meta) if row["key"] in own]
    if not keep:
        raise ValueError(f"no indexed image has a report in {texts} (keys differ)")
    return image_text_recall(
        image_vectors[keep],
        [own[image_meta[i]["key"]] for i in keep],
        embedded.vectors,
        [text_group(row.get("text", "")) for row in embedded.rows],
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
