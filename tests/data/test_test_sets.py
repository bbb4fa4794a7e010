"""Public test sets' label files, in their archives' own layouts, and split files that name test images."""

import gzip
import shutil
import warnings

import numpy as np
import pytest

from convirt.data.dicom_header import DicomHeader, dicom_demographics, read_dicom_header
from convirt.data.inputs import read_image_rows, read_split_file
from tests.conftest import SHARED_DATA, requires_shared_data, write_dicom


def _labels(rows):
    return {row.key: row.labels for row in rows}


def test_rsna_rows_are_one_per_patient_positive_when_any_box_is(tmp_path):
    table = tmp_path / "stage_2_train_labels.csv"
    table.write_text(
        "patientId,x,y,width,height,Target\naaa,,,,,0\nbbb,264.0,152.0,213.0,379.0,1\nbbb,562.0,152.0,256.0,453.0,1\n"
    )
    rows = read_image_rows(table, label_format="rsna")
    assert _labels(rows) == {"aaa": ["No Finding"], "bbb": ["Pneumonia"]}
    assert rows[1].image_path == str(tmp_path / "stage_2_train_images" / "bbb.dcm")


def test_siim_reads_kaggles_spaced_column_and_finds_nested_dicoms(tmp_path):
    table = tmp_path / "train-rle.csv"
    table.write_text("ImageId, EncodedPixels\n1.2.3, -1\n1.2.4, 175349 7 1013 12\n1.2.4, 9 3\n")
    nested = tmp_path / "dicom-images-train" / "study" / "series"
    nested.mkdir(parents=True)
    (nested / "1.2.4.dcm").write_bytes(b"")
    rows = read_image_rows(table, label_format="siim")
    assert _labels(rows) == {"1_2_3": ["No Finding"], "1_2_4": ["Pneumothorax"]}
    assert rows[1].image_path == str(nested / "1.2.4.dcm")


def test_vindr_marks_every_finding_column_set_to_one(tmp_path):
    table = tmp_path / "image_labels_test.csv"
    table.write_text(
        "image_id,Aortic enlargement,Pleural effusion,Tuberculosis,No finding\nimg1,0,0,0,1\nimg2,1,1,0,0\n"
    )
    rows = read_image_rows(table, label_format="vindr")
    assert _labels(rows) == {"img1": ["No Finding"], "img2": ["Aortic enlargement", "Pleural effusion"]}
    assert rows[0].image_path == str(tmp_path / "test" / "img1.dicom")


KAGGLE_BOXES = """image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max
a1,No finding,14,R11,,,,
a1,No finding,14,R7,,,,
a1,No finding,14,R2,,,,
b2,Cardiomegaly,3,R8,691.0,1375.0,1653.0,1831.0
b2,Cardiomegaly,3,R8,700.0,1380.0,1650.0,1830.0
b2,Aortic enlargement,0,R9,1264.0,743.0,1611.0,1019.0
b2,No finding,14,R10,,,,
c3,Pleural effusion,10,R10,250.0,1400.0,700.0,1900.0
d4,No finding,14,R8,,,,
"""


def test_vindr_box_rows_from_kaggle_and_physionet_are_positive_when_any_reader_boxed_the_finding(tmp_path):
    expected = {
        "a1": ["No Finding"],
        "b2": ["Aortic enlargement", "Cardiomegaly"],  # two boxes of one reader: one positive image
        "c3": ["Pleural effusion"],
        "d4": ["No Finding"],
    }
    kaggle = tmp_path / "train.csv"  # VinBigData's layout: image_id, class_name, class_id, rad_id, box
    kaggle.write_text(KAGGLE_BOXES)
    rows = read_image_rows(kaggle, label_format="vindr")
    assert _labels(rows) == expected and rows[0].image_path == str(tmp_path / "train" / "a1.dicom")
    physionet = tmp_path / "annotations_train.csv"  # PhysioNet's: image_id, rad_id, class_name, box
    lines = [line.split(",") for line in KAGGLE_BOXES.strip().splitlines()]
    physionet.write_text("\n".join(",".join([f[0], f[3], f[1], *f[4:]]) for f in lines) + "\n")
    assert _labels(read_image_rows(physionet, label_format="vindr")) == expected


def test_vindr_image_labels_of_several_readers_and_files_it_cannot_read_are_refused_by_name(tmp_path):
    table = tmp_path / "image_labels_train.csv"
    table.write_text(
        "image_id,rad_id,Aortic enlargement,Cardiomegaly,No finding\n"
        "a1,R1,0,0,1\na1,R2,0,1,0\na1,R3,0,0,1\nb2,R1,0,0,1\n"
    )
    assert _labels(read_image_rows(table, label_format="vindr")) == {"a1": ["Cardiomegaly"], "b2": ["No Finding"]}
    no_names = tmp_path / "boxes.csv"
    no_names.write_text("image_id,class_id,rad_id,x_min,y_min,x_max,y_max\na1,14,R1,,,,\n")
    with pytest.raises(ValueError, match="box rows without a class_name column"):
        read_image_rows(no_names, label_format="vindr")
    numbered = tmp_path / "numbered.csv"
    numbered.write_text("image_id,0,1,width\na1,1,0,2048\n")
    with pytest.raises(ValueError, match=r"would report \['0', '1', 'width'\] as findings"):
        read_image_rows(numbered, label_format="vindr")


