"""Retrieval: FAISS index folders (index + info + metadata), search, label-aware metrics, kNN. Arrays in."""

from convirt._embedding_space import check_same_space
from convirt.retrieval.folder import IndexFolderOutput, build_index_folder, load_index_folder, merge_index_folders
from convirt.retrieval.index import (
    IndexInfo,
    build_index,
    index_vectors,
    load_index,
    merge_indexes,
    save_index,
    search,
)
from convirt.retrieval.knn import knn_scores
from convirt.retrieval.metrics import (
    image_text_recall,
    label_precision_at_k,
    recall_at_ks,
    retrieval_metrics,
    same_patient_exclusions,
)

__all__ = [
    "IndexFolderOutput",
    "IndexInfo",
    "build_index",
    "build_index_folder",
    "check_same_space",
    "image_text_recall",
    "index_vectors",
    "knn_scores",
    "label_precision_at_k",
    "load_index",
    "load_index_folder",
    "merge_index_folders",
    "merge_indexes",
    "recall_at_ks",
    "retrieval_metrics",
    "same_patient_exclusions",
    "save_index",
    "search",
]
