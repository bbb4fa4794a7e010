"""Archive readers on tiny trees in each official layout, and on the real files when present."""

import json
import tarfile
from pathlib import Path

import pytest

from convirt.data.schema import MANIFEST
from convirt.data.shards import read_manifest, require_images
from convirt.data.sources import read_rows
from convirt.data.writer import write_shards
from tests.conftest import SHARED_DATA, requires_shared_data, shaded_image

OPENI_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="INDICATION">XXXX-year-old with cough</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH><major>{mesh}</major></MeSH>
<parentImage id="CXR{n}_1_IM-000{n}-1001"><caption>Xray Chest PA and Lateral</caption></parentImage>
<parentImage id="CXR{n}_1_IM-000{n}-2001"><caption>Xray Chest PA and Lateral</caption></parentImage>
</eCitation>"""


def _openi(tmp_path: Path, images: bool = False) -> tuple[Path, Path]:
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    reports = [
        ("Heart size normal. Lungs clear.", "Normal chest x-XXXX.", "normal"),
        ("Right lower lobe opacity.", "Pneumonia.", "Pneumonia/lower lobe/right"),
        ("", "", "normal"),
    ]
    for n, (findings, impression, mesh) in enumerate(reports, 1):
        (folder / f"{n}.xml").write_text(OPENI_XML.format(n=n, findings=findings, impression=impression, mesh=mesh))
    (folder / "9.xml").write_bytes(b'<eCitation><uId id="CXR9"/>\xff\xfe broken')
    archive = tmp_path / "NLMCXR_reports.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="ecgen-radiology")
    png = tmp_path / "png"
    if images:
        png.mkdir()
        for n in range(1, 4):
            for view, shade in (("1001", 60), ("2001", 120)):
                shaded_image((64, 48), shade + n).save(png / f"CXR{n}_1_IM-000{n}-{view}.png")
    return archive, png


def test_openi_reports_without_images_become_text_only_samples(tmp_path):
    archive, _ = _openi(tmp_path)
    rows = list(read_rows("openi", str(archive)))
    assert [r.key for r in rows] == ["openi-CXR1", "openi-CXR2", "openi-CXR3", "openi-9"]
    assert rows[0].sections == {
        "comparison": "None.",
        "indication": "-year-old with cough",
        "findings": "Heart size normal. Lungs clear.",
        "impression": "Normal chest x-ray.",
    }
    assert rows[1].labels == ["Pneumonia"] and rows[0].labels == ["No Finding"]
    assert rows[3].problem == "unreadable_report"
    # The folder the archive unpacks to reads the same.
    assert [r.key for r in read_rows("openi", str(tmp_path / "ecgen-radiology"))] == [r.key for r in rows]
    manifest = write_shards(
        lambda: read_rows("openi", str(archive)),
        tmp_path / "out",
        text_only=True,
        source="openi",
        val_fraction=0,
        test_fraction=0,
        progress=False,
    )
    assert manifest["text_only"] and manifest["samples"] == 2
    assert manifest["dropped"] == {"no_findings_or_impression": 1, "unreadable_report": 1}
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        names = tar.getnames()
        assert names == ["openi-CXR1.json", "openi-CXR1.txt", "openi-CXR2.json", "openi-CXR2.txt"]
        assert tar.extractfile("openi-CXR1.txt").read() == b"Heart size normal. Lungs clear. Normal chest x-ray."
        meta = json.loads(tar.extractfile("openi-CXR1.json").read())
        assert meta["sections"]["indication"] == "-year-old with cough"
    with pytest.raises(ValueError, match="text-only samples .*--images"):
        require_images(tmp_path / "out")


def test_openi_with_the_png_folder_gives_one_sample_per_radiograph(tmp_path):
    archive, png = _openi(tmp_path, images=True)
    rows = list(read_rows("openi", str(archive), images=str(png)))
    assert [r.key for r in rows[:2]] == ["openi-CXR1_1_IM-0001-1001", "openi-CXR1_1_IM-0001-2001"]
    assert rows[0].patient_id == rows[1].patient_id == "CXR1"
    manifest = write_shards(rows, tmp_path / "out", image_size=32, progress=False)
    assert not manifest["text_only"] and manifest["samples"] == 4
    with pytest.raises(ValueError, match="does not take --images"):
        read_rows("csv", str(archive), images=str(png))


def test_jsonl_reader_with_renamed_columns_and_non_utf8_text(tmp_path):
    shaded_image((40, 40), 50).save(tmp_path / "a.png")
    shaded_image((40, 40), 90).save(tmp_path / "b.png")
    lines = [
        json.dumps(
            {"file": "a.png", "report": "FINDINGS: clear.", "labels": ["Edema", "Effusion"], "patient_id": "p1"}
        ).encode(),
        b'{"file": "b.png", "report": "bad \xff byte", "patient_id": "p2"}',
    ]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = list(read_rows("jsonl", str(path), columns={"image": "file", "text": "report"}))
    assert rows[0].labels == ["Edema", "Effusion"] and rows[0].image_path == str(tmp_path / "a.png")
    assert rows[1].problem == "non_utf8_text"
    with pytest.raises(ValueError, match="column 'image' not found; columns: file, report"):
        read_rows("jsonl", str(path))
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "text": "x"}\n[1, 2]\n')
    assert [row.problem for row in read_rows("jsonl", str(tmp_path / "bad.jsonl"))] == ["", "malformed_row"]
    (tmp_path / "none.jsonl").write_text('{"file": "a.png", "text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="column 'image' not found; columns: file, text"):
        read_rows("jsonl", str(tmp_path / "none.jsonl"))


def test_a_malformed_jsonl_line_is_counted_and_the_rest_converted(tmp_path, capsys):
    # Bad JSON (first, before any good line), not an object, an object without the report: each
    # is dropped as malformed_row like a bad CSV line, and a rerun of the command completes.
    from convirt.cli.main import main

    good = [json.dumps({"image": f"{name}.png", "text": f"FINDINGS: clear {name}."}) for name in "abcd"]
    for shade, name in enumerate("abcd"):
        shaded_image((40, 40), 30 * shade + 20).save(tmp_path / f"{name}.png")
    bad = ["{not json", "[1, 2]", json.dumps({"image": "c.png"}), '"a string"']
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(x for pair in zip(bad, good) for x in pair) + "\n", encoding="utf-8")
    command = ["shards", "--source", "jsonl", "--input", str(path), "--output", str(tmp_path / "out")]
    command += ["--image-size", "32", "--workers", "1", "--val-fraction", "0", "--test-fraction", "0"]
    assert main(command) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest["samples"] == 4 and manifest["dropped"] == {"malformed_row": 4}
    drops = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["key"], d["reason"]) for d in drops] == [(f"line-{n}", "malformed_row") for n in (1, 3, 5, 7)]
    capsys.readouterr()
    assert main(command) == 0  # the rerun finds the finished conversion
    assert read_manifest(tmp_path / "out") == manifest and "dropped: malformed_row 4" in capsys.readouterr().out


def _convirt(*args: str) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "convirt.cli.main", *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]


@requires_shared_data("openi-reports", "NLMCXR_reports.tgz")
@pytest.mark.shared_data
def test_real_openi_reports_all_parse_with_counts_by_section(tmp_path):
    archive = SHARED_DATA / "openi-reports" / "NLMCXR_reports.tgz"
    rows = list(read_rows("openi", str(archive)))
    assert len(rows) == 3955 and not [r for r in rows if r.problem]
    _convirt("shards", "--source", "openi", "--input", str(archive), "--output", str(tmp_path / "out"))
    manifest = read_manifest(tmp_path / "out")
    assert manifest["rows_read"] == 3955 and manifest["text_only"]
    assert manifest["sections"] == {"comparison": 2513, "findings": 3425, "impression": 3921, "indication": 3662}
    assert manifest["dropped"] == {"empty_report": 28}
    assert manifest["samples"] == 3927
    assert sum(s["samples"] for s in manifest["splits"].values()) == 3927
    assert not any("XXXX" in line for line in (tmp_path / "out" / MANIFEST).read_text().splitlines())
    findings = write_shards(
        lambda: read_rows("openi", str(archive)),
        tmp_path / "findings",
        text_only=True,
        source="openi",
        text="findings",
        progress=False,
    )
    assert findings["samples"] == 3425 and findings["dropped"] == {"empty_report": 28, "no_findings_section": 502}


@requires_shared_data("covid-pairs", "pairs.csv")
@pytest.mark.shared_data
def test_real_covid_pairs_csv_converts_with_default_flags(tmp_path):
    out = tmp_path / "shards"
    _convirt(
        "shards", "--source", "csv", "--input", str(SHARED_DATA / "covid-pairs" / "pairs.csv"), "--output", str(out)
    )
    manifest = read_manifest(out)
    assert manifest["rows_read"] == 529 and manifest["samples"] == 529 and manifest["dropped"] == {}
    assert {s: v["samples"] for s, v in manifest["splits"].items()} == {"train": 407, "val": 35, "test": 87}
    assert manifest["image_size"] == 512
