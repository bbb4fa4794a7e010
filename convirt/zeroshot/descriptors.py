"""Descriptor sets: per finding, the observations a radiologist looks for (Xplainer-style)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

_DESCRIPTOR_DIR = Path(__file__).parent / "descriptors"
_TOP_KEYS = {"name", "description", "findings"}
_FINDING_KEYS = {"prompt", "negative_prompt", "observations", "synonyms"}


@dataclass(frozen=True)
class Finding:
    """One finding: its name, the phrase used in name prompts, and its observations.

    Attributes:
        name: The label name, as in the label files.
        prompt: How prompts name it ("pleural effusion").
        observations: What a radiologist looks for (the Xplainer descriptors).
        synonyms: Other names, used by the template-ensemble method.
        negative_prompt: A phrase for the negative class of name prompts ("normal chest
            radiograph"); default: the negated name.
    """

    name: str
    prompt: str
    observations: tuple[str, ...]
    synonyms: tuple[str, ...] = ()
    negative_prompt: str | None = None


@dataclass(frozen=True)
class DescriptorSet:
    """A named, validated set of findings."""

    name: str
    findings: tuple[Finding, ...]

    @property
    def finding_names(self) -> list[str]:
        return [finding.name for finding in self.findings]

    def only(self, names: list[str] | tuple[str, ...]) -> DescriptorSet:
        """The set restricted to ``names``, in the set's order (a test set that labels 5 of its 14 findings).

        Raises:
            ValueError: A name is not a finding of the set.
        """
        if unknown := sorted(set(names) - set(self.finding_names)):
            raise ValueError(
                f"labels without a descriptor finding: {unknown}; {self.name} describes {self.finding_names}"
            )
        return DescriptorSet(self.name, tuple(f for f in self.findings if f.name in set(names)))


class _LineLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys and remembers each finding's line."""

    lines: dict[str, int]


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ValueError(f"line {line}: duplicate key {key!r} (first at line {seen[key]})")
        seen[key] = line
        loader.lines.setdefault(str(key), line)
    return loader.construct_mapping(node, deep=deep)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)  # type: ignore[arg-type]


def list_descriptor_sets() -> list[str]:
    """Names of the descriptor sets shipped with convirt."""
    return sorted(path.stem for path in _DESCRIPTOR_DIR.glob("*.yaml"))


def _strings(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)


def load_descriptors(name_or_path: str) -> DescriptorSet:
    """Load a shipped descriptor set by name, or a user's YAML file by path.

    Raises:
        ValueError: Unknown name, or a file that breaks the schema (the message names the file,
            the line and the problem: an empty list, a duplicate finding, an unknown key).
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
        loader = _LineLoader(handle)
        loader.lines = {}
        try:
            raw = loader.get_single_data()  # type: ignore[no-untyped-call]
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        finally:
            loader.dispose()  # type: ignore[no-untyped-call]
    lines = loader.lines

    def fail(key: str, problem: str) -> ValueError:
        where = f" line {lines[key]}:" if key in lines else ""
        return ValueError(f"{path}:{where} {problem}")

    if not isinstance(raw, dict) or not isinstance(raw.get("findings"), dict) or not raw["findings"]:
        raise ValueError(f"{path}: expected a mapping with a non-empty 'findings' mapping")
    unknown_top = set(raw) - _TOP_KEYS
    if unknown_top:
        key = sorted(unknown_top)[0]
        raise fail(key, f"unknown key {key!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    findings = []
    for finding_name, spec in raw["findings"].items():
        name = str(finding_name)
        if not isinstance(spec, dict):
            raise fail(name, f"finding {name!r} must be a mapping with observations")
        unknown = set(spec) - _FINDING_KEYS
        if unknown:
            raise fail(name, f"finding {name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(_FINDING_KEYS)}")
        if not _strings(spec.get("observations")):
            raise fail(name, f"finding {name!r} needs a non-empty list of observations (non-empty strings)")
        if "synonyms" in spec and not _strings(spec["synonyms"]):
            raise fail(name, f"finding {name!r}: synonyms must be a non-empty list of strings")
        negative = spec.get("negative_prompt")
        findings.append(
            Finding(
                name,
                str(spec.get("prompt") or name).strip(),
                tuple(o.strip() for o in spec["observations"]),
                tuple(s.strip() for s in spec.get("synonyms") or ()),
                str(negative).strip() if negative else None,
            )
        )
    return DescriptorSet(str(raw.get("name") or path.stem), tuple(findings))
