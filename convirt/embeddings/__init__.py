"""Batch embedding of images or texts through a model's ``encode_image`` / ``encode_text``."""

from convirt.embeddings.encode import EmbeddingOutput, embed_batches, embed_texts

__all__ = ["EmbeddingOutput", "embed_batches", "embed_texts"]
