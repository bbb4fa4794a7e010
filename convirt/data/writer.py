"""Rows -> WebDataset tar shards, split by patient, with a manifest.

Shards are written to a temporary name and renamed when complete, so a shard that exists is
whole. After every shard a journal records how far the conversion got; a rerun with the same
settings after ``kill -9`` carries on from there and writes byte-identical shards. The manifest
is written last, the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sized
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import webdataset as wds

from convirt._io import file_sha256, write_json, write_lines
from convirt.data.prepare import Prepared, check_row, prepare_image
from convirt.data.reports import TextMode, parse_text_mode
from convirt.data.schema import IMAGE, KEY, MANIFEST, META, SPLITS, TEXT, Row
from convirt.data.shards import read_manifest
from convirt.data.views import parse_views

logger = logging.getLogger(__name__)

FORMAT = "convirt-shards/2"
JOURNAL = ".convirt-journal.json"
HASHES = ".convirt-hashes"
DROPS = "dropped.jsonl"
# Drops logged per reason before the log goes quiet (all of them are in dropped.jsonl).
_LOGGED_PER_REASON = 10

def assign_split(patient_id: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """Deterministic split of a patient from a hash of its id: every image of a patient shares it."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()
    position = int(digest[:12], 16) / float(1 << 48)
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def _prepare_star(arguments: tuple[str, int, bool]) -> Prepared:
    return prepare_image(*arguments)


class _ShardFile:
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
        return {"name": self.final.name, "samples": self.samples, "sha256": file_sha256(self.final),
                "labels": dict(sorted(self.labels.items()))}


RowsFactory = Callable[[], Iterable[Row]]


def _factory(rows: Iterable[Row] | RowsFactory) -> RowsFactory:
    """Rows that can be read once per split: a callable is called again, an iterator is kept in memory."""
    if callable(rows):
        return rows
    if iter(rows) is rows:  # a one-shot iterator
        kept = list(rows)
        return lambda: kept
    reusable = rows
    return lambda: reusable


class _Conversion:
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
        self._on_disk = {HASHES: 0, DROPS: 0}  # lines of each list already in its file

    def load(self) -> bool:
        """Restore from the journal; False when there is none (then old line files are cleared)."""
        path = self.out / JOURNAL
        if not path.is_file():
            for name in (HASHES, DROPS):
                (self.out / name).unlink(missing_ok=True)
            return False
        state = json.loads(path.read_text(encoding="utf-8"))
        if state["config"] != self.config:
            raise ValueError(_other_config(self.out, state["config"], self.config))
        self.split_index, self.position, self.rows_read = state["split_index"], state["position"], state["rows_read"]
        self.total_rows = state["total_rows"]
        self.shards = state["shards"]
        self.dropped, self.sections = Counter(state["dropped"]), Counter(state["sections"])
        self.hashes = _read_lines(self.out / HASHES)[: state["hashes"]]
        self.drops = _read_lines(self.out / DROPS)[: state["drops"]]
        for name, lines in ((HASHES, self.hashes), (DROPS, self.drops)):  # cut what the crash left beyond
            write_lines(self.out / name, lines)
            self._on_disk[name] = len(lines)
        return True

    def save(self) -> None:
        """Record progress: new hashes and drops first (appended), then the journal that says how
        many lines of them are valid."""
        for name, lines in ((HASHES, self.hashes), (DROPS, self.drops)):
            with open(self.out / name, "a", encoding="utf-8") as handle:
                handle.writelines(line + "\n" for line in lines[self._on_disk[name]:])
            self._on_disk[name] = len(lines)
        write_json(self.out / JOURNAL, {
            "config": self.config, "split_index": self.split_index, "position": self.position,
            "rows_read": self.rows_read, "total_rows": self.total_rows, "shards": self.shards,
            "dropped": dict(self.dropped),
            "sections": dict(self.sections), "hashes": len(self.hashes), "drops": len(self.drops),
        })


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def _other_config(out: Path, found: dict[str, Any], wanted: dict[str, Any]) -> str:
    changed = ", ".join(f"{k}: {found.get(k)!r} -> {wanted.get(k)!r}" for k in sorted(set(found) | set(wanted))
                        if found.get(k) != wanted.get(k))
    return (f"{out} holds shards made with other settings ({changed}); write to a new --output folder, "
            f"or delete this one to start again")


