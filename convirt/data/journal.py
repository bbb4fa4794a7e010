"""The state of one `convirt shards` conversion: the shard being filled, and the journal saved
after every shard so that a killed conversion resumes where it stopped (`writer.write_shards`)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import webdataset as wds

from convirt._io import file_sha256, write_json, write_lines
from convirt.data.schema import SPLITS

JOURNAL = ".convirt-journal.json"
HASHES = ".convirt-hashes"
DROPS = "dropped.jsonl"
# A part's samples (key, split, input row, shard, pixel digest): what the merge of parts needs
# to drop an image whose first copy is in another part (`parts.merge_parts`).
SAMPLES = "part-samples.jsonl"
_LISTS = (HASHES, DROPS, SAMPLES)


class ShardFile:
    """One shard being filled: written under ``.tmp``, renamed into place when closed."""

    def __init__(self, output: Path, name: str) -> None:
        self.final = output / name
        self.tmp = output / (name + ".tmp")
        # A fixed mtime makes the tar bytes a function of the samples alone (byte-identical reruns);
        # an integer one keeps members plain ustar (a float adds a 1 KB PAX header to each member).
        self.writer = wds.TarWriter(str(self.tmp), mtime=0)
        self.samples = 0
        self.labels: Counter[str] = Counter()

    def write(self, sample: dict[str, Any], labels: Iterable[str]) -> None:
        self.writer.write(sample)
        self.samples += 1
        self.labels.update(labels)

    def close(self) -> dict[str, Any]:
        self.writer.close()
        os.replace(self.tmp, self.final)
        return {
            "name": self.final.name,
            "samples": self.samples,
            "sha256": file_sha256(self.final),
            "labels": dict(sorted(self.labels.items())),
        }


class Conversion:
    """The state of one conversion, saved to the journal after every shard."""

    def __init__(self, out: Path, config: dict[str, Any]) -> None:
        self.out, self.config = out, config
        self.split_index, self.position, self.rows_read = 0, 0, 0
        self.total_rows: int | None = None
        self.shards: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
        self.dropped: Counter[str] = Counter()
        self.sections: Counter[str] = Counter()
        self.hashes: list[str] = []
        self.drops: list[str] = []
        self.samples: list[str] = []  # a part's only
        self.input_sha256 = ""  # a part's running digest of the input rows (`parts.chain_row`)
        self._on_disk = dict.fromkeys(_LISTS, 0)  # lines of each list already in its file

    def load(self) -> bool:
        """Restore from the journal; False when there is none (then old line files are cleared)."""
        path = self.out / JOURNAL
        if not path.is_file():
            for name in _LISTS:
                (self.out / name).unlink(missing_ok=True)
            return False
        state = json.loads(path.read_text(encoding="utf-8"))
        if state["config"] != self.config:
            raise ValueError(other_config(self.out, state["config"], self.config))
        self.split_index, self.position, self.rows_read = state["split_index"], state["position"], state["rows_read"]
        self.total_rows = state["total_rows"]
        self.shards = state["shards"]
        self.dropped, self.sections = Counter(state["dropped"]), Counter(state["sections"])
        self.hashes = _read_lines(self.out / HASHES)[: state["hashes"]]
        self.drops = _read_lines(self.out / DROPS)[: state["drops"]]
        self.samples = _read_lines(self.out / SAMPLES)[: state.get("samples", 0)]
        self.input_sha256 = state.get("input_sha256", "")
        for name, lines in self._lists():  # cut what the crash left beyond
            write_lines(self.out / name, lines)
            self._on_disk[name] = len(lines)
        return True

    def save(self) -> None:
        """Record progress: new hashes and drops first (appended), then the journal that says how
        many lines of them are valid."""
        for name, lines in self._lists():
            with open(self.out / name, "a", encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in lines[self._on_disk[name] :])
            self._on_disk[name] = len(lines)
        write_json(
            self.out / JOURNAL,
            {
                "config": self.config,
                "split_index": self.split_index,
                "position": self.position,
                "rows_read": self.rows_read,
                "total_rows": self.total_rows,
                "shards": self.shards,
                "dropped": dict(self.dropped),
                "sections": dict(self.sections),
                "hashes": len(self.hashes),
                "drops": len(self.drops),
                "samples": len(self.samples),
                "input_sha256": self.input_sha256,
            },
        )

    def _lists(self) -> tuple[tuple[str, list[str]], ...]:
        return (HASHES, self.hashes), (DROPS, self.drops), (SAMPLES, self.samples)


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def other_config(out: Path, found: dict[str, Any], wanted: dict[str, Any]) -> str:
    changed = ", ".join(
        f"{k}: {found.get(k)!r} -> {wanted.get(k)!r}"
        for k in sorted(set(found) | set(wanted))
        if found.get(k) != wanted.get(k)
    )
    return (
        f"{out} holds shards made with other settings ({changed}); write to a new --output folder, "
        f"or delete this one to start again"
    )
