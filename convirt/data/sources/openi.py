"""Open-i (Indiana University chest X-ray collection): the XML reports as distributed.

``NLMCXR_reports.tgz`` (or the folder it unpacks to) holds one XML file per report, with
``AbstractText`` elements labelled COMPARISON, INDICATION, FINDINGS and IMPRESSION, MeSH terms, and
one ``parentImage`` per radiograph. With the PNG folder (``NLMCXR_png.tgz`` unpacked) each
radiograph becomes a sample; without it each report becomes a text-only sample.
"""

from __future__ import annotations

import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convirt.data.reports import COMPARISON, FINDINGS, IMPRESSION, INDICATION, clean_sections
from convirt.data.schema import NO_FINDING, Row

SOURCE = "openi"
_SECTIONS = {"FINDINGS": FINDINGS, "IMPRESSION": IMPRESSION, "INDICATION": INDICATION, "COMPARISON": COMPARISON}
_NUMBER = re.compile(r"(\d+)")


def _documents(path: Path) -> list[tuple[str, bytes]]:
    """``(name, xml bytes)`` of every report, ordered by report number."""
    documents: list[tuple[str, bytes]] = []
    if path.is_dir():
        for file in path.rglob("*.xml"):
            documents.append((file.name, file.read_bytes()))
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            for member in archive:
                if member.isfile() and member.name.endswith(".xml"):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        documents.append((Path(member.name).name, handle.read()))
    else:
        raise ValueError(f"{path}: expected NLMCXR_reports.tgz or the folder of XML reports it unpacks to")
    if not documents:
        raise ValueError(f"{path}: no XML reports found")

    def order(item: tuple[str, bytes]) -> tuple[int, str]:
        number = _NUMBER.search(item[0])
        return (int(number.group(1)) if number else -1, item[0])

    return sorted(documents, key=order)


def _labels(root: ET.Element) -> list[str]:
    labels: list[str] = []
    for term in root.findall("./MeSH/major"):
        name = (term.text or "").split("/")[0].strip()
        name = NO_FINDING if name.lower() == "normal" else name
        if name and name not in labels:
            labels.append(name)
    return labels


def read_openi_rows(path: str | os.PathLike[str], images: str | os.PathLike[str] | None = None) -> Iterator[Row]:
    """Rows of the Open-i reports: one per radiograph with ``images``, else one text-only row per report.

    A report that is not well-formed XML or not UTF-8 becomes a row marked ``unreadable_report``.

    Raises:
        FileNotFoundError: ``path`` or ``images`` does not exist.
        ValueError: ``path`` holds no XML reports.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Open-i reports not found: {path} (expected NLMCXR_reports.tgz)")
    image_root = Path(images) if images else None
    if image_root is not None and not image_root.is_dir():
        raise FileNotFoundError(f"Open-i image folder not found: {image_root} (unpack NLMCXR_png.tgz there)")
    return _rows(_documents(path), image_root)


def _rows(documents: list[tuple[str, bytes]], image_root: Path | None) -> Iterator[Row]:
    for name, data in documents:
        report_id = Path(name).stem
        try:
            root = ET.fromstring(data.decode("utf-8"))
        except (UnicodeDecodeError, ET.ParseError):
            yield Row(
                key=f"openi-{report_id}",
                image_path="",
                text="",
                patient_id=report_id,
                source=SOURCE,
                problem="unreadable_report",
            )
            continue
        uid = root.find("uId")
        report_id = uid.get("id", report_id) if uid is not None else report_id
        raw = {
            _SECTIONS[label]: element.text or ""
            for element in root.iter("AbstractText")
            if (label := (element.get("Label") or "").upper()) in _SECTIONS
        }
        sections = clean_sections(raw)
        common: dict[str, Any] = dict(
            text="", patient_id=report_id, labels=_labels(root), source=SOURCE, study_id=report_id, sections=sections
        )
        if image_root is None:
            yield Row(key=f"openi-{report_id}", image_path="", **common)
            continue
        for image in root.findall("parentImage"):
            image_id = image.get("id") or ""
            if image_id:
                yield Row(
                    key=f"openi-{image_id.replace('.', '_')}", image_path=str(image_root / f"{image_id}.png"), **common
                )
