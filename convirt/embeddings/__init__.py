"""Embeddings: the one way vectors are made (:class:`Encoder`, its precision policy) and the embedding folder."""

from convirt.embeddings.encode import EmbeddingOutput, Encoder, embed_batches, embed_image_files, embed_texts
from convirt.embeddings.precision import EmbeddingPrecision, planned_precision
from convirt.embeddings.run import embed_to_folder
from convirt.embeddings.store import (
    EmbeddingFolderOutput,
    EmbeddingPart,
    EmbeddingPartsOutput,
    PartWriter,
    close_embedding_folder,
    list_embedding_parts,
    load_embedding_folder,
    open_embedding_folder,
    read_embeddings,
    record_precision,
)

__all__ = [
    "EmbeddingFolderOutput",
    "EmbeddingOutput",
    "EmbeddingPart",
    "EmbeddingPartsOutput",
    "EmbeddingPrecision",
    "Encoder",
    "PartWriter",
    "close_embedding_folder",
    "embed_batches",
    "embed_image_files",
    "embed_texts",
    "embed_to_folder",
    "list_embedding_parts",
    "load_embedding_folder",
    "open_embedding_folder",
    "planned_precision",
    "read_embeddings",
    "record_precision",
]
