"""Retrieval: FAISS index folders (index + info + metadata; built in memory or out of core), search,
label-aware metrics, kNN. Arrays in."""

from convirt._embedding_space import check_same_space
from convirt.retrieval.folder import (
    IndexFolderOutput,
    MetadataRows,
    build_index_folder,
    load_index_folder,
    merge_index_folders,
    open_index_folder,
)
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
from convirt.retrieval.ondisk import (
    ArrayPart,
    add_parts,
    build_out_of_core,
    merge_sub_indexes,
    out_of_core_needed,
    part_block,
    train_ivf,
)

__all__ = [
    "ArrayPart",
    "IndexFolderOutput",
    "IndexInfo",
    "MetadataRows",
    "add_parts",
    "build_index",
    "build_index_folder",
    "build_out_of_core",
    "check_same_space",
    "image_text_recall",
    "index_vectors",
    "knn_scores",
    "label_precision_at_k",
    "load_index",
    "load_index_folder",
    "merge_index_folders",
    "merge_indexes",
    "merge_sub_indexes",
    "open_index_folder",
    "out_of_core_needed",
    "part_block",
    "recall_at_ks",
    "retrieval_metrics",
    "same_patient_exclusions",
    "save_index",
    "search",
    "train_ivf",
]
