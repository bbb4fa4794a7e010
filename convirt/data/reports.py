"""Radiology report sections: parse free-text reports and pick the text a model trains on.

Reports arrive as free text with headers (``FINDINGS:``, ``Impression:``, ``FINDINGS AND
IMPRESSION:``, ``CLINICAL HISTORY:``, ...) or, for Open-i and CheXpert Plus, already cut into
sections. Either way they end as a dict of canonical section names, and
:func:`select_text` picks the training text from it by a named rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum

FINDINGS = "findings"
IMPRESSION = "impression"
INDICATION = "indication"
HISTORY = "history"
COMPARISON = "comparison"
TECHNIQUE = "technique"
OTHER = "other"

SECTIONS = (FINDINGS, IMPRESSION, INDICATION, HISTORY, COMPARISON, TECHNIQUE, OTHER)

# Header spellings seen in MIMIC-CXR, Open-i, CheXpert Plus and PACS exports, upper-cased.
_HEADERS: dict[str, str] = {
    "FINDINGS": FINDINGS,
    "FINDING": FINDINGS,
    "FINDINGS AND IMPRESSION": FINDINGS,
    "FINDINGS/IMPRESSION": FINDINGS,
    "REPORT": FINDINGS,
    "BODY": FINDINGS,
    "IMAGING NOTES": FINDINGS,
    "IMAGING FINDINGS": FINDINGS,
    "RADIOLOGICAL FINDINGS": FINDINGS,
    "IMPRESSION": IMPRESSION,
    "IMPRESSIONS": IMPRESSION,
    "CONCLUSION": IMPRESSION,
    "CONCLUSIONS": IMPRESSION,
    "SUMMARY": IMPRESSION,
    "OPINION": IMPRESSION,
    "IMPRESSION/RECOMMENDATIONS": IMPRESSION,
    "IMPRESSION AND RECOMMENDATIONS": IMPRESSION,
    "IMPRESSION/RECOMMENDATION": IMPRESSION,
    "INDICATION": INDICATION,
    "INDICATIONS": INDICATION,
    "REASON FOR EXAM": INDICATION,
    "REASON FOR EXAMINATION": INDICATION,
    "REASON FOR STUDY": INDICATION,
    "CLINICAL INDICATION": INDICATION,
    "CLINICAL INFORMATION": INDICATION,
    "HISTORY": HISTORY,
    "CLINICAL HISTORY": HISTORY,
    "CLINICAL": HISTORY,
    "CLINICAL DATA": HISTORY,
    "PATIENT HISTORY": HISTORY,
    "MEDICAL HISTORY": HISTORY,
    "DISCUSSION": OTHER,
    "NOTE": OTHER,
    "NOTES": OTHER,
    "ADDENDUM": OTHER,
    "COMPARISON": COMPARISON,
    "COMPARISONS": COMPARISON,
    "COMPARISON EXAM": COMPARISON,
    "PRIOR": COMPARISON,
    "TECHNIQUE": TECHNIQUE,
    "EXAMINATION": TECHNIQUE,
    "EXAM": TECHNIQUE,
    "PROCEDURE": TECHNIQUE,
    "VIEWS": TECHNIQUE,
    "STUDY": TECHNIQUE,
}

# A header: at a line start (or after a sentence), a run of words ending in a colon. Upper-case
# headers may be any words (unknown ones start an ``other`` section); mixed-case ones must be known.
_HEADER = re.compile(r"(?:^|(?<=[.:]\s))[ \t]*([A-Za-z][A-Za-z /&]{1,40}?)[ \t]*:", re.MULTILINE)
_FINAL_REPORT = re.compile(r"^\s*(FINAL REPORT|ADDENDUM)\b.*$", re.MULTILINE)
_WHITESPACE = re.compile(r"\s+")
# Open-i replaces names, dates and some words with XXXX; "x-XXXX" was "x-ray" before the tool
# took "ray" for a name.
_XRAY = re.compile(r"\b(x)-XXXX\b", re.IGNORECASE)
_DEID = re.compile(r"\bX{2,}\b|_{3,}")
_EMPTY_SENTENCE = re.compile(r"(?:^|(?<=[.!?]))\s*[,;:]?\s*[.!?]")
_SECTION_HEADER = re.compile(r"\b[A-Z][A-Z ]{2,}:\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Words by which a sentence of a free-text case note speaks of the radiograph rather than of the
# patient's story (symptoms, history, laboratory values, treatment). Hand-written from chest
# radiology vocabulary; a sentence with none of them is left out in ``imaging`` mode.
_IMAGING_TERMS = re.compile(
    r"\b(?:radiograph\w*|radiolog\w*|x-?rays?|cxr|chest film|imaging|opaci\w*|consolidat\w*|infiltra\w*|"
    r"ground[- ]glass|ggos?|effusions?|pneumothora\w*|atelecta\w*|cardiomegaly|cardiothoracic|"
    r"cardiomediastin\w*|mediastin\w*|hil(?:um|a|ar)|perihilar|lungs?|lobes?|lobar|zones?|pleura\w*|"
    r"air-?space|interstiti\w*|reticul\w*|nodul\w*|nodes?|mass(?:es)?|cavit\w*|bronchogram\w*|"
    r"costophrenic|\w*diaphragm\w*|heart|cardiac|pulmonary|parenchym\w*|bilateral\w*|basal|bases|apical|"
    r"apex|thorax|thoracic|edema|oedema|emphysema\w*|fibro\w*|markings|shadow\w*|haz[ey]\w*|densit\w*|"
    r"lucen\w*|silhouett\w*|tubes?|catheters?)\b",
    re.IGNORECASE,
)


class TextMode(str, Enum):
    """Which part of a report becomes the training text (``convirt shards --text``).

    ``auto``: findings and impression where either exists; otherwise the report without its
    indication, history, comparison and technique sections. ``both``: findings and impression
    (reports with neither are dropped). ``findings`` / ``impression``: that section only.
    ``longest``: the longest of findings and impression, else the longest section, else the
    whole text: keeps every non-empty report. ``imaging``: findings and impression where either
    exists; otherwise the sentences of the free text that speak of the radiograph (case notes,
    whose history, laboratory values and treatment no image shows); a report with none is dropped.
    """

    AUTO = "auto"
    FINDINGS = "findings"
    IMPRESSION = "impression"
    BOTH = "both"
    LONGEST = "longest"
    IMAGING = "imaging"


def parse_text_mode(value: str | TextMode) -> TextMode:
    """Parse a text mode by name.

    Raises:
        ValueError: Unknown name; the message lists the known ones.
    """
    try:
        return TextMode(value)
    except ValueError:
        known = ", ".join(mode.value for mode in TextMode)
        raise ValueError(f"unknown text mode {value!r}; known: {known}") from None


def clean_deidentified(text: str) -> str:
    """Remove de-identification tokens (``XXXX``, ``___``) and tidy the white space left behind."""
    text = _XRAY.sub(r"\1-ray", text)
    text = _DEID.sub(" ", text)
    text = _WHITESPACE.sub(" ", text).strip()
    text = re.sub(r"\s+([.,;:])", r"\1", text)
    text = _EMPTY_SENTENCE.sub("", text).strip()
    return "" if not re.search(r"[A-Za-z0-9]", text) else text


def split_sentences(text: str) -> list[str]:
    """Split a report into sentences, with section headers (``FINDINGS:``) removed."""
    text = _SECTION_HEADER.sub(" ", text)
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def imaging_sentences(text: str) -> str:
    """The sentences of a free-text note that name something a chest radiograph shows, in order."""
    return " ".join(s for s in split_sentences(text) if _IMAGING_TERMS.search(s))


def section_of(header: str, line_start: bool = True) -> str | None:
    """Canonical section of a header (``"Clinical history"`` -> ``history``), ``None`` if not a header.

    An unknown upper-case header starts an ``other`` section only at the start of a line, so that
    "... CT: no change" inside a paragraph does not cut it.
    """
    name = _WHITESPACE.sub(" ", header.strip()).upper()
    if name in _HEADERS:
        return _HEADERS[name]
    if line_start and header.isupper() and len(name.split()) <= 6:
        return OTHER
    return None


def parse_sections(text: str) -> dict[str, str]:
    """Cut a free-text report into canonical sections.

    Text before the first header goes to ``other``. A section that appears twice (an addendum)
    is joined. Only non-empty sections are returned, de-identification tokens removed.

    Returns:
        ``{section: text}`` with keys from :data:`SECTIONS`.
    """
    text = _FINAL_REPORT.sub("", text.replace("\r\n", "\n"))
    parts: dict[str, list[str]] = {}
    current, start = OTHER, 0
    for match in _HEADER.finditer(text):
        line_start = not text[text.rfind("\n", 0, match.start()) + 1 : match.start()].strip()
        section = section_of(match.group(1), line_start)
        if section is None:
            continue
        parts.setdefault(current, []).append(text[start : match.start()])
        current, start = section, match.end()
    parts.setdefault(current, []).append(text[start:])
    sections = {name: clean_deidentified(" ".join(chunks)) for name, chunks in parts.items()}
    return {name: value for name, value in sections.items() if value}


def clean_sections(sections: Mapping[str, str | None]) -> dict[str, str]:
    """Canonical, cleaned, non-empty sections from a reader's own section names.

    Raises:
        ValueError: A section name that is not one of :data:`SECTIONS`.
    """
    cleaned = {}
    for name, value in sections.items():
        if name not in SECTIONS:
            raise ValueError(f"unknown report section {name!r}; known: {', '.join(SECTIONS)}")
        value = clean_deidentified(value or "")
        if value:
            cleaned[name] = value
    return cleaned


def select_text(sections: Mapping[str, str], mode: TextMode | str = TextMode.AUTO) -> str:
    """The training text of a report under ``mode`` (see :class:`TextMode`); ``""`` drops the report."""
    mode = parse_text_mode(mode)
    findings, impression = sections.get(FINDINGS, ""), sections.get(IMPRESSION, "")
    if mode is TextMode.FINDINGS:
        return findings
    if mode is TextMode.IMPRESSION:
        return impression
    both = " ".join(part for part in (findings, impression) if part)
    if mode is TextMode.BOTH:
        return both
    if mode is TextMode.IMAGING:
        return both or imaging_sentences(sections.get(OTHER, ""))
    if mode is TextMode.AUTO:
        if both:
            return both
        return " ".join(sections[name] for name in (OTHER,) if sections.get(name))
    if findings or impression:
        return max((findings, impression), key=len)
    return max(sections.values(), key=len, default="")


def drop_reason(mode: TextMode | str) -> str:
    """The manifest's drop reason for a report that has no text under ``mode``."""
    mode = parse_text_mode(mode)
    return {
        TextMode.FINDINGS: "no_findings_section",
        TextMode.IMPRESSION: "no_impression_section",
        TextMode.BOTH: "no_findings_or_impression",
        TextMode.AUTO: "no_findings_or_impression",
        TextMode.LONGEST: "empty_report",
        TextMode.IMAGING: "no_imaging_sentences",
    }[mode]
