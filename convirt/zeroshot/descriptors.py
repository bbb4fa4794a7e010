"""Descriptor sets: per finding, the observations a radiologist looks for (Xplainer-style)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

_DESCRIPTOR_DIR = Path(__file__).parent / "descriptors"
_FINDING_KEYS = {"prompt", "observations", "synonyms"}


@dataclass(frozen=True)
class Finding:
    """One finding: its name, the phrase used in name prompts, and its observations."""

    name: str
    prompt: str
    observations: tuple[str, ...]


@dataclass(frozen=True)
class DescriptorSet:
    """A named, validated set of findings."""

    name: str
    findings: tuple[Finding, ...]

    @property
    def finding_names(self) -> list[str]:
        return [finding.name for finding in self.findings]


def list_descriptor_sets() -> list[str]:
    """Names of the descriptor sets shipped with convirt."""
    return sorted(path.stem for path in _DESCRIPTOR_DIR.glob("*.yaml"))


def load_descriptors(name_or_path: str) -> DescriptorSet:
    """Load a shipped descriptor set by name, or a user's YAML file by path.

    Raises:
        ValueError: Unknown name, or a file that breaks the schema (the message names the file
            and the problem).
    """
    path = Path(name_or_path)
    if not path.is_file():
        if name_or_path not in list_descriptor_sets():
            raise ValueError(
                f"unknown descriptor set {name_or_path!r}; known: {', '.join(list_descriptor_sets())} "
                "(or the path of a YAML file)"
            )
        path = _DESCRIPTOR_DIR / f"{name_or_path}.yaml"
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    if not isinstance(raw, dict) or not isinstance(raw.get("findings"), dict) or not raw["findings"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'findings' mapping")
    findings = []
    for finding_name, spec in raw["findings"].items():
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: finding {finding_name!r} must be a mapping")
        unknown = set(spec) - _FINDING_KEYS
        if unknown:
            raise ValueError(f"{path}: finding {finding_name!r} has unknown keys {sorted(unknown)}; "
                             f"allowed: {sorted(_FINDING_KEYS)}")
        observations = spec.get("observations") or []
        if not observations or not all(isinstance(o, str) and o.strip() for o in observations):
            raise ValueError(f"{path}: finding {finding_name!r} needs a non-empty list of observations")
        findings.append(Finding(str(finding_name), str(spec.get("prompt") or finding_name).strip(),
                                tuple(o.strip() for o in observations)))
    return DescriptorSet(str(raw.get("name") or path.stem), tuple(findings))
