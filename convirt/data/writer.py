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

from convirt._io import write_json
from convirt.data.journal import DROPS, HASHES, JOURNAL, SAMPLES, Conversion, ShardFile, other_config
from convirt.data.parts import Part, chain_row, parse_part, part_of, shard_name
from convirt.data.prepare import Prepared, check_row, prepare_image
from convirt.data.reports import TextMode, parse_text_mode
from convirt.data.schema import IMAGE, KEY, MANIFEST, META, SPLITS, TEXT, Row
from convirt.data.shards import read_manifest
from convirt.data.views import parse_views

logger = logging.getLogger(__name__)

FORMAT = "convirt-shards/2"
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
    part: Part | str | None = None,
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
        part: Convert only this part of the patients (``"2/8"``, see :mod:`convirt.data.parts`), into
            ``{split}-pNNN-NNNNNN.tar`` shards; every row is still read, and each kept row gets the
            split a whole run gives it. Join the parts with :func:`convirt.data.parts.merge_parts`.

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
    config = {
        "source": source,
        "image_size": image_size,
        "shard_size": shard_size,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "text": mode.value,
        "text_only": text_only,
        "drop_duplicates": drop_duplicates,
        "strict": strict,
    }
    if views is not None:  # only when set, so that folders written before the option stay valid
        config["views"] = sorted(parse_views(views))
    if part is not None:  # likewise; a journal or a finished folder of another part is refused
        config["part"] = list(parse_part(part))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).is_file():
        done = read_manifest(out)
        if "config" not in done:
            raise ValueError(
                f"{out} holds shards written by an older convirt ({done.get('format')}); write to a "
                f"new --output folder, or delete this one to convert again"
            )
        if done.get("config") != config:
            raise ValueError(other_config(out, done.get("config") or {}, config))
        logger.info("%s is already complete", out)
        return done
    state = Conversion(out, config)
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


def _write_split(
    state: Conversion,
    make_rows: RowsFactory,
    mode: TextMode,
    workers: int,
    pool: ProcessPoolExecutor | None,
    progress: bool,
    strict: bool,
) -> None:
    """Write one split's shards, from the journal's position on."""
    from tqdm.auto import tqdm

    config, split = state.config, SPLITS[state.split_index]
    source = make_rows()
    total = len(source) if isinstance(source, Sized) else state.total_rows
    rows = itertools.islice(iter(source), state.position, None)
    bar = tqdm(total=total, initial=state.position, desc=f"{split} shards", unit="row", disable=not progress)
    seen = set(state.hashes)
    keep_views = frozenset(config["views"]) if "views" in config else None
    part = Part(*config["part"]) if "part" in config else None
    logged: Counter[str] = Counter(dict(state.dropped))

    def drop(row: Row, reason: str, detail: str = "", cause: BaseException | None = None) -> None:
        detail = " ".join(detail.split())  # one line, in the log and in dropped.jsonl
        if strict:
            where = row.image_path or row.key
            raise ValueError(
                f"{reason.replace('_', ' ')}{': ' + detail if detail else ''}: {where} (row {row.key}); "
                f"rerun without --strict to skip and count such rows"
            ) from cause
        state.dropped[reason] += 1
        record = {"key": row.key, "path": row.image_path, "split": split, "reason": reason}
        state.drops.append(json.dumps({**record, "detail": detail} if detail else record))
        logged[reason] += 1
        if logged[reason] <= _LOGGED_PER_REASON:
            logger.warning(
                "skipping %s (%s): %s%s%s",
                row.key,
                row.image_path or "no image",
                reason,
                f" ({detail})" if detail else "",
                "; further rows dropped for this reason are listed in dropped.jsonl"
                if logged[reason] == _LOGGED_PER_REASON
                else "",
            )

    def candidates(need: int) -> list[tuple[int, Row]]:
        """The next ``need`` rows of this split (and part) that have usable text, with their row numbers."""
        found: list[tuple[int, Row]] = []
        while len(found) < need:
            row = next(rows, None)
            if row is None:
                break
            state.position += 1
            bar.update(1)
            if part is not None:
                if state.split_index == 0:
                    state.input_sha256 = chain_row(state.input_sha256, row)
                # The part goes by the identity the split goes by: the patient id (the readers put the
                # row's key there when the archive names no patient), so a patient is in one part.
                if part_of(row.patient_id, part.total) != part.number:
                    continue
            row_split = (
                row.split
                if row.split in SPLITS
                else assign_split(row.patient_id, config["val_fraction"], config["test_fraction"], config["seed"])
            )
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
                found.append((state.position - 1, kept))
        return found

    shard: ShardFile | None = None
    while True:
        need = config["shard_size"] - (shard.samples if shard else 0)
        batch = candidates(need)
        if not batch:
            break
        if config["text_only"]:
            prepared: Iterable[Prepared] = [Prepared(None, None, None, "")] * len(batch)
        else:
            jobs = [(row.image_path, config["image_size"], strict) for _, row in batch]
            prepared = (
                pool.map(_prepare_star, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
                if pool
                else map(_prepare_star, jobs)
            )
        results = iter(prepared)
        for number, row in batch:
            try:
                jpeg, digest, reason, detail = next(results)
            except Exception as error:  # strict: an unexpected error that prepare_image re-raised (in order)
                drop(row, f"unexpected_error:{type(error).__name__}", str(error), error)
                raise
            if reason is not None:
                drop(row, reason, detail)
                continue
            try:
                sample: dict[str, Any] = {
                    KEY: row.key,
                    TEXT: row.text.encode("utf-8"),
                    META: json.dumps(row.metadata(), sort_keys=True).encode("utf-8"),
                }
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
                shard = ShardFile(state.out, shard_name(split, len(state.shards[split]), part))
            shard.write(sample, row.labels)
            if part is not None:
                where = {"key": row.key, "split": split, "row": number, "shard": shard.final.name, "pixels": digest}
                state.samples.append(json.dumps(where))
        if shard is not None and shard.samples >= config["shard_size"]:
            state.shards[split].append(shard.close())
            shard = None
            state.save()
    if shard is not None:
        state.shards[split].append(shard.close())
    state.total_rows = state.position
    bar.close()


def _finish(state: Conversion, command: str) -> dict[str, Any]:
    written = sum(shard["samples"] for shards in state.shards.values() for shard in shards)
    if written == 0 and "part" not in state.config:  # a part may hold no sample; the merge checks the whole
        raise ValueError(
            f"no usable samples: {state.rows_read} rows read, all dropped "
            f"({dict(state.dropped) or 'no rows in the input'})"
        )
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
    if "part" in state.config:
        number, total = state.config["part"]
        manifest["part"] = {
            "number": number,
            "total": total,
            "input_rows": state.total_rows,
            "input_sha256": state.input_sha256,
        }
    else:
        (state.out / SAMPLES).unlink(missing_ok=True)
    write_json(state.out / MANIFEST, manifest)
    for name in (JOURNAL, HASHES):
        (state.out / name).unlink(missing_ok=True)
    if not state.drops:
        (state.out / DROPS).unlink(missing_ok=True)
    return manifest
