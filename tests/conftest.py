"""Fixtures that make tiny artifacts locally: phantom shards, a tiny BERT and its tokenizer."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_MODEL = "test-tiny"


@pytest.fixture(scope="session")
def phantom_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convirt.data.sources.phantom import write_phantom

    return write_phantom(tmp_path_factory.mktemp("phantom"), num_samples=96, seed=3, size=96, progress=False)


@pytest.fixture(scope="session")
def phantom_shards(phantom_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from convirt.data.sources import read_rows
    from convirt.data.writer import write_shards

    out = tmp_path_factory.mktemp("shards")
    write_shards(
        read_rows("csv", str(phantom_csv)),
        out,
        image_size=80,
        shard_size=20,
        val_fraction=0.15,
        test_fraction=0.25,
        progress=False,
    )
    return out


def write_tiny_bert(out: Path, reports_csv: Path) -> str:
    """A 2-layer, 32-wide BERT in ``out`` with a WordPiece vocabulary built from a phantom row table's
    reports (and the phantom findings); its folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from convirt.data.sources.phantom import FINDINGS

    out.mkdir(parents=True, exist_ok=True)
    words = set(re.findall(r"[a-z]+|[^\sa-z]", reports_csv.read_text(encoding="utf-8").lower()))
    words |= set(re.findall(r"[a-z]+", " ".join(FINDINGS).lower())) | {"there", "is", "no", "indicating", "a", "or"}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(words)]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(out / "vocab.txt"), do_lower_case=True).save_pretrained(out)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_text_model(phantom_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide BERT with a WordPiece vocabulary built from the phantom reports."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), phantom_csv)


def requires_shared_data(*parts: str) -> pytest.MarkDecorator:
    """Skip with a clear reason when ../shared/data (or a file in it) is absent."""
    path = SHARED_DATA.joinpath(*parts)
    reason = f"real data not present at {path} (see ../shared/data/README.md)"
    return pytest.mark.skipif(not path.exists(), reason=reason)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_text_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``test-tiny`` model saved as a convirt (Lightning-format) checkpoint."""
    from convirt.training import save_initial_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    return Path(save_initial_checkpoint(str(path), TINY_MODEL, pretrained=False, text_model_path=tiny_text_model))


@pytest.fixture(scope="session")
def onnx_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny checkpoint exported by `convirt export --format onnx`: its folder, and what the command printed."""
    import contextlib
    import io

    from convirt.cli.main import main

    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", "--format", "onnx", "--checkpoint", str(tiny_checkpoint), "--output", str(out)]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="session")
def labels_csv(phantom_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A label table without text (like ../shared/data/cxr-eval): image, labels, patient_id, source."""
    import csv

    out = tmp_path_factory.mktemp("labels") / "labels.csv"
    with (
        open(phantom_csv, newline="", encoding="utf-8") as source,
        open(out, "w", newline="", encoding="utf-8") as target,
    ):
        writer = csv.writer(target)
        writer.writerow(["image", "labels", "patient_id", "source"])
        for i, row in enumerate(csv.DictReader(source)):
            image = str(Path(phantom_csv.parent, row["image"]).resolve())
            writer.writerow([image, row["labels"], row["patient_id"], "even" if i % 2 == 0 else "odd"])
    return out


def shaded_image(size: tuple[int, int], shade: int):
    """A grayscale PIL image of ``size`` around level ``shade``: a faint ramp, since the shard
    writer drops images of one value everywhere as ``constant_image``."""
    import numpy as np
    from PIL import Image

    width, height = size
    ramp = np.tile(np.arange(width, dtype=np.int64) % 9, (height, 1))
    return Image.fromarray(np.clip(ramp + int(shade), 0, 255).astype(np.uint8), mode="L")


def write_dicom(
    path: Path,
    pixels,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    window: tuple[float, float] | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    samples: int = 1,
    syntax: str | None = None,
    pixel_data: bytes | None = None,
    shape: tuple[int, int] = (40, 48),
) -> None:
    """A DX DICOM file: 12 bits in 16 of ``pixels`` (grayscale), 8-bit RGB with ``samples=3``, or
    ``pixel_data`` as given (``pixels`` None and no ``pixel_data``: a file without pixel data)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "p-dicom"
    ds.Rows, ds.Columns = shape if pixels is None else pixels.shape[-2:] if samples == 1 else pixels.shape[:2]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if frames > 1:
        ds.NumberOfFrames = frames
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if pixel_data is not None:
        ds.PixelData = pixel_data
    elif pixels is not None:
        import numpy as np

        ds.PixelData = (pixels if samples == 3 else pixels.astype(np.uint16)).tobytes()
    ds.save_as(path, enforce_file_format=True)


def quiet_trainer(root: str | os.PathLike[str], **options: object):
    """A CPU ``L.Trainer`` that writes no logs, progress bars, summaries or checkpoints under ``root``
    (each of them back on by its option)."""
    import lightning as L

    quiet = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    return L.Trainer(default_root_dir=root, **{**quiet, **options})


def tiny_datamodule(shards: str | os.PathLike[str], text_model_path: str, **options: object):
    """A ``ShardDataModule`` for the tiny model: batches of 8 in the test process, a 16-sample shuffle buffer."""
    from convirt.training import ShardDataModule

    small = {"batch_size": 8, "num_workers": 0, "shuffle_buffer": 16}
    return ShardDataModule(str(shards), model_name=TINY_MODEL, text_model_path=text_model_path, **{**small, **options})
