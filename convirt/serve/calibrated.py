"""Calibrated probabilities and an operating point for the service's findings.

A descriptor set answers each finding with a *score*: a sigmoid of prompt similarities, ordered
like a probability but not one (a score of 0.7 is not right 70% of the time). A calibration file
(``calibration.json`` of ``convirt zeroshot --output``, fitted on a patient-grouped validation fold)
turns the score of each finding it covers into a *probability*; where the file also carries the
chosen operating-point rule for that finding, the finding passes when its probability reaches the
rule's threshold (chosen on the same fold's calibrated probabilities, so never compared with a score).
Findings the file does not cover keep their score alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convirt.zeroshot.calibration import Calibration
from convirt.zeroshot.operating_points import parse_rule

DEFAULT_RULE = "youden"


def _same_rule(a: str, b: str) -> bool:
    """``sensitivity>=0.9`` and ``Sensitivity >= 0.90`` name one rule."""
    (rate_a, target_a), (rate_b, target_b) = parse_rule(a), parse_rule(b)
    return rate_a == rate_b and (rate_a == "youden" or math.isclose(target_a, target_b))


@dataclass(frozen=True)
class ServedCalibration:
    """A calibration as the service applies it.

    Attributes:
        calibration: The calibration file's content.
        findings: The service's findings it calibrates, in the service's order.
        rule: The operating-point rule as the file names it; ``None``: the file carries none.
    """

    calibration: Calibration
    findings: tuple[str, ...]
    rule: str | None

    def fields(self, finding: str, score: float) -> dict[str, Any]:
        """``probability`` and ``operating_point`` of one finding from its raw descriptor ``score``
        (both ``None`` when the file does not calibrate it)."""
        if finding not in self.findings:
            return {"probability": None, "operating_point": None}
        probability = float(self.calibration.apply(finding, np.array([score]))[0])
        point = self.calibration.operating_points.get(finding, {}).get(self.rule) if self.rule else None
        marked = None
        if point is not None:
            marked = {"rule": point.rule, "threshold": point.threshold, "passes": probability >= point.threshold}
        return {"probability": probability, "operating_point": marked}

    def info(self) -> dict[str, Any]:
        """What ``/v1/info`` says of it: method, findings calibrated, fold size and fingerprint, rule."""
        return {
            "method": self.calibration.method.value,
            "findings": list(self.findings),
            "fitted_on": self.calibration.fold.n,
            "fold": self.calibration.fold.fingerprint[:12],
            "operating_point": self.rule,
        }


def calibrated_fields(calibrated: ServedCalibration | None, finding: str, score: float) -> dict[str, Any]:
    """:meth:`ServedCalibration.fields`, or no probability and no operating point without a calibration."""
    return calibrated.fields(finding, score) if calibrated else {"probability": None, "operating_point": None}


def read_calibration(path: str | os.PathLike[str]) -> Calibration:
    """:meth:`Calibration.load`, a file that cannot be read said in one line.

    Raises:
        OSError: The file cannot be read.
        ValueError: It is no calibration file.
    """
    try:
        return Calibration.load(os.fspath(path))
    except OSError as error:
        raise OSError(f"cannot read the calibration file {os.fspath(path)!r}: {error.strerror or error}") from None


def load_served_calibration(
    calibration: str | os.PathLike[str] | Calibration | None,
    rule: str | None,
    finding_names: Sequence[str] | None,
    made_by: tuple[dict[str, Any], Any] | None = None,
) -> ServedCalibration | None:
    """The calibration a service applies to ``finding_names``; ``None`` without one.

    Args:
        calibration: A calibration file (``convirt zeroshot --output``'s ``calibration.json``) or one loaded.
        rule: The operating point marked (e.g. ``"sensitivity>=0.90"``); ``None``: ``youden``, or none
            when the file carries no operating point at all.
        finding_names: The service's findings (its descriptor set's; empty: it has none); ``None``: the
            file's own (to check a file and a rule before a model loads).
        made_by: The service's model fingerprint and descriptor set (``None``: it has none), whose
            findings then stand for ``finding_names``: a calibration fitted on another model's or
            set's scores is refused (:meth:`Calibration.check_scores_from`).

    Raises:
        OSError: The file cannot be read.
        ValueError: The file is no calibration, the service has no descriptor set, the file calibrates none
            of ``finding_names``, was fitted on another model's or descriptor set's scores, or it carries
            ``rule`` for none of them (the message names the rules it has).
    """
    if made_by is not None:
        finding_names = list(made_by[1].finding_names) if made_by[1] is not None else []
    if calibration is None:
        if rule is not None:
            raise ValueError(f"--operating-point {rule} needs a --calibration file (its thresholds are in it)")
        return None
    if finding_names is not None and not finding_names:
        raise ValueError("a calibration needs a descriptor set (--descriptors): it calibrates the descriptors' scores")
    loaded = calibration if isinstance(calibration, Calibration) else read_calibration(calibration)
    if made_by is not None and made_by[1] is not None:
        loaded.check_scores_from(made_by[0], made_by[1].name)
    names = list(loaded.parameters) if finding_names is None else finding_names
    findings = tuple(name for name in names if name in loaded.parameters)
    if not findings:
        raise ValueError(
            f"the calibration calibrates none of this descriptor set's findings (it has {', '.join(loaded.parameters)};"
            f" the descriptors have {', '.join(names)}): fit it with the same descriptor set"
        )
    carried = sorted({name for finding in findings for name in loaded.operating_points.get(finding, {})})
    if rule is None and not carried:
        return ServedCalibration(loaded, findings, None)
    # No rule asked: Youden's where the file has it, else the first it carries.
    wanted = rule if rule is not None else DEFAULT_RULE if DEFAULT_RULE in carried else carried[0]
    parse_rule(wanted)  # an unknown rule is refused by name, with the known ones
    named = next((name for name in carried if _same_rule(name, wanted)), None)
    if named is None:
        raise ValueError(
            f"the calibration has no operating point {wanted!r} for these findings; it has: "
            f"{', '.join(carried) or 'none'} (pass one with --operating-point)"
        )
    return ServedCalibration(loaded, findings, named)