def _dicom(path, syntax=None, pixel_data=None, shape=(8, 8), **header):
    """A small DICOM at ``path`` whose header holds ``header`` (keywords: PatientSex, PatientAge, ViewPosition)."""
    import pydicom

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = None if pixel_data is not None else np.arange(shape[0] * shape[1]).reshape(shape) % 4096
    write_dicom(path, pixels, syntax=syntax, pixel_data=pixel_data, shape=shape)
    if header:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():  # values as the archives write them: RSNA's age "51" is no DICOM AS
            warnings.simplefilter("ignore")
            for keyword, value in header.items():
                setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return path


def _demographics(rows):
    return {row.key: (row.sex, row.age, row.view) for row in rows}


def test_rsna_siim_and_vindr_rows_carry_sex_age_and_view_from_their_dicom_headers(tmp_path):
    rsna = tmp_path / "rsna"
    table = rsna / "stage_2_train_labels.csv"
    _dicom(rsna / "stage_2_train_images" / "aaa.dcm", PatientSex="F", PatientAge="063Y", ViewPosition="PA")
    _dicom(rsna / "stage_2_train_images" / "bbb.dcm", PatientSex="M", PatientAge="51", ViewPosition="AP")
    table.write_text("patientId,x,y,width,height,Target\naaa,,,,,0\nbbb,264.0,152.0,213.0,379.0,1\n")
    rows = read_image_rows(table, label_format="rsna")
    assert _demographics(rows) == {"aaa": ("F", "063Y", "PA"), "bbb": ("M", "51", "AP")}
    assert {k: rows[0].metadata()[k] for k in ("sex", "age", "view")} == {"sex": "F", "age": "063Y", "view": "PA"}

    siim = tmp_path / "siim"
    (siim / "train-rle.csv").parent.mkdir()
    (siim / "train-rle.csv").write_text("ImageId, EncodedPixels\n1.2.4, 175349 7 1013 12\n")
    _dicom(siim / "dicom-images-train" / "study" / "series" / "1.2.4.dcm", PatientSex="F", PatientAge="38")
    rows = read_image_rows(siim / "train-rle.csv", label_format="siim")
    assert _demographics(rows) == {"1_2_4": ("F", "38", "")}  # no ViewPosition in this header

    vindr = tmp_path / "vindr"
    (vindr / "image_labels_test.csv").parent.mkdir()
    (vindr / "image_labels_test.csv").write_text("image_id,Cardiomegaly,No finding\nimg1,1,0\n")
    _dicom(vindr / "test" / "img1.dicom", PatientSex=" M", PatientAge="045Y", ViewPosition="PA")
    rows = read_image_rows(vindr / "image_labels_test.csv", label_format="vindr")
    assert _demographics(rows) == {"img1": ("M", "045Y", "PA")}
    (vindr / "train.csv").write_text(KAGGLE_BOXES)  # the box layout, the train/ folder
    _dicom(vindr / "train" / "b2.dicom", PatientSex="F", PatientAge="070Y", ViewPosition="AP")
    rows = read_image_rows(vindr / "train.csv", label_format="vindr")
    assert _demographics(rows)["b2"] == ("F", "070Y", "AP")
    assert _demographics(rows)["a1"] == ("", "", "")  # its image is not there


def test_missing_damaged_and_tagless_dicoms_leave_sex_age_and_view_empty(tmp_path):
    images = tmp_path / "stage_2_train_images"
    _dicom(images / "tagless.dcm")
    _dicom(images / "blank.dcm", PatientSex="", PatientAge="", ViewPosition="")
    _dicom(images / "long.dcm", PatientSex="F", PatientAge="063Y", ViewPosition="POSTERO-ANTERIOR-UPRIGHT")
    (images / "garbage.dcm").write_bytes(b"\x00\x01not a dicom\xff")
    whole = _dicom(images / "whole.dcm", PatientSex="F", PatientAge="063Y", ViewPosition="PA").read_bytes()
    (images / "truncated.dcm").write_bytes(whole[:150])  # the preamble, DICM and part of the meta group
    (images / "folder.dcm").mkdir()
    names = ["missing", "tagless", "blank", "long", "garbage", "truncated", "folder", "whole"]
    table = tmp_path / "stage_2_train_labels.csv"
    table.write_text("patientId,Target\n" + "".join(f"{name},0\n" for name in names))
    found = _demographics(read_image_rows(table, label_format="rsna"))
    assert found == {
        **{name: ("", "", "") for name in names[:-1]},
        "long": ("F", "063Y", ""),  # longer than a CS value may be: damage, not a view
        "whole": ("F", "063Y", "PA"),
    }
    assert "sex" not in read_image_rows(table, label_format="rsna")[0].metadata()


