"""Text-only negatives: report texts without images that join each training batch as negatives.

A pair archive of one disease (covid-pairs: 11 normal films of 529) never shows the image side
what a normal study's report says. Report archives without their images (Open-i, or the
text-only part of a PACS export) do; drawn from them, normal reports become negatives of every
image in a batch (see :class:`convirt.losses.TextNegativesClipLoss`). Each stage is a plain
generator, testable on a list.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from convirt.data.reports import TextMode, select_text
from convirt.data.section_pairs import iter_split_metadata
from convirt.data.transforms import clean_report


def read_negative_texts(
    shards: str | os.PathLike[str], labels: Sequence[str] | None = None, split: str = "train"
) -> list[str]:
    """The distinct report texts (findings + impression, else the free text) of a split.

    Args:
        shards: A `convirt shards` folder; text-only shards (Open-i without images) serve.
        labels: Keep only reports carrying one of these labels (``["No Finding"]``); ``None``
            keeps every report.
        split: The split read (default ``train``: the others stay held out).

    Raises:
        ValueError: No report of the split is left (the message names the most frequent labels).
    """
    wanted = set(labels) if labels is not None else None
    texts: list[str] = []
    seen: set[str] = set()
    counts: Counter[str] = Counter()
    for meta in iter_split_metadata(shards, split):
        labels_of = meta.get("labels") or []
        counts.update(labels_of)
        if wanted is not None and not wanted.intersection(labels_of):
            continue
        text = clean_report(select_text(meta.get("sections") or {}, TextMode.AUTO))
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
    if not texts:
        common = ", ".join(f"{name} ({n})" for name, n in counts.most_common(8)) or "none"
        raise ValueError(
            f"no report of split {split!r} in {Path(shards)} "
            f"{'has a label of ' + str(sorted(wanted)) if wanted else 'has text'}; "
            f"its most frequent labels: {common}"
        )
    return texts


def add_negatives(
    batches: Iterable[dict[str, Any]],
    texts: Sequence[str],
    tokenizer: Callable[[list[str]], Any],
    per_batch: int,
    seed: int,
    start: int = 0,
) -> Iterator[dict[str, Any]]:
    """Each batch with ``negative_text``: ``per_batch`` tokenised texts drawn without replacement
    (all of them when there are fewer).

    Batch ``i`` of the stream draws with a generator seeded by ``(seed, start + i)``: a stream
    resumed at batch ``start`` draws what the uninterrupted stream drew from there on.

    Raises:
        ValueError: ``per_batch`` is not positive or there are no texts.
    """
    if per_batch <= 0:
        raise ValueError(f"negatives per batch must be positive, got {per_batch}")
    if not texts:
        raise ValueError("no negative texts to draw from")
    pool = list(texts)
    for index, batch in enumerate(batches, start=start):
        rng = random.Random(f"{seed}:{index}")  # a str seed hashes the same in every process
        yield {**batch, "negative_text": tokenizer(rng.sample(pool, min(per_batch, len(pool))))}
