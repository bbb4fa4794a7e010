"""Every reader's findings are names of findings, never coordinates, ids or numbers (one check for all)."""

import csv
import gzip
import itertools
import re

import pytest

import convirt.data.schema as schema
from convirt.data.inputs import read_image_rows
from convirt.data.labels import CHEXPERT_FINDINGS
from convirt.data.schema import check_finding_names
from convirt.data.sources import list_sources, read_rows
from convirt.data.writer import write_shards
from tests.conftest import SHARED_DATA, requires_shared_data

REAL_NAMES = [
    *CHEXPERT_FINDINGS,
    "Nodule/Mass",  # VinDr's box class
    "Pleural_Thickening",  # NIH's
    "COVID-19",
    "pleural effusion",  # PadChest's, lower case
    "COPD signs",
    "NSG tube",
    "central venous catheter via subclavian vein",
    "Aorta, Thoracic",  # Open-i's MeSH terms
    "E.Coli",
    "ILD",
]


def _table(path, labels):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "patient_id", "labels"])
        writer.writerows([f"{i}.png", f"p{i}", value] for i, value in enumerate(labels))
    return path


def test_real_finding_names_pass_and_coordinates_ids_and_numbers_do_not(tmp_path):
    check_finding_names(REAL_NAMES, tmp_path / "t.csv", "any layout")
    for wrong in ("12", "0.5", "-1", "x_min", "y2", "class_id", "rad_id", "image_id", "id", "width"):
        with pytest.raises(ValueError, match=re.escape(f"['{wrong}']")):
            check_finding_names(["Cardiomegaly", wrong], tmp_path / "t.csv", "any layout")


@pytest.mark.parametrize("value, wrong", [("12", "['12']"), ("0.5;3", "['0.5', '3']"), ("x_min", "['x_min']")])
def test_a_generic_label_table_of_numbers_or_coordinates_is_refused_naming_file_column_and_values(
    tmp_path, value, wrong
):
    table = _table(tmp_path / "labels.csv", ["Pleural Effusion", "No Finding", value])
    with pytest.raises(ValueError) as refused:
        read_image_rows(table)
    message = str(refused.value)
    assert "\n" not in message and str(table) in message and "row 2" in message
    assert "column labels" in message and f"would report {wrong} as findings" in message
    assert "put finding names in its labels column" in message


def test_a_generic_label_table_of_finding_names_passes(tmp_path):
    table = _table(tmp_path / "labels.csv", ["Pleural Effusion;Nodule/Mass", "No Finding", "COVID-19", ""])
    rows = read_image_rows(table)
    assert [row.labels for row in rows] == [["Pleural Effusion", "Nodule/Mass"], ["No Finding"], ["COVID-19"], []]


def test_an_nih_table_whose_finding_labels_are_numbers_is_refused_by_its_column(tmp_path):
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID\n"
        "00000001_000.png,Cardiomegaly|Effusion,0,1\n"
        "00000002_000.png,3|14,0,2\n"
    )
    with pytest.raises(ValueError, match=r"column Finding Labels.*would report \['14', '3'\] as findings"):
        read_image_rows(table)
    with pytest.raises(ValueError, match="Finding Labels"):
        read_image_rows(table, label_format="nih")


def test_the_check_runs_once_per_new_finding_name_not_once_per_row(tmp_path, monkeypatch):
    table = _table(tmp_path / "labels.csv", ["Cardiomegaly;Edema", "No Finding", "Edema;Cardiomegaly"] * 300)
    seen = []
    check = schema.check_finding_names
    monkeypatch.setattr(
        schema, "check_finding_names", lambda names, *args: seen.append(set(names)) or check(names, *args)
    )
    assert len(read_image_rows(table)) == 900
    assert seen == [{"Cardiomegaly", "Edema"}, {"No Finding"}]


def test_shard_sources_refuse_numbers_in_the_labels_column_they_were_told_to_read(tmp_path):
    table = tmp_path / "pairs.csv"
    table.write_text("image,text,score\na.png,clear lungs,0.5\nb.png,effusion,0.9\n")
    rows = read_rows("csv", str(table), columns={"labels": "score"})  # the file and its columns are checked here
    with pytest.raises(ValueError, match=r"column 'score'.*\['0.5'\].*--column labels=NAME"):
        list(rows)
    with pytest.raises(ValueError, match=r"\['0.5'\]"):
        write_shards(
            lambda: read_rows("csv", str(table), columns={"labels": "score"}), tmp_path / "out", progress=False
        )
    assert not list((tmp_path / "out").glob("*.tar"))
    table.write_text("image,text,labels\na.png,clear lungs,12;340\n")
    with pytest.raises(ValueError, match=r"column 'labels'.*\['12', '340'\]"):
        list(read_rows("csv", str(table)))


def test_an_archive_reader_goes_through_the_same_check(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text(
        "ImageID,ImageDir,PatientID,StudyID,Report,Labels\n"
        "0.png,0,p0,s0,cardiomegalia .,['cardiomegaly']\n"
        "1.png,0,p1,s1,x,\"['12', 'x_min']\"\n"
    )
    with pytest.raises(ValueError, match=r"padchest source \(findings from column Labels\).*\['12', 'x_min'\]"):
        list(read_rows("padchest", str(table)))
    assert len(list(itertools.islice(read_rows("padchest", str(table)), 1))) == 1  # lazily: row by row


def test_every_shard_source_names_where_its_findings_come_from():
    from convirt.data.sources import _READERS

    assert sorted(_READERS) == list_sources() and all(reader.findings for reader in _READERS.values())


@pytest.mark.shared_data
@requires_shared_data("metadata-samples", "Data_Entry_2017_v2020.csv.gz")
def test_the_real_label_files_pass_the_check(tmp_path):
    table = tmp_path / "Data_Entry_2017_v2020.csv"
    with gzip.open(SHARED_DATA / "metadata-samples" / "Data_Entry_2017_v2020.csv.gz", "rb") as source:
        table.write_bytes(source.read())
    assert len(read_image_rows(table, label_format="nih")) == 112_120
    for parts, read in (
        (("cxr-eval", "labels.csv"), lambda path: read_image_rows(path)),
        (("covid-pairs", "pairs.csv"), lambda path: list(read_rows("csv", str(path)))),
        (("metadata-samples", "padchest_labels_first400.csv"), lambda path: list(read_rows("padchest", str(path)))),
        (("openi-reports", "NLMCXR_reports.tgz"), lambda path: list(read_rows("openi", str(path)))),
    ):
        path = SHARED_DATA.joinpath(*parts)
        if path.exists():
            assert read(path), path
