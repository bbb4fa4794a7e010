import pytest

from convirt.data.reports import (
    clean_deidentified,
    clean_sections,
    drop_reason,
    parse_sections,
    parse_text_mode,
    select_text,
)

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with chest pain  // ?pna

 COMPARISON:  ___

 FINDINGS:

 PA and lateral views of the chest. CT: no change. No focal consolidation.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def test_mimic_style_headers_become_canonical_sections():
    sections = parse_sections(MIMIC_STYLE)
    assert sections == {
        "technique": "CHEST (PA AND LAT)",
        "indication": "F with chest pain // ?pna",
        "findings": "PA and lateral views of the chest. CT: no change. No focal consolidation.",
        "impression": "No acute cardiopulmonary process.",
    }


@pytest.mark.parametrize(
    "text, section",
    [
        ("Findings: clear lungs.", "findings"),
        ("FINDINGS AND IMPRESSION: clear lungs.", "findings"),
        ("Impression: clear lungs.", "impression"),
        ("CONCLUSION: clear lungs.", "impression"),
        ("Clinical history: cough.", "history"),
        ("REASON FOR EXAM: cough.", "indication"),
        ("COMPARISONS: none.", "comparison"),
        ("Imaging notes: patchy opacities.", "findings"),
    ],
)
def test_header_variants(text, section):
    assert list(parse_sections(text)) == [section]


def test_free_text_without_headers_is_other_and_auto_keeps_it():
    sections = parse_sections("65 year old man with fever. Chest x-ray shows bilateral opacities.")
    assert list(sections) == ["other"]
    assert select_text(sections, "auto") == sections["other"]
    assert select_text(sections, "both") == ""


def test_unknown_upper_case_word_inside_a_paragraph_does_not_cut_it():
    assert (
        parse_sections("FINDINGS: stable. CT: no change. Lungs clear.")["findings"]
        == "stable. CT: no change. Lungs clear."
    )


def test_openi_deidentification_tokens():
    assert clean_deidentified("Normal chest x-XXXX.") == "Normal chest x-ray."
    assert clean_deidentified("XXXX XXXX, XXXX.") == ""
    assert clean_deidentified("Heart normal. XXXX. Lungs clear.") == "Heart normal. Lungs clear."
    assert clean_deidentified("No XXXX pneumothorax.") == "No pneumothorax."


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("findings", "Heart normal. Lungs clear."),
        ("impression", "Normal."),
        ("both", "Heart normal. Lungs clear. Normal."),
        ("auto", "Heart normal. Lungs clear. Normal."),
        ("longest", "Heart normal. Lungs clear."),
    ],
)
def test_select_text_modes(mode, expected):
    sections = {"findings": "Heart normal. Lungs clear.", "impression": "Normal.", "indication": "Cough."}
    assert select_text(sections, mode) == expected


def test_longest_keeps_a_report_with_only_an_indication_and_auto_drops_it():
    sections = {"indication": "Cough."}
    assert select_text(sections, "longest") == "Cough."
    assert select_text(sections, "auto") == ""
    assert drop_reason("auto") == "no_findings_or_impression"


def test_bad_names_are_rejected_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown text mode 'finding'; known: auto, findings"):
        parse_text_mode("finding")
    with pytest.raises(ValueError, match="unknown report section 'result'"):
        clean_sections({"result": "x"})


def test_imaging_mode_keeps_the_sentences_about_the_radiograph_of_a_case_note():
    note = (
        "A 54-year-old man presented with fever and cough. Oxygen saturation was 88%. "
        "Chest X-ray showed bilateral patchy opacities in the lower zones. He was treated with oxygen. "
        "The radiograph obtained 5 days later was normal."
    )
    sections = parse_sections(note)
    assert select_text(sections, "imaging") == (
        "Chest X-ray showed bilateral patchy opacities in the lower zones. "
        "The radiograph obtained 5 days later was normal."
    )


def test_imaging_mode_prefers_findings_and_impression_and_drops_a_note_without_imaging():
    sections = parse_sections("Presentation: fever. Imaging Notes: Patchy opacities. Discussion: typical of COVID-19.")
    assert select_text(sections, "imaging") == "Patchy opacities."
    assert select_text(parse_sections("Fever and cough for three days. Swab positive."), "imaging") == ""
    assert drop_reason("imaging") == "no_imaging_sentences"
