"""FAISS indexes over embedding arrays, and retrieval metrics. Arrays in, no models."""

from convirt.retrieval.index import IndexInfo, build_index, load_index, save_index, search
from convirt.retrieval.metrics import label_precision_at_k

__all__ = ["IndexInfo", "build_index", "label_precision_at_k", "load_index", "save_index", "search"]
