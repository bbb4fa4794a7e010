"""FAISS indexes over embedding arrays, and retrieval metrics. Arrays in, no models."""

from convirt.retrieval.index import (
    IndexInfo,
    build_index,
    check_fingerprint,
    index_vectors,
    load_index,
    merge_indexes,
    save_index,
    search,
)
from convirt.retrieval.knn import knn_scores
from convirt.retrieval.metrics import (
    label_precision_at_k,
    recall_at_ks,
    retrieval_metrics,
    same_patient_exclusions,
)

__all__ = [
    "IndexInfo",
    "build_index",
    "check_fingerprint",
    "index_vectors",
    "knn_scores",
    "label_precision_at_k",
    "load_index",
    "merge_indexes",
    "recall_at_ks",
    "retrieval_metrics",
    "same_patient_exclusions",
    "save_index",
    "search",
]
