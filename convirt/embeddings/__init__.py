"""Batch embedding of images or texts through a model's ``encode_image`` / ``encode_text``."""

from convirt.embeddings.encode import EmbeddingOutput, embed_batches, embed_texts
from convirt.embeddings.store import embed_to_folder, read_embeddings

__all__ = ["EmbeddingOutput", "embed_batches", "embed_texts", "embed_to_folder", "read_embeddings"]