def write_shards(
    rows: Iterable[Row] | RowsFactory,
    output: str | os.PathLike[str],
    image_size: int = 256,
    shard_size: int = 1000,
    val_fraction: float = 0.05,
    test_fraction: float = 0.15,
    seed: int = 0,
    workers: int = 1,
    strict: bool = False,
    command: str = "",
    progress: bool = True,
    text: TextMode | str = TextMode.AUTO,
    text_only: bool = False,
    drop_duplicates: bool = True,
    source: str = "",
    views: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Write rows into ``{train,val,test}-NNNNNN.tar`` shards and ``manifest.json``.

    Each split is written in turn, reading the rows once per split (pass a callable that returns
    a fresh iterator to keep large archives out of memory). The report text is picked from its
    sections by ``text`` (see :class:`convirt.data.reports.TextMode`). Unusable rows are dropped,
    counted by reason in the manifest and listed in ``dropped.jsonl``. Rerunning into a folder
    left by an interrupted run resumes it; rerunning into a finished one returns its manifest.

    Args:
        rows: Rows from an archive reader, or a callable returning them.
        output: Output folder (created).
        image_size: Short side of the stored images, in pixels.
        shard_size: Samples per shard.
        val_fraction: Fraction of patients in ``val`` (rows with an official split keep it).
        test_fraction: Fraction of patients in ``test``.
        seed: Seed of the patient hash.
        workers: Processes that decode images.
        strict: Raise on the first row that cannot be used instead of skipping it.
        command: The command line, recorded in the manifest.
        progress: Show a progress bar.
        text: Which report sections become the sample text.
        text_only: Write reports without images (archives distributed without their images).
        drop_duplicates: Drop images whose stored pixels equal an earlier image's.
        source: Name of the archive reader, recorded in the manifest.
        views: Keep only rows of these projections (names, or the group ``frontal``; see
            :mod:`convirt.data.views`); other rows are dropped as ``view_excluded``, rows without a
            view as ``view_unknown``. ``None`` keeps every view.

    Returns:
        The manifest (also written to ``output/manifest.json``).

    Raises:
        ValueError: A row is unusable and ``strict`` is set, no row was usable, or ``output``
            holds a conversion made with other settings.
    """
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 0 <= val_fraction + test_fraction < 1:
        raise ValueError(f"val_fraction + test_fraction must be in [0, 1), got {val_fraction + test_fraction}")
    mode = parse_text_mode(text)
    config = {"source": source, "image_size": image_size, "shard_size": shard_size, "val_fraction": val_fraction,
              "test_fraction": test_fraction, "seed": seed, "text": mode.value, "text_only": text_only,
              "drop_duplicates": drop_duplicates, "strict": strict}
    if views is not None:  # only when set, so that folders written before the option stay valid
        config["views"] = sorted(parse_views(views))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).is_file():
        done = read_manifest(out)
        if "config" not in done:
            raise ValueError(f"{out} holds shards written by an older convirt ({done.get('format')}); write to a "
                             f"new --output folder, or delete this one to convert again")
        if done.get("config") != config:
            raise ValueError(_other_config(out, done.get("config") or {}, config))
        logger.info("%s is already complete", out)
        return done
    state = _Conversion(out, config)
    if state.load():
        logger.warning("resuming the conversion in %s at %s row %d", out, SPLITS[state.split_index], state.position)
    for stale in out.glob("*.tmp"):
        stale.unlink()
    make_rows = _factory(rows)
    pool = ProcessPoolExecutor(workers) if workers > 1 and not text_only else None
    try:
        while state.split_index < len(SPLITS):
            _write_split(state, make_rows, mode, workers, pool, progress, strict)
            state.split_index, state.position = state.split_index + 1, 0
            state.save()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return _finish(state, command)


def _write_split(state: _Conversion, make_rows: RowsFactory, mode: TextMode, workers: int,
                 pool: ProcessPoolExecutor | None, progress: bool, strict: bool) -> None:
    """Write one split's shards, from the journal's position on."""
    from tqdm.auto import tqdm

    config, split = state.config, SPLITS[state.split_index]
    source = make_rows()
    total = len(source) if isinstance(source, Sized) else state.total_rows
    rows = itertools.islice(iter(source), state.position, None)
    bar = tqdm(total=total, initial=state.position, desc=f"{split} shards", unit="row", disable=not progress)
    seen = set(state.hashes)
    keep_views = frozenset(config["views"]) if "views" in config else None
    logged: Counter[str] = Counter(dict(state.dropped))

    def drop(row: Row, reason: str, detail: str = "", cause: BaseException | None = None) -> None:
        detail = " ".join(detail.split())  # one line, in the log and in dropped.jsonl
        if strict:
            where = row.image_path or row.key
            raise ValueError(f"{reason.replace('_', ' ')}{': ' + detail if detail else ''}: {where} (row {row.key}); "
                             f"rerun without --strict to skip and count such rows") from cause
        state.dropped[reason] += 1
        record = {"key": row.key, "path": row.image_path, "split": split, "reason": reason}
        state.drops.append(json.dumps({**record, "detail": detail} if detail else record))
        logged[reason] += 1
        if logged[reason] <= _LOGGED_PER_REASON:
            logger.warning("skipping %s (%s): %s%s%s", row.key, row.image_path or "no image", reason,
                           f" ({detail})" if detail else "",
                           "; further rows dropped for this reason are listed in dropped.jsonl"
                           if logged[reason] == _LOGGED_PER_REASON else "")

    def candidates(need: int) -> list[Row]:
        """The next ``need`` rows of this split that have usable text."""
        found: list[Row] = []
        while len(found) < need:
            row = next(rows, None)
            if row is None:
                break
            state.position += 1
            bar.update(1)
            row_split = row.split if row.split in SPLITS else assign_split(
                row.patient_id, config["val_fraction"], config["test_fraction"], config["seed"])
            if row_split != split:
                continue
            state.rows_read += 1
            try:
                reason, kept = check_row(row, keep_views, mode, state.sections)
            except Exception as error:  # noqa: BLE001 (one row must not end the run; counted by type)
                drop(row, f"unexpected_error:{type(error).__name__}", str(error), error)
                continue
            if reason:
                drop(row, reason)
            elif kept is not None:
                found.append(kept)
        return found

    shard: _ShardFile | None = None
    while True:
        need = config["shard_size"] - (shard.samples if shard else 0)
        batch = candidates(need)
        if not batch:
            break
        if config["text_only"]:
            prepared: Iterable[Prepared] = [(None, None, None, "")] * len(batch)
        else:
            jobs = [(row.image_path, config["image_size"], strict) for row in batch]
            prepared = pool.map(_prepare_star, jobs, chunksize=max(1, len(jobs) // (4 * workers))) if pool \
                else map(_prepare_star, jobs)
        results = iter(prepared)
        for row in batch:
            try:
                jpeg, digest, reason, detail = next(results)
            except Exception as error:  # strict: an unexpected error that prepare_image re-raised (in order)
                drop(row, f"unexpected_error:{type(error).__name__}", str(error), error)
                raise
            if reason is not None:
                drop(row, reason, detail)
                continue
            try:
                sample: dict[str, Any] = {KEY: row.key, TEXT: row.text.encode("utf-8"),
                                          META: json.dumps(row.metadata(), sort_keys=True).encode("utf-8")}
            except Exception as error:  # noqa: BLE001 (one row must not end the run; counted by type)
                drop(row, f"unexpected_error:{type(error).__name__}", str(error), error)
                continue
            if digest is not None and config["drop_duplicates"]:
                if digest in seen:
                    drop(row, "duplicate_image")
                    continue
                seen.add(digest)
                state.hashes.append(digest)
            if jpeg is not None:
                sample[IMAGE] = jpeg
            if shard is None:
                shard = _ShardFile(state.out, f"{split}-{len(state.shards[split]):06d}.tar")
            shard.write(sample, row.labels)
        if shard is not None and shard.samples >= config["shard_size"]:
            state.shards[split].append(shard.close())
            shard = None
            state.save()
    if shard is not None:
        state.shards[split].append(shard.close())
    state.total_rows = state.position
    bar.close()


def _finish(state: _Conversion, command: str) -> dict[str, Any]:
    written = sum(shard["samples"] for shards in state.shards.values() for shard in shards)
    if written == 0:
        raise ValueError(f"no usable samples: {state.rows_read} rows read, all dropped "
                         f"({dict(state.dropped) or 'no rows in the input'})")
    splits: dict[str, Any] = {}
    for split in SPLITS:
        labels: Counter[str] = Counter()
        for shard in state.shards[split]:
            labels.update(shard["labels"])
        splits[split] = {
            "samples": sum(shard["samples"] for shard in state.shards[split]),
            "shards": [{k: v for k, v in shard.items() if k != "labels"} for shard in state.shards[split]],
            "labels": dict(sorted(labels.items())),
        }
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "source": state.config["source"],
        "image_size": state.config["image_size"],
        "text_only": state.config["text_only"],
        "rows_read": state.rows_read,
        "samples": written,
        "dropped": dict(sorted(state.dropped.items())),
        "sections": dict(sorted(state.sections.items())),
        "splits": splits,
        "config": state.config,
        "command": command,
    }
    write_json(state.out / MANIFEST, manifest)
    for name in (JOURNAL, HASHES):
        (state.out / name).unlink(missing_ok=True)
    if not state.drops:
        (state.out / DROPS).unlink(missing_ok=True)
    return manifest
