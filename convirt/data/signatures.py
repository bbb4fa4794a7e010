"""Pixel signatures of images, for finding copies of test images in training data.

A signature is the SHA-256 of the decoded grey pixels (equal only for the same pixels: an exact
copy, however it was stored), a small standardised thumbnail (equal up to noise for a copy that
was resized, re-encoded as JPEG or shifted in brightness) and the thumbnail's detail (itself less
a 5x5 local mean): two distinct radiographs of one kind can share a smooth layout, rarely their
detail. All three come out of one read of each image, through the evaluation input pipeline, so
shards, label tables and folders all work.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import uniform_filter

THUMBNAIL = 48  # side of the thumbnail: fine enough to tell two radiographs apart, coarse enough to ignore JPEG noise
# (see convirt.retrieval.duplicates.NEAR_THRESHOLD for what was measured)
_DIGEST_WORDS = 16  # SHA-256 as 16 words of 16 bits, each exact in float32, so a signature is one tensor


def signature(image: Image.Image) -> torch.Tensor:
    """One image's signature as a float32 tensor: the pixel digest's 16 words, the thumbnail, its detail."""
    grey = image.convert("L")
    digest = hashlib.sha256(f"{grey.size}".encode() + grey.tobytes()).digest()
    words = np.frombuffer(digest, dtype=">u2").astype(np.float32)
    thumbnail = np.asarray(grey.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX), dtype=np.float32).ravel()
    detail = thumbnail - uniform_filter(thumbnail.reshape(THUMBNAIL, THUMBNAIL), size=5, mode="nearest").ravel()
    return torch.from_numpy(np.concatenate([words, _unit(thumbnail), _unit(detail)]).astype(np.float32))


def _unit(values: np.ndarray) -> np.ndarray:
    centred = values - values.mean()
    norm = float(np.linalg.norm(centred))
    return centred / norm if norm > 0 else centred


@dataclass
class Signatures:
    """Signatures of a set of images.

    Attributes:
        keys: Sample keys.
        digests: Hex SHA-256 of each image's pixels.
        thumbnails: ``(N, THUMBNAIL**2)`` centred, unit-norm thumbnails (their dot product is the
            pixels' correlation).
        patients: Each sample's patient id (its key where none is recorded).
        details: ``(N, THUMBNAIL**2)`` centred, unit-norm details of the thumbnails.
    """

    keys: list[str]
    digests: list[str]
    thumbnails: np.ndarray
    patients: list[str]
    details: np.ndarray

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write them to one ``.npz`` file."""
        np.savez(
            path,
            keys=self.keys,
            digests=self.digests,
            thumbnails=self.thumbnails,
            patients=self.patients,
            details=self.details,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Signatures:
        """Read a file :meth:`save` wrote."""
        with np.load(path) as stored:
            return cls(
                [str(k) for k in stored["keys"]],
                [str(d) for d in stored["digests"]],
                stored["thumbnails"],
                [str(p) for p in stored["patients"]],
                stored["details"],
            )


def collect_signatures(batches: Iterable[dict[str, Any]], progress: Any = None) -> Signatures:
    """Signatures from batches whose ``image`` entries :func:`signature` made (see
    :func:`read_signatures`); ``progress`` is a tqdm-like bar updated per batch."""
    keys: list[str] = []
    digests: list[str] = []
    thumbnails: list[np.ndarray] = []
    details: list[np.ndarray] = []
    patients: list[str] = []
    for batch in batches:
        values = batch["image"].numpy()
        words = values[:, :_DIGEST_WORDS].astype(">u2")
        digests += [row.tobytes().hex() for row in words]
        side = THUMBNAIL * THUMBNAIL
        thumbnails.append(values[:, _DIGEST_WORDS : _DIGEST_WORDS + side])
        details.append(values[:, _DIGEST_WORDS + side :])
        keys += list(batch["key"])
        patients += [str(m.get("patient_id") or k) for m, k in zip(batch["meta"], batch["key"])]
        if progress is not None:
            progress.update(len(batch["key"]))
    if not keys:
        raise ValueError("no images to sign")
    return Signatures(keys, digests, np.concatenate(thumbnails), patients, np.concatenate(details))


def read_signatures(path: str | os.PathLike[str], batch_size: int = 64, **options: Any) -> Signatures:
    """Signatures of the images of a shard folder, label table or image folder.

    ``options`` select the samples as :func:`convirt.data.inputs.build_input_batches` does
    (``split``, ``where``, ``label_format``, ``images``, ``split_file``, ...).
    """
    from tqdm.auto import tqdm

    from convirt.data.inputs import build_input_batches

    batches = build_input_batches(path, signature, None, batch_size, **options)
    with tqdm(desc=f"signing {os.fspath(path)}", unit="img", leave=False) as bar:
        return collect_signatures(batches, bar)
