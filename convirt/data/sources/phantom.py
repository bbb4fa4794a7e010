"""A synthetic chest-radiograph generator: the embedded default data of convirt.

This is a pipeline test bed, not a medical dataset. It draws a frontal chest film (body
outline, lungs, heart, diaphragm domes, ribs, clavicles, spine, vessel markings) with
findings painted in, and writes a free-text report for each image from varied phrasings:
named findings, descriptions of what is seen, hedges, negations of absent findings, and the
boilerplate normal reports that real archives repeat. Everything is deterministic from a seed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from convirt._io import atomic_path
from convirt.data.schema import NO_FINDING, Row
from convirt.data.sources.phantom_case import (
    CARDIOMEGALY,
    CONSOLIDATION,
    EDEMA,
    EFFUSION,
    FINDINGS,
    NODULE,
    PNEUMOTHORAX,
    SOURCE,
    PhantomCase,
    sample_case,
)
from convirt.data.sources.phantom_image import render_image
from convirt.data.sources.phantom_report import write_report

__all__ = [
    "CARDIOMEGALY",
    "CONSOLIDATION",
    "EDEMA",
    "EFFUSION",
    "FINDINGS",
    "NODULE",
    "PNEUMOTHORAX",
    "SOURCE",
    "PhantomCase",
    "generate_cases",
    "make_sample",
    "read_phantom_rows",
    "render_image",
    "sample_case",
    "write_phantom",
    "write_report",
]


def _stream(seed: int, index: int, purpose: str) -> np.random.Generator:
    """The random stream of one sample for one purpose (case, image, report): each is independent."""
    return np.random.default_rng([seed, index, ("case", "image", "report").index(purpose)])


def generate_cases(num_samples: int, seed: int = 0) -> Iterator[tuple[str, PhantomCase, int]]:
    """Yield ``(key, case, index)`` per sample; a sample depends only on the seed and its index."""
    for index in range(num_samples):
        yield f"phantom-{seed}-{index:06d}", sample_case(_stream(seed, index, "case")), index


def make_sample(case: PhantomCase, seed: int, index: int, size: int = 256) -> tuple[np.ndarray, str]:
    """Render the image and write the report of one case, each from its own random stream."""
    image = render_image(case, _stream(seed, index, "image"), size)
    return image, write_report(case, _stream(seed, index, "report"))


def _render_to(path: str, case: PhantomCase, seed: int, index: int, size: int) -> None:
    with atomic_path(path, suffix=".tmp.png") as tmp:
        Image.fromarray(render_image(case, _stream(seed, index, "image"), size)).save(tmp)


def write_phantom(
    output: str | os.PathLike[str],
    num_samples: int,
    seed: int = 0,
    size: int = 256,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write phantom images and a ``rows.csv`` in the generic CSV layout.

    Images already on disk are kept (a rerun after an interruption only draws the missing
    ones; every sample depends only on the seed and its index, so the result is the same).

    Args:
        output: Folder to create; ``images/`` and ``rows.csv`` go inside.
        num_samples: Number of image-report pairs.
        seed: Seed; the same seed gives the same files.
        size: Image side in pixels.
        workers: Processes drawing images.
        progress: Show a progress bar.

    Returns:
        Path of ``rows.csv`` (columns ``image, text, patient_id, labels, view, source``).
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    from tqdm.auto import tqdm

    out = Path(output)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    jobs = []
    for key, case, index in generate_cases(num_samples, seed):
        image_rel = f"images/{key}.png"
        if not (out / image_rel).exists():
            jobs.append((str(out / image_rel), case, seed, index, size))
        text = write_report(case, _stream(seed, index, "report"))
        rows.append(
            Row(
                key=key,
                image_path=image_rel,
                text=text,
                patient_id=key,
                labels=list(case.findings) or [NO_FINDING],
                view="PA",
                source=SOURCE,
            )
        )
    bar = tqdm(total=len(jobs), desc="phantom", unit="img", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_render_to, *zip(*jobs), chunksize=16):
                bar.update()
    else:
        for job in jobs:
            _render_to(*job)
            bar.update()
    bar.close()
    csv_path = out / "rows.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "text", "patient_id", "labels", "view", "source"])
        for row in rows:
            writer.writerow([row.image_path, row.text, row.patient_id, ";".join(row.labels), row.view, row.source])
    return csv_path


def read_phantom_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """The rows of a folder written by ``convirt phantom`` (its ``rows.csv``), or of that CSV itself.

    Raises:
        FileNotFoundError: No ``rows.csv``; the message says how to draw one.
    """
    from convirt.data.sources.csv import read_csv_rows

    table = Path(path)
    if table.is_dir():
        table = table / "rows.csv"
    if not table.is_file():
        raise FileNotFoundError(f"no phantom rows at {table}: draw them with `convirt phantom --output DIR`")
    return read_csv_rows(table, source_name=SOURCE)
