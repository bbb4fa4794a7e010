"""The ground truth of a phantom image: which findings it has and where (see :mod:`convirt.data.sources.phantom`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CARDIOMEGALY = "Cardiomegaly"
EFFUSION = "Pleural Effusion"
PNEUMOTHORAX = "Pneumothorax"
NODULE = "Nodule/Mass"
CONSOLIDATION = "Consolidation"
EDEMA = "Edema"

FINDINGS: tuple[str, ...] = (CARDIOMEGALY, EFFUSION, PNEUMOTHORAX, NODULE, CONSOLIDATION, EDEMA)

# Finding sets drawn per image, with their weights: normal, each finding alone, and the
# co-occurrences that real archives show most (heart failure; pneumonia with effusion).
_FINDING_MIX: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.30),
    ((CARDIOMEGALY,), 0.08),
    ((EFFUSION,), 0.08),
    ((PNEUMOTHORAX,), 0.08),
    ((NODULE,), 0.08),
    ((CONSOLIDATION,), 0.08),
    ((EDEMA,), 0.06),
    ((CARDIOMEGALY, EDEMA), 0.08),
    ((CARDIOMEGALY, EFFUSION), 0.08),
    ((CONSOLIDATION, EFFUSION), 0.08),
)

SOURCE = "phantom"


@dataclass(frozen=True)
class PhantomCase:
    """The ground truth of one phantom image: its findings and where they were drawn."""

    findings: tuple[str, ...]
    effusion_side: str = ""
    pneumothorax_side: str = ""
    lesion_side: str = ""
    lesion_zone: str = ""
    lesion_is_mass: bool = False
    consolidation_side: str = ""
    consolidation_zone: str = ""
    severity: str = ""


def sample_case(rng: np.random.Generator) -> PhantomCase:
    """Draw the findings of one image and where they lie."""
    weights = np.array([w for _, w in _FINDING_MIX])
    findings = _FINDING_MIX[rng.choice(len(_FINDING_MIX), p=weights / weights.sum())][0]
    sides = ("right", "left")
    return PhantomCase(
        findings=findings,
        effusion_side=str(rng.choice(("right", "left", "bilateral"), p=(0.4, 0.35, 0.25))),
        pneumothorax_side=str(rng.choice(sides)),
        lesion_side=str(rng.choice(sides)),
        lesion_zone=str(rng.choice(("upper", "mid", "lower"))),
        lesion_is_mass=bool(rng.random() < 0.35),
        consolidation_side=str(rng.choice(sides)),
        consolidation_zone=str(rng.choice(("upper", "lower"), p=(0.35, 0.65))),
        severity=str(rng.choice(("mild", "moderate", "large"), p=(0.35, 0.45, 0.2))),
    )
