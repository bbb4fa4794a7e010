"""Label files of the public chest X-ray test sets, read in the form their archives distribute.

Each reader yields :class:`convirt.data.schema.Row` objects (no report) whose labels follow one
written-down policy, so that two users who hold the same files evaluate the same thing:

- ``rsna``: RSNA Pneumonia Detection ``stage_2_train_labels.csv`` (a row per box; ``Target`` 1 on
  any row: Pneumonia, else No Finding); images ``stage_2_train_images/{patientId}.dcm``.
- ``siim``: SIIM-ACR Pneumothorax ``train-rle.csv`` (``EncodedPixels`` ``-1``: no pneumothorax; any
  mask: Pneumothorax); DICOMs found by ``ImageId`` anywhere under the images folder.
- ``vindr``: VinDr-CXR in either layout it ships in. PhysioNet's ``image_labels_{train,test}.csv``
  (a column per finding, 1 positive; the test labels are the consensus of five radiologists, the
  train file has a row per reader: positive when any reader marked it). Box rows, PhysioNet's
  ``annotations_*.csv`` or Kaggle's VinBigData ``train.csv`` (a row per box and reader with
  ``class_name``; ``No finding`` rows carry no box): a finding is positive when any reader boxed it.
  Images ``{test,train}/{image_id}.dicom``.
- ``tb``: the Shenzhen and Montgomery tuberculosis sets, a folder of ``CXR_png`` files whose name
  ends ``_1`` (Tuberculosis) or ``_0`` (No Finding).
- ``covidx``: COVIDx ``test.txt`` (``patient_id filename class source``, space-separated; class
  ``positive`` / ``COVID-19``: COVID-19, ``pneumonia``: Pneumonia, else No Finding); images ``test/``.

RSNA, SIIM and VinDr keep the patient's sex, age and id and the view only in each DICOM's header: their
rows take them from there (header only, never the pixels), empty where the image is missing or damaged
(the patient is then the image id), so that patient-grouped folds keep a patient's images together.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from convirt.data.dicom_header import DicomHeader, read_dicom_header
from convirt.data.images import DICOM_SUFFIXES
from convirt.data.labels import open_table
from convirt.data.schema import NO_FINDING, Row, check_finding_names
from convirt.data.sources.csv import key_from_path

TEST_SET_FORMATS = ("rsna", "siim", "vindr", "tb", "covidx")
# How each format is read and where its findings come from, as the finding check names them.
TEST_SET_LAYOUTS = {
    "rsna": "RSNA stage_2_train_labels.csv (findings from column Target)",
    "siim": "SIIM-ACR train-rle.csv (findings from column EncodedPixels)",
    "vindr": "VinDr-CXR labels (findings from class_name, or a column per finding)",
    "tb": "a Shenzhen/Montgomery folder (findings from the _0/_1 file names)",
    "covidx": "COVIDx test.txt (findings from the class field)",
}


def _records(table: Path, required: tuple[str, ...], what: str) -> list[dict[str, str]]:
    with open_table(table) as handle:
        reader = csv.DictReader(handle)  # type: ignore[arg-type]
        # Kaggle's SIIM file names its second column " EncodedPixels": names are compared stripped.
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        if missing := [c for c in required if c not in reader.fieldnames]:
            found = ", ".join(reader.fieldnames) or "(none)"
            raise ValueError(f"{table}: not the {what}: columns {missing} not found; columns: {found}")
        return [{k: (v or "").strip() for k, v in record.items() if k} for record in reader]


def _rows_by_image(positive: dict[str, set[str]], path_of: dict[str, Path], source: str) -> Iterator[Row]:
    """A row per image of ``path_of``, with the findings ``positive`` names (else No Finding); a DICOM's
    sex, age, view and patient from its header (:func:`convirt.data.dicom_header.read_dicom_header`):
    these archives keep them nowhere else. A missing or damaged file leaves them empty, and a header
    without a PatientID leaves the image id as the patient."""
    for image_id, path in path_of.items():
        labels = sorted(positive.get(image_id, set())) or [NO_FINDING]
        header = read_dicom_header(path) if path.suffix.lower() in DICOM_SUFFIXES else DicomHeader()
        yield Row(
            key=key_from_path(path.name),
            image_path=str(path),
            text="",
            patient_id=header.patient_id or image_id,
            labels=labels,
            view=header.view,
            source=source,
            sex=header.sex,
            age=header.age,
        )


def read_rsna(table: Path, images: Path) -> Iterator[Row]:
    """RSNA Pneumonia rows (one image per patient)."""
    positive: dict[str, set[str]] = {}
    path_of: dict[str, Path] = {}
    for record in _records(table, ("patientId", "Target"), "RSNA stage_2_train_labels.csv"):
        patient = record["patientId"]
        path_of.setdefault(patient, images / "stage_2_train_images" / f"{patient}.dcm")
        if record["Target"] == "1":
            positive.setdefault(patient, set()).add("Pneumonia")
    return _rows_by_image(positive, path_of, "rsna-pneumonia")


def read_siim(table: Path, images: Path) -> Iterator[Row]:
    """SIIM-ACR Pneumothorax rows."""
    found = {p.stem: p for p in images.rglob("*.dcm")} if images.is_dir() else {}
    positive: dict[str, set[str]] = {}
    path_of: dict[str, Path] = {}
    for record in _records(table, ("ImageId", "EncodedPixels"), "SIIM-ACR train-rle.csv"):
        image = record["ImageId"]
        path_of.setdefault(image, found.get(image, images / f"{image}.dcm"))
        if record["EncodedPixels"] not in ("-1", ""):
            positive.setdefault(image, set()).add("Pneumothorax")
    return _rows_by_image(positive, path_of, "siim-acr-pneumothorax")


VINDR_BOX_COLUMNS = ("image_id", "class_name")  # PhysioNet annotations_*.csv, Kaggle VinBigData train.csv
VINDR_NO_FINDING = "no finding"


def read_vindr(table: Path, images: Path) -> Iterator[Row]:
    """VinDr-CXR rows, from either layout (:func:`read_vindr_image_labels`, :func:`read_vindr_boxes`)."""
    with open_table(table) as handle:
        header = [name.strip() for name in next(csv.reader(handle), [])]  # type: ignore[arg-type]
    if "class_name" in header:
        return read_vindr_boxes(table, images)
    if "class_id" in header or "x_min" in header:
        raise ValueError(
            f"{table}: VinDr box rows without a class_name column (columns: {', '.join(header)}); "
            "the vindr format reads image_labels_*.csv, or box rows with image_id and class_name"
        )
    return read_vindr_image_labels(table, images)


def read_vindr_image_labels(table: Path, images: Path) -> Iterator[Row]:
    """PhysioNet's ``image_labels_*.csv``: every finding column marked 1 by any reader of the image."""
    records = _records(table, ("image_id",), "VinDr-CXR image_labels file")
    findings = [c for c in records[0] if c not in ("image_id", "rad_id")] if records else []
    check_finding_names(findings, table, "VinDr-CXR image_labels (a column per finding)")
    return _vindr_rows(table, images, records, lambda record: {f for f in findings if record.get(f) in ("1", "1.0")})


