"""Label tables in archive formats: CheXpert (uncertainty policies), NIH Data_Entry_2017, generic CSV."""

import collections
import shutil

import pytest

from convirt.data.labels import CHEXPERT_FINDINGS, detect_format, read_label_rows
from tests.conftest import SHARED_DATA, requires_shared_data

NIH_TABLE = SHARED_DATA / "metadata-samples" / "Data_Entry_2017_v2020.csv.gz"


def _chexpert(tmp_path):
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
    values = {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"}
    row = [
        "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
        "Male",
        "73",
        "Frontal",
        "AP",
        *[values.get(name, "") for name in CHEXPERT_FINDINGS],
    ]
    normal = [
        "CheXpert-v1.0-small/valid/patient64542/study2/view1_frontal.jpg",
        "Female",
        "70",
        "Frontal",
        "PA",
        *["1.0" if name == "No Finding" else "" for name in CHEXPERT_FINDINGS],
    ]
    path = tmp_path / "valid.csv"
    path.write_text("\n".join(",".join(r) for r in (header, row, normal)) + "\n")
    return path


def test_chexpert_uncertainty_policies(tmp_path):
    table = _chexpert(tmp_path)
    assert detect_format(table) == "chexpert"
    zeros = list(read_label_rows(table, uncertain="zeros", images=str(tmp_path / "root")))
    assert zeros[0].labels == ["Cardiomegaly"] and zeros[0].patient_id == "patient64541"
    assert zeros[0].study_id == "patient64541-study1" and zeros[0].view == "AP"
    assert zeros[0].image_path == str(
        tmp_path / "root" / "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"
    )
    assert zeros[1].labels == ["No Finding"]
    assert (zeros[0].metadata()["sex"], zeros[0].metadata()["age"]) == ("Male", "73")  # for subgroups
    assert list(read_label_rows(table, uncertain="ones"))[0].labels == ["Cardiomegaly", "Edema"]
    ignored = list(read_label_rows(table, uncertain="ignore"))[0]
    assert ignored.labels == ["Cardiomegaly"] and ignored.uncertain == ["Edema"]
    assert ignored.metadata()["uncertain"] == ["Edema"]


def test_bad_tables_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="label table not found"):
        list(read_label_rows(tmp_path / "none.csv"))
    table = _chexpert(tmp_path)
    with pytest.raises(ValueError, match="unknown uncertainty policy 'maybe'; known: zeros, ones, ignore"):
        read_label_rows(table, uncertain="maybe")
    with pytest.raises(ValueError, match="not a nih label table: columns \\['Image Index'"):
        read_label_rows(table, format="nih")


def test_nih_rows_find_images_anywhere_under_the_folder(tmp_path, phantom_csv):
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
        "00000001_000.png,Cardiomegaly|Emphysema,0,1,57,M,PA\n00000002_000.png,No Finding,0,2,80,M,AP\n"
    )
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    shutil.copy(next((phantom_csv.parent / "images").glob("*.png")), tmp_path / "images_001/images/00000001_000.png")
    rows = list(read_label_rows(table))
    assert rows[0].labels == ["Cardiomegaly", "Emphysema"] and rows[0].patient_id == "nih-1"
    assert rows[0].image_path == str(tmp_path / "images_001/images/00000001_000.png")
    assert rows[1].labels == ["No Finding"] and rows[1].view == "AP"
    assert {k: rows[0].metadata()[k] for k in ("sex", "age")} == {"sex": "M", "age": "57"}


def test_a_generic_table_carries_sex_and_age_and_rows_without_them_carry_nothing(tmp_path):
    """cxr-eval's labels.csv layout: image, labels, patient_id, ..., age, sex."""
    table = tmp_path / "labels.csv"
    table.write_text("image,labels,patient_id,view,age,sex\na.png,No Finding,p1,PA,42,M\nb.png,Nodule,p2,AP,,\n")
    rows = list(read_label_rows(table))
    assert (rows[0].metadata()["sex"], rows[0].metadata()["age"]) == ("M", "42")
    assert "sex" not in rows[1].metadata() and "age" not in rows[1].metadata()


@requires_shared_data("metadata-samples", "Data_Entry_2017_v2020.csv.gz")
@pytest.mark.shared_data
def test_the_real_nih_label_file():
    rows = list(read_label_rows(NIH_TABLE))
    counts = collections.Counter(label for row in rows for label in row.labels)
    assert len(rows) == 112_120 and len({row.patient_id for row in rows}) == 30_805
    assert counts["No Finding"] == 60_361 and counts["Pneumonia"] == 1_431  # the published label counts
    assert len(counts) == 15
