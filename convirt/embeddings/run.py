"""Running an embedding into a folder (:mod:`convirt.embeddings.store`'s format): in this process or on
several ranks (``encode_all``), resuming what the folder holds, the precision checked and recorded, and
every rank's parts checked to be in the folder at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from convirt._embedding_space import canonical_precision
from convirt.embeddings.encode import MODALITIES, Encoder, as_encoder
from convirt.embeddings.precision import EmbeddingPrecision, parse_precision
from convirt.embeddings.store import (
    DTYPES,
    PartWriter,
    _info_of,
    close_embedding_folder,
    completed_parts,
    open_embedding_folder,
    record_precision,
    skipped_record,
)

# Returns the ranks that wrote parts (their sinks closed on return), or None for this process alone.
EncodeAll = Callable[[Encoder, Iterable[dict[str, Any]], Callable[[int], "PartWriter"], str, bool], "int | None"]


def encode_here(
    encoder: Encoder,
    batches: Iterable[dict[str, Any]],
    open_sink: Callable[[int], PartWriter],
    modality: str = "image",
    progress: bool = True,
) -> None:
    """Encode every batch in this process into the sink of rank 0."""
    from tqdm.auto import tqdm

    sink = open_sink(0)
    for batch in tqdm(batches, desc=f"embed {modality}s", unit="batch", disable=not progress):
        sink.add_batch(encoder.batch(batch, modality), batch)
    sink.close()


def embed_to_folder(
    model: Any,
    make_batches: Callable[[set[str]], Iterable[dict[str, Any]]],
    output: str | os.PathLike[str],
    fingerprint: dict[str, Any] | None = None,
    modality: str = "image",
    chunk_size: int = 4096,
    dtype: str = "float32",
    precision: str | None = None,
    encode_all: EncodeAll | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Embed into an embedding folder, resuming what is there.

    Each rank writes its own parts of ``chunk_size`` vectors, so a run killed at any point carries on
    from its last complete part when run again with the same arguments. The precision the vectors
    were made at (:mod:`convirt.embeddings.precision`) is recorded in ``info.json``, and a resume at
    a precision not shown to agree with the folder's is refused.

    Args:
        model: An :class:`~convirt.embeddings.encode.Encoder` (its precision and padding id), or a
            model with ``encode_image`` / ``encode_text`` (float32 on a CPU, the policy elsewhere).
        make_batches: Called with the keys already in the folder; returns the batches of the
            others (e.g. :func:`convirt.data.inputs.build_eval_batches` with ``skip_keys``).
        output: The folder.
        fingerprint: The model's (:func:`convirt.models.model_fingerprint`), checked against the
            folder's when resuming and stored with ``modality`` and the precision.
        modality, chunk_size, dtype: What to embed, vectors per part, ``float32`` or ``float16`` on disk.
        precision: A precision to use as asked (``float32``, ``bfloat16``, ``32-true``...); ``None``:
            the encoder's (the policy for a model).
        encode_all: Runs the encoding (default :func:`encode_here`, this process; ``convirt embed
            --devices N`` passes the data-parallel runner of :mod:`convirt.training.predict`).
        progress: Show a progress bar.

    Returns:
        The vectors the folder holds, and the corrupt samples this run skipped.

    Raises:
        ValueError: The folder holds another model's or modality's vectors, or vectors of another
            precision not shown to agree.
    """
    from functools import partial

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
    encoder = as_encoder(model)
    if precision is not None:
        encoder.requested = parse_precision(precision)
    before = _info_of(output)
    if encoder.requested is None and completed_parts(output) and before.get("precision") is not None:
        if canonical_precision(before["precision"]) == "float32":
            encoder.requested = "float32"  # a resume goes on at the folder's float32, whatever the device
    done = open_embedding_folder(output, {**(fingerprint or {}), "modality": modality})

    def settle(made_modality: str, made: EmbeddingPrecision) -> None:
        # Checked and recorded once the first batch settles it, before any of its vectors is written.
        if made_modality == modality:
            record_precision(output, made.as_info())

    encoder.on_settle = settle
    try:
        ranks = (encode_all or encode_here)(
            encoder,
            make_batches(done),
            partial(PartWriter, output, chunk_size=chunk_size, dtype=dtype),
            modality,
            progress,
        )
    finally:
        encoder.on_settle = None
    _check_every_rank_here(output, ranks)
    return close_embedding_folder(output)


def _check_every_rank_here(output: str | os.PathLike[str], ranks: int | None) -> None:
    """Every rank closed its sink into ``output`` as this process sees it: a folder on each node's own disk
    would hold that node's parts only (and a resume would embed the others' again).

    Raises:
        ValueError: A rank's end-of-run record is not in the folder.
    """
    missing = [rank for rank in range(ranks or 0) if not skipped_record(output, rank).is_file()]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise ValueError(
            f"the parts of ranks {shown} of {ranks} are not in {output} as this node sees it: "
            "--output must be a folder every node shares (a network file system)"
        )
