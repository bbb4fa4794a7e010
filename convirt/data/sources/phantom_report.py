"""Writing a phantom image's free-text report from varied phrasings (see :mod:`convirt.data.sources.phantom`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convirt.data.sources.phantom_case import (
    CARDIOMEGALY,
    CONSOLIDATION,
    EDEMA,
    EFFUSION,
    FINDINGS,
    NODULE,
    PNEUMOTHORAX,
    PhantomCase,
)


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _side_words(side: str) -> str:
    return "bilateral" if side == "bilateral" else side


_SIZE_WORDS = {"mild": "small", "moderate": "moderate", "large": "large"}


def _positive_sentence(case: PhantomCase, finding: str, rng: np.random.Generator) -> tuple[str, str]:
    """One sentence that reports a present finding, and the finding's name for the impression.

    The style is drawn per sentence: a description of what is seen (most often, as in real
    findings sections), the finding named, or a hedge.
    """
    style = str(rng.choice(("describe", "name", "hedge"), p=(0.55, 0.33, 0.12)))
    size = _SIZE_WORDS[case.severity]
    describe: tuple[str, ...]
    name: tuple[str, ...]
    hedge: tuple[str, ...]
    if finding == CARDIOMEGALY:
        describe = (
            "Enlarged cardiac silhouette.",
            "The cardiac silhouette is enlarged.",
            "Increased cardiothoracic ratio.",
            "The heart shadow is widened.",
            "The cardiomediastinal silhouette is enlarged.",
        )
        name = ("Cardiomegaly.", "Moderate cardiomegaly.", "The heart is enlarged.", "Mild cardiomegaly is noted.")
        hedge = ("Borderline enlarged cardiac silhouette.", "Heart size is upper limits of normal to mildly enlarged.")
        impression = "Cardiomegaly."
    elif finding == EFFUSION:
        side = _side_words(case.effusion_side)
        plural = "s" if side == "bilateral" else ""
        describe = (
            f"Blunting of the {side} costophrenic angle{plural}.",
            f"Blunted {side} costophrenic angle{plural}.",
            f"Meniscus-shaped opacity at the {side} lung base{plural}.",
            f"Fluid layering at the {side} base{plural}.",
        )
        name = (f"{size.capitalize()} {side} pleural effusion{plural}.", f"There is a {size} {side} pleural effusion.")
        hedge = (f"Possible small {side} pleural effusion.", f"Trace {side} pleural fluid is not excluded.")
        impression = f"{side.capitalize()} pleural effusion{plural}."
    elif finding == PNEUMOTHORAX:
        side = case.pneumothorax_side
        describe = (
            f"Visible pleural line at the {side} apex with absent lung markings peripherally.",
            f"Hyperlucent {side} hemithorax without lung markings laterally.",
            f"A {side} visceral pleural line is seen, with no lung markings beyond it.",
        )
        name = (f"{size.capitalize()} {side} pneumothorax.", f"There is a {size} {side}-sided pneumothorax.")
        hedge = (f"Questionable small {side} apical pneumothorax.",)
        impression = f"{side.capitalize()} pneumothorax."
    elif finding == NODULE:
        side, zone = case.lesion_side, case.lesion_zone
        kind = "mass" if case.lesion_is_mass else "nodule"
        describe = (
            f"Rounded opacity in the {side} {zone} zone.",
            f"Well-circumscribed density in the {side} lung.",
            f"Focal round opacity projecting over the {side} {zone} lung.",
        )
        name = (f"{side.capitalize()} {zone} lung {kind}.", f"A {kind} is seen in the {side} {zone} lung.")
        hedge = (f"Possible {kind} in the {side} lung, CT recommended.",)
        impression = f"{side.capitalize()} lung {kind}."
    elif finding == CONSOLIDATION:
        side, zone = case.consolidation_side, case.consolidation_zone
        describe = (
            f"Airspace opacity in the {side} {zone} zone.",
            f"Patchy opacity with air bronchograms in the {side} {zone} lung.",
            f"Dense airspace opacification of the {side} {zone} lobe.",
        )
        name = (
            f"{side.capitalize()} {zone} lobe consolidation.",
            f"Consolidation in the {side} {zone} lobe, compatible with pneumonia.",
        )
        hedge = (f"Patchy {side} {zone} opacity may represent early consolidation.",)
        impression = f"{side.capitalize()} {zone} lobe consolidation."
    elif finding == EDEMA:
        describe = (
            "Perihilar haziness and interstitial markings.",
            "Bilateral perihilar opacities with Kerley B lines.",
            "Pulmonary vascular congestion with interstitial thickening.",
        )
        name = ("Pulmonary edema.", "Mild interstitial pulmonary edema.", "Findings consistent with pulmonary edema.")
        hedge = ("Possible mild interstitial edema.",)
        impression = "Pulmonary edema."
    else:
        raise ValueError(f"unknown phantom finding {finding!r}; known: {', '.join(FINDINGS)}")
    return _pick(rng, {"describe": describe, "name": name, "hedge": hedge}[style]), impression


_NEGATIONS: dict[str, tuple[str, ...]] = {
    CARDIOMEGALY: (
        "Heart size is normal.",
        "Normal cardiac silhouette.",
        "No cardiomegaly.",
        "The cardiomediastinal silhouette is within normal limits.",
    ),
    EFFUSION: ("No pleural effusion.", "The costophrenic angles are sharp.", "No effusion."),
    PNEUMOTHORAX: ("No pneumothorax.", "No evidence of pneumothorax.", "No visible pleural line."),
    NODULE: ("No suspicious pulmonary nodules.", "No focal mass or nodule."),
    CONSOLIDATION: ("No focal consolidation.", "No airspace opacity."),
    EDEMA: ("No pulmonary edema.", "No vascular congestion.", "No interstitial edema."),
}

_BOILERPLATE_NORMAL = (
    "No acute cardiopulmonary process.",
    "Normal chest radiograph.",
    "The lungs are clear. The heart is normal in size. No pleural effusion or pneumothorax.",
    "No acute cardiopulmonary abnormality.",
    "Lungs are clear. No effusion, consolidation or pneumothorax. Heart size normal.",
)


def write_report(case: PhantomCase, rng: np.random.Generator) -> str:
    """Write the free-text report of one image.

    Args:
        case: The image's findings.
        rng: Random generator for the phrasing.

    Returns:
        A report with a ``FINDINGS:`` section and, most of the time, an ``IMPRESSION:``.
    """
    if not case.findings and rng.random() < 0.45:
        return _pick(rng, _BOILERPLATE_NORMAL)
    sentences: list[str] = []
    impressions: list[str] = []
    for finding in case.findings:
        sentence, impression = _positive_sentence(case, finding, rng)
        sentences.append(sentence)
        impressions.append(impression)
    for finding in FINDINGS:
        if finding not in case.findings and rng.random() < 0.5:
            sentences.append(_pick(rng, _NEGATIONS[finding]))
    order = rng.permutation(len(sentences))
    text = "FINDINGS: " + " ".join(sentences[i] for i in order) if sentences else ""
    if rng.random() < 0.6:
        impression = " ".join(impressions) if impressions else _pick(rng, _BOILERPLATE_NORMAL[:2])
        text = (text + " IMPRESSION: " + impression).strip()
    return text or _pick(rng, _BOILERPLATE_NORMAL)
