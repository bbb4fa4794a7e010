"""The archive readers on tiny trees in each archive's official layout (and PadChest's real rows)."""

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt.data.sources import list_sources, read_rows
from convirt.data.sources.covid_collection import finding_labels
from convirt.data.sources.padchest import parse_padchest_labels
from convirt.data.writer import write_shards
from tests.conftest import SHARED_DATA, requires_shared_data


def _image(path: Path, seed: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 4095, (40, 50)).astype(np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(path)


def _write_csv(path: Path, header: list[str], rows: list[list[object]], gz: bool = False) -> None:
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_every_source_is_listed():
    assert list_sources() == [
        "chexpert-plus",
        "covid-collection",
        "csv",
        "jsonl",
        "mimic-cxr",
        "openi",
        "padchest",
        "phantom",
    ]


def test_mimic_cxr_tree_with_official_splits_and_chexpert_labels(tmp_path):
    studies = [
        ("10000032", "50414267", ["d1", "d2"], "train"),
        ("10000764", "57375967", ["d3"], "validate"),
        ("19999987", "58971208", ["d4"], "test"),
    ]
    split_rows, meta_rows = [], []
    for n, (subject, study, dicoms, split) in enumerate(studies):
        folder = tmp_path / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        for i, dicom in enumerate(dicoms):
            _image(folder / f"{dicom}.jpg", n * 10 + i)
            split_rows.append([dicom, study, subject, split])
            meta_rows.append([dicom, subject, study, "PA" if i == 0 else "LATERAL"])
        (folder.parent / f"s{study}.txt").write_text(
            f"                                 FINAL REPORT\n INDICATION:  ___M with cough\n\n"
            f" FINDINGS:  Finding {n}.\n\n IMPRESSION:  Impression {n}.\n"
        )
    (tmp_path / "files/p19/p19999987/s58971208.txt").unlink()  # a study without its report
    _write_csv(
        tmp_path / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz=True
    )
    _write_csv(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz",
        ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        meta_rows,
        gz=True,
    )
    from convirt.data.labels import CHEXPERT_FINDINGS

    labels = [
        [
            "10000032",
            "50414267",
            *["1.0" if f == "Edema" else "-1.0" if f == "Cardiomegaly" else "" for f in CHEXPERT_FINDINGS],
        ],
        ["10000764", "57375967", *["1.0" if f == "No Finding" else "" for f in CHEXPERT_FINDINGS]],
    ]
    _write_csv(
        tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *CHEXPERT_FINDINGS], labels, gz=True
    )
    rows = list(read_rows("mimic-cxr", str(tmp_path), uncertain="ignore"))
    assert [r.key for r in rows] == ["mimic-d1", "mimic-d2", "mimic-d3", "mimic-d4"]
    assert [r.split for r in rows] == ["train", "train", "val", "test"]
    assert rows[0].labels == ["Edema"] and rows[0].uncertain == ["Cardiomegaly"] and rows[2].labels == ["No Finding"]
    assert rows[0].view == "PA" and rows[1].view == "LATERAL" and rows[0].patient_id == rows[1].patient_id
    assert rows[3].problem == "missing_report"
    manifest = write_shards(
        lambda: read_rows("mimic-cxr", str(tmp_path)), tmp_path / "out", image_size=32, progress=False
    )
    # Official splits are kept whatever the patient hash says.
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == {"train": 2, "val": 1, "test": 0}
    assert manifest["dropped"] == {"missing_report": 1}
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-split.csv"):
        read_rows("mimic-cxr", str(tmp_path / "files"))


def test_chexpert_plus_csv_with_section_columns(tmp_path):
    _image(tmp_path / "train/patient00001/study1/view1_frontal.png", 1)  # the PNG release
    _image(tmp_path / "valid/patient00002/study1/view1_frontal.jpg", 2)
    header = [
        "path_to_image",
        "frontal_lateral",
        "ap_pa",
        "deid_patient_id",
        "report",
        "section_findings",
        "section_impression",
        "section_clinical_history",
        "split",
    ]
    _write_csv(
        tmp_path / "df_chexpert_plus_240401.csv",
        header,
        [
            [
                "train/patient00001/study1/view1_frontal.jpg",
                "Frontal",
                "PA",
                "patient00001",
                "FINDINGS: clear. IMPRESSION: normal.",
                "Clear lungs.",
                "Normal chest.",
                "Cough.",
                "train",
            ],
            [
                "valid/patient00002/study1/view1_frontal.jpg",
                "Frontal",
                "AP",
                "patient00002",
                "HISTORY: fever.",
                "",
                "",
                "Fever.",
                "valid",
            ],
        ],
    )
    rows = list(read_rows("chexpert-plus", str(tmp_path / "df_chexpert_plus_240401.csv")))
    assert rows[0].sections == {"findings": "Clear lungs.", "impression": "Normal chest.", "history": "Cough."}
    assert rows[0].image_path.endswith("view1_frontal.png") and rows[0].split == "train" and rows[1].split == "val"
    manifest = write_shards(rows, tmp_path / "out", image_size=32, progress=False)
    assert manifest["samples"] == 1 and manifest["dropped"] == {"no_findings_or_impression": 1}
    longest = write_shards(rows, tmp_path / "longest", image_size=32, text="longest", progress=False)
    assert longest["samples"] == 2
    with pytest.raises(ValueError, match="not the PadChest label CSV: columns .*; columns: path_to_image"):
        read_rows("padchest", str(tmp_path / "df_chexpert_plus_240401.csv"))
    _write_csv(tmp_path / "other.csv", ["image", "text"], [["a.png", "x"]])
    with pytest.raises(ValueError, match="not the CheXpert Plus CSV"):
        read_rows("chexpert-plus", str(tmp_path / "other.csv"))