def read_vindr_boxes(table: Path, images: Path) -> Iterator[Row]:
    """Box rows (``image_id``, ``class_name``, a row per box and reader): positive when any reader boxed it."""
    records = _records(table, VINDR_BOX_COLUMNS, "VinDr-CXR box rows (image_id, class_name)")
    check_finding_names({record["class_name"] for record in records} - {""}, table, "VinDr-CXR box rows (class_name)")
    return _vindr_rows(table, images, records, lambda record: {record["class_name"]} - {""})


def _vindr_rows(
    table: Path, images: Path, records: list[dict[str, str]], marked: Callable[[dict[str, str]], set[str]]
) -> Iterator[Row]:
    """One row per image of ``records`` (a record per reader, or per box and reader): the findings
    ``marked`` in any of its records but "No finding"; the image ``{test,train}/{image_id}.dicom``."""
    split = "test" if "test" in table.name else "train"
    positive: dict[str, set[str]] = {}
    path_of: dict[str, Path] = {}
    for record in records:
        image = record["image_id"]
        path_of.setdefault(image, images / split / f"{image}.dicom")
        found = {finding for finding in marked(record) if finding.lower() != VINDR_NO_FINDING}
        positive.setdefault(image, set()).update(found)
    return _rows_by_image(positive, path_of, "vindr-cxr")


_TB_NAME = re.compile(r"_([01])$")


def read_tb_folder(folder: Path) -> Iterator[Row]:
    """Shenzhen / Montgomery rows from a folder of ``..._0.png`` / ``..._1.png`` files."""
    files = sorted(p for p in folder.rglob("*.png") if _TB_NAME.search(p.stem))
    if not files:
        raise FileNotFoundError(f"no Shenzhen/Montgomery image (NAME_0.png, NAME_1.png) under {folder}")
    for file in files:
        match = _TB_NAME.search(file.stem)
        assert match is not None
        yield Row(
            key=key_from_path(file.name),
            image_path=str(file),
            text="",
            patient_id=file.stem[: match.start()],
            labels=["Tuberculosis"] if match.group(1) == "1" else [NO_FINDING],
            source="shenzhen" if file.name.startswith("CHNCXR") else "montgomery",
        )


def read_covidx(table: Path, images: Path) -> Iterator[Row]:
    """COVIDx rows from its split file (``test.txt``)."""
    classes = {"positive": "COVID-19", "covid-19": "COVID-19", "pneumonia": "Pneumonia"}
    for number, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3:
            raise ValueError(f"{table} line {number}: expected 'patient_id filename class source', got {line!r}")
        patient, filename, label = parts[0], parts[1], parts[2].lower()
        yield Row(
            key=key_from_path(filename),
            image_path=str(images / "test" / filename),
            text="",
            patient_id=f"covidx-{patient}",
            labels=[classes.get(label, NO_FINDING)],
            source=parts[3] if len(parts) > 3 else "covidx",
        )


def read_test_set(kind: str, path: Path, images: Path) -> Iterator[Row]:
    """Rows of one of :data:`TEST_SET_FORMATS` (``path``: its label file; the folder for ``tb``)."""
    if kind == "tb":
        return read_tb_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} label file not found: {path}")
    readers = {"rsna": read_rsna, "siim": read_siim, "vindr": read_vindr, "covidx": read_covidx}
    return readers[kind](path, images)
