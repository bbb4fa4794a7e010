"""Embeddings: encoding in batches through ``encode_image`` / ``encode_text``, and the embedding folder."""

from convirt.embeddings.encode import EmbeddingOutput, embed_batches, embed_texts
from convirt.embeddings.store import (
    EmbeddingFolderOutput,
    PartWriter,
    close_embedding_folder,
    load_embedding_folder,
    open_embedding_folder,
    read_embeddings,
)

__all__ = [
    "EmbeddingFolderOutput",
    "EmbeddingOutput",
    "PartWriter",
    "close_embedding_folder",
    "embed_batches",
    "embed_texts",
    "load_embedding_folder",
    "open_embedding_folder",
    "read_embeddings",
]