def test_padchest_labels():
    assert parse_padchest_labels("['normal']") == ["No Finding"]
    assert parse_padchest_labels("['pleural effusion', ' cardiomegaly', 'pleural effusion']") == [
        "pleural effusion",
        "cardiomegaly",
    ]
    assert parse_padchest_labels("") == [] and parse_padchest_labels("nan") == []
    # Not a list: an error (the reader marks the row unparseable_labels), never "no labels", i.e. a normal study.
    for broken in ("['pleural effusion'", "pleural effusion", "{'a': 1}"):
        with pytest.raises(ValueError, match="not a list literal"):
            parse_padchest_labels(broken)


def test_a_padchest_row_with_unparseable_labels_is_dropped_not_read_as_normal(tmp_path):
    for i in range(2):
        _image(tmp_path / "0" / f"{i}.png", i, mode="I;16")
    _write_csv(
        tmp_path / "labels.csv",
        ["ImageID", "ImageDir", "PatientID", "StudyID", "Report", "Labels"],
        [
            ["0.png", "0", "p0", "s0", "cardiomegalia .", "['cardiomegaly']"],
            ["1.png", "0", "p1", "s1", "sin hallazgos .", "['normal'"],  # cut short
        ],
    )
    manifest = write_shards(
        read_rows("padchest", str(tmp_path / "labels.csv")),
        tmp_path / "out",
        image_size=32,
        val_fraction=0,
        test_fraction=0,
        progress=False,
    )
    assert manifest["samples"] == 1 and manifest["dropped"] == {"unparseable_labels": 1}


@requires_shared_data("metadata-samples", "padchest_labels_first400.csv")
@pytest.mark.shared_data
def test_padchest_reader_on_the_real_rows_with_faked_images(tmp_path):
    table = SHARED_DATA / "metadata-samples" / "padchest_labels_first400.csv"
    rows = list(read_rows("padchest", str(table), images=str(tmp_path)))
    assert len(rows) == 388 and len({r.patient_id for r in rows}) == 237
    assert rows[0].labels == ["No Finding"] and rows[0].view == "PA"
    assert rows[1].labels == [
        "pulmonary fibrosis",
        "chronic changes",
        "kyphosis",
        "pseudonodule",
        "ground glass pattern",
    ]
    for i, row in enumerate(rows[:60]):  # PadChest's images are 16-bit PNGs
        _image(Path(row.image_path), i, mode="I;16")
    manifest = write_shards(rows[:60], tmp_path / "out", image_size=32, progress=False)
    assert manifest["samples"] == 60 and manifest["dropped"] == {}
    assert sum(manifest["splits"][s]["labels"].get("No Finding", 0) for s in manifest["splits"]) == sum(
        "No Finding" in r.labels for r in rows[:60]
    )


def test_covid_collection_metadata(tmp_path):
    for i in range(3):
        _image(tmp_path / "images" / f"{i}.jpg", i)
    header = [
        "patientid",
        "offset",
        "finding",
        "view",
        "modality",
        "folder",
        "filename",
        "clinical_notes",
        "other_notes",
    ]
    _write_csv(
        tmp_path / "metadata.csv",
        header,
        [
            ["1", "0", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "images", "0.jpg", "Fever and cough.", ""],
            ["1", "3", "Pneumonia/Viral/COVID-19", "AP Supine", "X-ray", "images", "1.jpg", "Worse.", "ICU."],
            ["2", "0", "No Finding", "PA", "CT", "images", "2.jpg", "CT slice.", ""],
        ],
    )
    rows = list(read_rows("covid-collection", str(tmp_path)))
    assert rows[0].labels == ["Pneumonia", "COVID-19"] and rows[1].text == "Worse. ICU."
    assert rows[2].problem == "not_xray" and rows[0].patient_id == rows[1].patient_id == "covid-1"
    manifest = write_shards(rows, tmp_path / "out", image_size=32, progress=False)
    assert manifest["samples"] == 2 and manifest["dropped"] == {"not_xray": 1}
    assert finding_labels("Pneumonia/Bacterial/Streptococcus") == ["Pneumonia", "Streptococcus"]


def test_phantom_source_reads_a_phantom_folder(phantom_csv, tmp_path):
    rows = list(read_rows("phantom", str(phantom_csv.parent)))
    assert len(rows) == 96 and {r.source for r in rows} == {"phantom"}
    with pytest.raises(FileNotFoundError, match="convirt phantom --output"):
        read_rows("phantom", str(tmp_path))
