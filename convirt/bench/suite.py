"""Evaluation suites: YAML files of tasks (a dataset, its split and labels, the protocols to run).

A suite names its data by path, relative to a data root (the working folder by default), so the
same file serves every machine; a task whose data is absent is skipped with the ``obtain`` text
that says how to get it. Shipped suites live in ``convirt/bench/suites/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convirt.data.fields import parse_fields
from convirt.data.foreign import is_foreign_shards
from convirt.data.labels import FORMATS
from convirt.data.test_sets import TEST_SET_FORMATS
from convirt.zeroshot.operating_points import parse_rule
from convirt.zeroshot.subgroups import COLUMNS as SUBGROUP_COLUMNS

SUITES = Path(__file__).parent / "suites"
PROTOCOLS = (
    "zeroshot",
    "prompts",
    "knn",
    "retrieval",
    "probe",
    "finetune",
    "image_text",
    "reports",
    "subgroups",
    "calibration",
    "operating_points",
)
UNCERTAIN = ("zeros", "ones", "ignore")
LABEL_FORMATS = (*FORMATS, *TEST_SET_FORMATS)


@dataclass
class Task:
    """One dataset of a suite and the protocols run on it.

    Attributes:
        data: A shard folder (its ``split`` is read), a folder of shards without a manifest (as img2dataset
            writes them), a label table or an image folder.
        split: The shard split; for a table, the name of the split its ``split_file`` lists.
        split_file: The file the archive distributes to name its test images (ChestX-ray14's
            ``test_list.txt``); only the listed rows of the table are evaluated.
        label_format, images: How the table is read (:func:`convirt.data.labels.read_label_rows`).
        uncertain: The label policy for uncertain (CheXpert ``-1``) labels: zeros, ones or ignore.
        label_policy: The policy in words, as the suite writes it down (shown with the results).
        fields: Shards without a manifest: the extension of each role (``{image: png, text: caption}``).
        url: Shards without a manifest named by a brace pattern, ``::`` list or URL (as written; a local
            pattern is taken relative to the data root), read in place of ``data``.
    """

    name: str
    data: Path
    split: str = "test"
    descriptors: str | None = None
    labels: list[str] | None = None
    where: dict[str, str] = field(default_factory=dict)
    protocols: dict[str, dict[str, Any]] = field(default_factory=dict)
    obtain: str = ""
    split_file: Path | None = None
    label_format: str = "auto"
    images: Path | None = None
    uncertain: str = "zeros"
    label_policy: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    url: str = ""

    @property
    def location(self) -> str:
        """What its samples are read from: ``url``, else ``data``."""
        return self.url or str(self.data)

    @property
    def available(self) -> bool:
        """Whether its data (and split file) are on this machine (a remote URL is taken to be)."""
        if self.url:
            from convirt.data.urls import expand_shard_urls

            remote = "://" in self.url or self.url.startswith("pipe:")
            return remote or all(Path(url).is_file() for url in expand_shard_urls(self.url))
        return self.data.exists() and (self.split_file is None or self.split_file.is_file())

    @property
    def missing(self) -> Path:
        """The first of its files that is absent."""
        return self.data if not self.data.exists() else self.split_file or self.data

    def input_options(self) -> dict[str, Any]:
        """The options of :func:`convirt.data.inputs.build_eval_batches` that select its samples."""
        options: dict[str, Any] = {"split": self.split, "where": self.where or None}
        if self.fields:
            options["fields"] = parse_fields(self.fields)
        if not self.url and not (self.data / "manifest.json").is_file():
            options.update(
                label_format=self.label_format,
                images=str(self.images) if self.images else None,
                uncertain=self.uncertain,
                split_file=self.split_file,
            )
        return options


@dataclass
class Suite:
    """A named, versioned list of tasks."""

    name: str
    version: int
    tasks: list[Task]
    path: Path


def list_suites() -> list[str]:
    """The names of the shipped suites."""
    return sorted(path.stem for path in SUITES.glob("*.yaml"))


def check_options(protocol: str, options: dict[str, Any]) -> None:
    """Refuse the evaluation protocols' options that could only fail after every image is embedded:
    a calibration ``method``, a validation ``fraction``, operating-point ``rules``, subgroup
    ``columns``, age ``bands``, ``min_size`` and ``min_positives``.

    Raises:
        ValueError: The first bad option, with what is allowed.
    """
    if "fraction" in options and not 0 < float(options["fraction"]) < 1:
        raise ValueError(f"fraction {options['fraction']} is not between 0 and 1")
    if protocol in ("calibration", "operating_points") and str(options.get("method", "platt")) not in (
        "platt",
        "temperature",
    ):
        raise ValueError(f"method {options['method']!r}: platt or temperature")
    if protocol == "operating_points":
        if "rules" in options and not options["rules"]:
            raise ValueError("rules is empty: name at least one (youden, sensitivity>=0.90, ...)")
        for rule in options.get("rules", ()):
            parse_rule(str(rule))
    if protocol == "subgroups":
        if unknown := [c for c in options.get("columns", ()) if c not in SUBGROUP_COLUMNS]:
            raise ValueError(f"unknown subgroup columns {unknown}; known: {', '.join(SUBGROUP_COLUMNS)}")
        bands = [float(edge) for edge in options.get("bands", (40, 60, 80))]
        if not bands or bands != sorted(set(bands)):
            raise ValueError(f"bands {bands}: ages in increasing order, each once")
        for key in ("min_size", "min_positives"):
            if key in options and int(options[key]) < 1:
                raise ValueError(f"{key} {options[key]}: at least 1")


def load_suite(name_or_path: str | os.PathLike[str], root: str | os.PathLike[str] = ".") -> Suite:
    """Read a shipped suite by name, or a suite file, its data paths taken relative to ``root``.

    Raises:
        ValueError: Unknown suite name, a task without a name or data, an unknown protocol, or a
            protocol option that is not allowed (:func:`check_options`).
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITES / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(
                f"unknown suite {str(name_or_path)!r}; shipped: {', '.join(list_suites())} (or a YAML path)"
            )
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    tasks = []
    for entry in spec.get("tasks") or []:
        if not entry.get("name") or not entry.get("data"):
            raise ValueError(f"{path}: every task needs a name and data, got {entry!r}")
        protocols = {name: dict(options or {}) for name, options in (entry.get("protocols") or {}).items()}
        unknown = sorted(set(protocols) - set(PROTOCOLS))
        if unknown:
            raise ValueError(
                f"{path}: task {entry['name']!r} names unknown protocols {unknown}; known: {list(PROTOCOLS)}"
            )
        for protocol, options in protocols.items():
            try:
                check_options(protocol, options)
            except ValueError as error:
                raise ValueError(f"{path}: task {entry['name']!r}, protocol {protocol}: {error}") from None
        if entry.get("label_format", "auto") not in LABEL_FORMATS:
            raise ValueError(f"{path}: task {entry['name']!r}: label_format must be one of {list(LABEL_FORMATS)}")
        if entry.get("uncertain", "zeros") not in UNCERTAIN:
            raise ValueError(f"{path}: task {entry['name']!r}: uncertain must be one of {list(UNCERTAIN)}")
        data = str(entry["data"])
        url = "" if not is_foreign_shards(data) or Path(root, data).is_dir() else data
        if url and not ("://" in url or url.startswith("pipe:")):
            url = str(Path(root) / url)
        parse_fields(entry.get("fields"))  # a bad field fails as the suite is read
        tasks.append(
            Task(
                name=str(entry["name"]),
                data=Path(root) / data,
                url=url,
                fields={str(k): str(v) for k, v in (entry.get("fields") or {}).items()},
                split_file=Path(root) / str(entry["split_file"]) if entry.get("split_file") else None,
                label_format=str(entry.get("label_format", "auto")),
                images=Path(root) / str(entry["images"]) if entry.get("images") else None,
                uncertain=str(entry.get("uncertain", "zeros")),
                label_policy=str(entry.get("label_policy", "")),
                split=str(entry.get("split", "test")),
                descriptors=entry.get("descriptors"),
                labels=entry.get("labels"),
                where={str(k): str(v) for k, v in (entry.get("where") or {}).items()},
                protocols=protocols,
                obtain=str(entry.get("obtain", "")),
            )
        )
    if not tasks:
        raise ValueError(f"{path} lists no tasks")
    return Suite(str(spec.get("name", path.stem)), int(spec.get("version", 1)), tasks, path)
