"""Evaluation protocols composed from the layers below: metadata in, metrics out."""

from convirt.bench.retrieval import evaluate_index_folder, query_index_folder

__all__ = ["evaluate_index_folder", "query_index_folder"]
