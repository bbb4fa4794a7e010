"""Shared by the serve tests: an index folder of the phantom label table by the tiny model, and its service."""

import pytest

from convirt.data.inputs import read_image_rows
from convirt.embeddings.encode import embed_image_files
from convirt.models.fingerprint import model_fingerprint
from convirt.models.sources import load_model
from convirt.retrieval import build_index_folder
from convirt.serve.service import CaseService


@pytest.fixture(scope="session")
def archive(labels_csv, tiny_checkpoint, tmp_path_factory):
    """An index folder of the phantom label table (with its image paths and reports) by the tiny model."""
    loaded = load_model(str(tiny_checkpoint))
    rows = read_image_rows(labels_csv)
    vectors = embed_image_files(loaded.model, [row.image_path for row in rows], loaded.preprocess_cfg)
    metadata = [
        {
            "key": row.key,
            **row.metadata(),
            "path": row.image_path,
            "text": f"report of {row.patient_id}: lungs are clear",
        }
        for row in rows
    ]
    folder = tmp_path_factory.mktemp("serve") / "index"
    build_index_folder(vectors, metadata, folder, fingerprint=model_fingerprint(loaded))
    return loaded, folder, rows


@pytest.fixture(scope="session")
def service(archive):
    loaded, folder, _ = archive
    return CaseService(loaded, folder, descriptors="phantom", knn_k=5)