def test_images_of_one_patient_share_the_patient_id_of_their_dicom_headers(tmp_path, monkeypatch):
    import pydicom

    images = tmp_path / "stage_2_train_images"
    _dicom(images / "a.dcm", PatientID=" P-17 ", PatientSex="F")
    _dicom(images / "b.dcm", PatientID="P-17", ViewPosition="AP")
    _dicom(images / "c.dcm", PatientID="P-18")
    _dicom(images / "blank.dcm", PatientID="  ")
    _dicom(images / "long.dcm", PatientID="P" * 65)  # longer than a LO value may be: damage
    table = tmp_path / "stage_2_train_labels.csv"
    table.write_text("patientId,Target\n" + "".join(f"{name},0\n" for name in ("a", "b", "c", "blank", "long", "gone")))
    reads = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *args, **kwargs: reads.append(args) or real(*args, **kwargs))
    rows = read_image_rows(table, label_format="rsna")
    assert {row.key: row.patient_id for row in rows} == {
        "a": "P-17",
        "b": "P-17",
        "c": "P-18",
        "blank": "blank",  # no PatientID: the image id, as before
        "long": "long",
        "gone": "gone",  # no image
    }
    assert _demographics(rows)["a"] == ("F", "", "") and _demographics(rows)["b"] == ("", "", "AP")
    assert len(reads) == 5  # one header read an image, the patient with its sex, age and view
    assert read_dicom_header(images / "a.dcm") == DicomHeader(sex="F", patient_id="P-17")


def test_a_deflated_header_is_read_within_the_image_readers_inflation_limit(tmp_path, monkeypatch):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    small = _dicom(tmp_path / "small.dcm", syntax=DeflatedExplicitVRLittleEndian, PatientSex="M", ViewPosition="AP")
    assert dicom_demographics(small) == ("M", "", "AP")
    bomb = _dicom(
        tmp_path / "bomb.dcm", syntax=DeflatedExplicitVRLittleEndian, pixel_data=bytes(20_000_000), shape=(2_000, 2_000)
    )
    assert bomb.stat().st_size < 100_000

    def never(*args, **kwargs):
        raise AssertionError("the deflated file was inflated before its size was known")

    monkeypatch.setattr(pydicom, "dcmread", never)
    assert dicom_demographics(bomb, max_pixels=1_000) == ("", "", "")  # a limit of 16 MiB inflated


def test_shenzhen_and_montgomery_labels_come_from_the_file_names(tmp_path):
    folder = tmp_path / "CXR_png"
    folder.mkdir()
    for name in ("CHNCXR_0001_0.png", "CHNCXR_0327_1.png", "MCUCXR_0104_1.png", "notes.png"):
        (folder / name).write_bytes(b"")
    rows = read_image_rows(folder, label_format="tb")
    assert _labels(rows) == {
        "CHNCXR_0001_0": ["No Finding"],
        "CHNCXR_0327_1": ["Tuberculosis"],
        "MCUCXR_0104_1": ["Tuberculosis"],
    }
    assert {row.source for row in rows} == {"shenzhen", "montgomery"}


def test_covidx_split_file_is_its_label_table(tmp_path):
    table = tmp_path / "test.txt"
    table.write_text("419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive rsna\n8 ab.png negative sirm\n")
    rows = read_image_rows(table, label_format="covidx")
    assert [row.labels for row in rows] == [["COVID-19"], ["No Finding"]]
    assert rows[0].image_path == str(tmp_path / "test" / "MIDRC-RICORD-1C-419639-003251-46647-0.png")
    table.write_text("only-two fields\n")
    with pytest.raises(ValueError, match="line 1: expected 'patient_id filename class source'"):
        read_image_rows(table, label_format="covidx")


@requires_shared_data("metadata-samples", "Data_Entry_2017_v2020.csv.gz")
def test_the_official_nih_table_filtered_by_a_test_list(tmp_path):
    table = tmp_path / "Data_Entry_2017_v2020.csv"
    with gzip.open(SHARED_DATA / "metadata-samples" / "Data_Entry_2017_v2020.csv.gz", "rb") as source:
        with open(table, "wb") as target:
            shutil.copyfileobj(source, target)
    listed = tmp_path / "test_list.txt"
    listed.write_text("00000003_000.png\n00000003_001.png\n\n# a comment\n00030805_000.png\n")
    assert read_split_file(listed) == {"00000003_000.png", "00000003_001.png", "00030805_000.png"}
    rows = read_image_rows(table, label_format="nih", split_file=listed)
    assert sorted(row.key for row in rows) == ["00000003_000", "00000003_001", "00030805_000"]
    listed.write_text("nothing.png\n")
    with pytest.raises(ValueError, match="no image of .* is listed in"):
        read_image_rows(table, label_format="nih", split_file=listed)
    listed.write_text("no images here\n")
    with pytest.raises(ValueError, match="names no image file"):
        read_split_file(listed)
