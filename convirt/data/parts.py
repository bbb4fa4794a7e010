"""A conversion split across jobs: ``convirt shards --part I/N`` writes the rows of one part of the
patients into its own folder; :func:`merge_parts` joins the N part folders into one shard folder.

A row's part is a hash of its patient id, salted apart from the split hash, so every image of a
patient is in one part and each part holds about 1/N of every split. The split of a row does not
depend on its part (:func:`convirt.data.writer.assign_split` hashes the patient alone, or the row
keeps its official split), so each sample lands in the split a single run gives it.

Exact duplicate images are dropped within a part as in one run; a duplicate whose first copy is in
another part is dropped when the parts are merged: each part lists its samples (``part-samples.jsonl``:
key, split, input row, shard, pixel digest), and the merge keeps the copy a single run reads first
(earlier split, then earlier row) and rewrites the shards that held the others. Shards of the merged
folder are hard links to the parts' (copies across file systems); their names carry the part
(``train-p002-000000.tar``), so they never collide, and the merged folder reads like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from convirt._io import atomic_folder, file_sha256, write_json, write_lines
from convirt.data.journal import DROPS, JOURNAL, SAMPLES
from convirt.data.schema import MANIFEST, SPLITS, Row
from convirt.data.shards import read_manifest

_PART_HELP = "I/N with 1 <= I <= N (e.g. 2/8; a SLURM array --array=1-N: $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)"


class Part(NamedTuple):
    """Part ``number`` (counted from 1) of ``total``."""

    number: int
    total: int

    def __str__(self) -> str:
        return f"{self.number}/{self.total}"


def parse_part(value: str | Sequence[int]) -> Part:
    """``"2/8"`` (or ``(2, 8)``) as a :class:`Part`.

    Raises:
        ValueError: Not ``I/N`` with ``1 <= I <= N``; the message says what is expected.
    """
    try:
        number, total = (int(word) for word in value.split("/")) if isinstance(value, str) else value
    except (ValueError, TypeError):
        raise ValueError(f"--part expects {_PART_HELP}, got {value!r}") from None
    if not 1 <= number <= total:
        raise ValueError(f"--part expects {_PART_HELP}, got {f'{number}/{total}'!r}")
    return Part(number, total)


def part_of(patient_id: str, count: int) -> int:
    """The part (from 1 to ``count``) of a patient: a hash of the id, salted apart from the split's
    hash (``"{seed}:{id}"``) so that parts and splits are independent."""
    digest = hashlib.sha256(f"part:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def shard_name(split: str, number: int, part: Part | None) -> str:
    """``train-000003.tar``, or ``train-p002-000003.tar`` in part 2 (of up to 999; wider for more)."""
    if part is None:
        return f"{split}-{number:06d}.tar"
    return f"{split}-p{part.number:0{max(3, len(str(part.total)))}d}-{number:06d}.tar"


def chain_row(previous: str, row: Row) -> str:
    """The running digest of the input rows a part read (all of them, its own and the others'), so
    that the merge can tell parts converted from other inputs."""
    fields = [row.key, row.patient_id, row.split or "", row.text, ";".join(row.labels)]
    return hashlib.sha256((previous + "\x1e" + "\x1f".join(fields)).encode("utf-8", "surrogatepass")).hexdigest()


def _read_part(folder: Path) -> dict[str, Any]:
    if not (folder / MANIFEST).is_file() and (folder / JOURNAL).is_file():
        raise ValueError(
            f"{folder} is an unfinished part (its conversion stopped part-way): rerun its "
            f"`convirt shards ... --part I/N` command to finish it, then merge"
        )
    manifest = read_manifest(folder)
    if "part" not in manifest.get("config", {}):
        raise ValueError(
            f"{folder} holds a whole conversion, not a part: merge folders written by `convirt shards ... --part I/N`"
        )
    return manifest


def _check_parts(folders: list[Path], manifests: list[dict[str, Any]]) -> None:
    """Refuse parts of other conversions, a part given twice, and a missing part (one line each)."""
    parts = [Part(*manifest["config"]["part"]) for manifest in manifests]
    first, base = folders[0], manifests[0]
    seen: dict[int, Path] = {}
    for folder, manifest, part in zip(folders, manifests, parts, strict=True):
        if part.total != parts[0].total:
            raise ValueError(
                f"{first} is part {parts[0]} but {folder} is part {part}: the parts of one conversion share N"
            )
        if part.number in seen:
            raise ValueError(f"part {part} given twice ({seen[part.number]} and {folder}): give each part once")
        seen[part.number] = folder
        settings = {**manifest["config"], "format": manifest.get("format")}
        wanted = {**base["config"], "format": base.get("format")}
        changed = ", ".join(
            f"{key} {wanted.get(key)!r} vs {settings.get(key)!r}"
            for key in sorted(set(settings) | set(wanted))
            if key != "part" and settings.get(key) != wanted.get(key)
        )
        if changed:
            raise ValueError(
                f"{folder} (part {part}) was converted with other settings than {first} (part {parts[0]}): "
                f"{changed}; convert it again with the same settings"
            )
        if manifest["part"]["input_sha256"] != base["part"]["input_sha256"]:
            raise ValueError(
                f"{folder} (part {part}) read other input rows than {first} (part {parts[0]}) "
                f"({manifest['part']['input_rows']} rows vs {base['part']['input_rows']}, or other keys, patients "
                f"or reports): convert every part from the same --input"
            )
    missing = [f"{number}/{parts[0].total}" for number in range(1, parts[0].total + 1) if number not in seen]
    if missing:
        raise ValueError(
            f"part {', '.join(missing)} missing (given: {', '.join(str(p) for p in sorted(parts))}): convert it "
            f"with the same `convirt shards` command and --part {missing[0]}, then merge all {parts[0].total}"
        )


class _Sample(NamedTuple):
    """Where a sample of a part is: its place in one run's reading order first."""

    split: int
    row: int
    part: int
    key: str
    shard: str


def _cross_part_duplicates(
    folders: list[Path], manifests: list[dict[str, Any]]
) -> dict[tuple[int, str], dict[str, str]]:
    """The samples a single run would have dropped as ``duplicate_image``: an image whose stored
    pixels equal those of a sample of another part that the single run reads first.

    Returns:
        ``{(part position, shard name): {key: key of the copy kept}}``.

    Raises:
        ValueError: There is such a sample and the parts were converted with ``--strict``.
    """
    config = manifests[0]["config"]
    if not config["drop_duplicates"] or config["text_only"]:
        return {}
    first: dict[str, _Sample] = {}  # pixel digest -> the sample one run reads first
    dropped: list[tuple[_Sample, _Sample]] = []  # (a copy one run drops, the copy it keeps)
    for position, folder in enumerate(folders):
        for line in (folder / SAMPLES).read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["pixels"] is None:
                continue
            here = _Sample(SPLITS.index(record["split"]), record["row"], position, record["key"], record["shard"])
            earliest = first.setdefault(record["pixels"], here)
            if earliest is not here:
                later, earlier = (here, earliest) if here[:2] > earliest[:2] else (earliest, here)
                first[record["pixels"]] = earlier
                dropped.append((later, earlier))
    if dropped and config["strict"]:
        copy, kept = dropped[0]
        raise ValueError(
            f"duplicate image: {copy.key} ({folders[copy.part]}) has the stored pixels of {kept.key}; "
            f"convert the parts without --strict to skip and count such rows"
        )
    removed: dict[tuple[int, str], dict[str, str]] = {}
    for copy, kept in dropped:
        removed.setdefault((copy.part, copy.shard), {})[copy.key] = kept.key
    return removed


def _copy_without(source: Path, target: Path, keys: set[str]) -> tuple[int, Counter[str]]:
    """Copy a shard leaving out the samples of ``keys``; the samples kept and the labels left out."""
    kept_keys: set[str] = set()
    labels: Counter[str] = Counter()
    with tarfile.open(source) as reader, tarfile.open(target, "w") as writer:
        for member in reader:
            key = member.name.split("/")[-1].split(".", 1)[0]  # keys hold no dots (webdataset's rule)
            if key not in keys:
                kept_keys.add(key)
                writer.addfile(member, reader.extractfile(member))
            elif member.name.endswith(".json"):
                labels.update(json.loads(reader.extractfile(member).read())["labels"])  # type: ignore[union-attr]
    return len(kept_keys), labels


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


def merge_parts(
    parts: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], command: str = ""
) -> dict[str, Any]:
    """Join the folders of ``convirt shards --part I/N`` (every I of one N) into one shard folder.

    Counts, drop reasons, sections and labels are summed and the shard lists joined (in part order);
    an image whose first copy is in another part is dropped as ``duplicate_image``, as one run
    drops it. The result holds the samples, splits and counts of one run over the same rows and is
    read like one (``read_manifest``, ``shard_urls``). Merging the same parts again returns the
    manifest already written.

    Args:
        parts: The part folders, in any order.
        output: The merged folder (new, or empty).
        command: The command line, recorded in the manifest.

    Returns:
        The merged manifest (also written to ``output/manifest.json``).

    Raises:
        ValueError: A folder is not a finished part; parts differ in N, settings or input rows; a
            part is given twice or missing; ``output`` is not empty; no part holds a sample.
    """
    folders = [Path(part) for part in parts]
    if not folders:
        raise ValueError("no part folders to merge: give the N folders written by `convirt shards --part I/N`")
    manifests = [_read_part(folder) for folder in folders]
    _check_parts(folders, manifests)
    order = sorted(range(len(folders)), key=lambda i: int(manifests[i]["config"]["part"][0]))
    folders, manifests = [folders[i] for i in order], [manifests[i] for i in order]
    provenance = [
        {"part": str(Part(*m["config"]["part"])), "manifest_sha256": file_sha256(f / MANIFEST), "command": m["command"]}
        for f, m in zip(folders, manifests, strict=True)
    ]
    out = Path(output)
    if (out / MANIFEST).is_file() and read_manifest(out).get("parts") == provenance:
        return read_manifest(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} is not empty: merge into a new --output folder, or delete it to merge again")
    removed = _cross_part_duplicates(folders, manifests)
    dropped: Counter[str] = Counter()
    sections: Counter[str] = Counter()
    labels: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    shards: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    drops: list[str] = []
    with atomic_folder(out) as tmp:
        for position, (folder, manifest) in enumerate(zip(folders, manifests, strict=True)):
            dropped.update(manifest["dropped"])
            sections.update(manifest["sections"])
            drops += (folder / DROPS).read_text(encoding="utf-8").splitlines() if (folder / DROPS).is_file() else []
            for split in SPLITS:
                labels[split].update(manifest["splits"][split]["labels"])
                for entry in manifest["splits"][split]["shards"]:
                    gone = removed.get((position, entry["name"]), {})
                    if not gone:
                        _link(folder / entry["name"], tmp / entry["name"])
                        shards[split].append(entry)
                        continue
                    samples, lost = _copy_without(folder / entry["name"], tmp / entry["name"], set(gone))
                    labels[split] -= lost
                    dropped["duplicate_image"] += len(gone)
                    drops += [
                        json.dumps({"key": key, "split": split, "reason": "duplicate_image", "detail": f"as {kept}"})
                        for key, kept in gone.items()
                    ]
                    if samples:
                        shards[split].append({**entry, "samples": samples, "sha256": file_sha256(tmp / entry["name"])})
                    else:
                        (tmp / entry["name"]).unlink()
        written = sum(entry["samples"] for entries in shards.values() for entry in entries)
        if written == 0:
            raise ValueError(f"no usable samples in {len(folders)} parts ({dict(dropped) or 'no rows in the input'})")
        if drops:
            write_lines(tmp / DROPS, drops)
        manifest = _merged_manifest(manifests, dropped, sections, labels, shards, command)
        write_json(tmp / MANIFEST, {**manifest, "parts": provenance})
    return read_manifest(out)


def _merged_manifest(
    manifests: list[dict[str, Any]],
    dropped: Counter[str],
    sections: Counter[str],
    labels: dict[str, Counter[str]],
    shards: dict[str, list[dict[str, Any]]],
    command: str,
) -> dict[str, Any]:
    """The manifest of one conversion (the writer's layout), from the parts' sums."""
    base = manifests[0]
    return {
        "format": base["format"],
        "source": base["source"],
        "image_size": base["image_size"],
        "text_only": base["text_only"],
        "rows_read": sum(manifest["rows_read"] for manifest in manifests),
        "samples": sum(entry["samples"] for entries in shards.values() for entry in entries),
        "dropped": dict(sorted(dropped.items())),
        "sections": dict(sorted(sections.items())),
        "splits": {
            split: {
                "samples": sum(entry["samples"] for entry in shards[split]),
                "shards": shards[split],
                "labels": dict(sorted(labels[split].items())),
            }
            for split in SPLITS
        },
        "config": {key: value for key, value in base["config"].items() if key != "part"},
        "command": command,
    }
