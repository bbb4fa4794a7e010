"""Inputs for embedding and evaluation: a shard folder, shards without a manifest (a folder of tars, a
pattern or a URL, as other tools write them), a CSV of image paths, or a folder of images.

Shards stream through :func:`convirt.data.stream.build_batches`; a CSV or an image folder is read
into rows up front (paths and metadata only, cheap even for millions of images) and loaded by a
map-style dataset, so a distributed sampler can split it across ranks without repeating images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from convirt.data.fields import CONVIRT_FIELDS, Fields
from convirt.data.foreign import is_foreign_shards, open_foreign_shards
from convirt.data.images import load_grayscale
from convirt.data.labels import LABEL_LAYOUTS, detect_format, read_label_rows
from convirt.data.schema import MANIFEST, Row, checked_findings
from convirt.data.shards import require_images, shard_urls
from convirt.data.sources.csv import key_from_path
from convirt.data.stream import Sample, build_batches, collate_samples, pad_id_of, text_group
from convirt.data.test_sets import TEST_SET_FORMATS, TEST_SET_LAYOUTS, read_test_set

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
# What to do when a generic table's labels column holds numbers or coordinates, not finding names.
CSV_NEXT_STEP = "put finding names in its labels column, ';'-separated (No Finding for a normal image)"


def parse_where(items: Sequence[str] | None) -> dict[str, str]:
    """``["source=nih", "view=PA"]`` -> ``{"source": "nih", "view": "PA"}``.

    Raises:
        ValueError: An item has no ``=`` or an empty field name.
    """
    where: dict[str, str] = {}
    for item in items or []:
        field, sep, value = item.partition("=")
        if not sep or not field.strip():
            raise ValueError(f"bad filter {item!r}: write FIELD=VALUE, e.g. source=nih-chestxray14")
        where[field.strip()] = value.strip()
    return where


def metadata_matches(meta: dict[str, Any], where: dict[str, str]) -> bool:
    """Whether a sample's metadata has every ``field=value`` of ``where`` (a label list matches
    when it contains the value)."""
    for field, value in where.items():
        found = meta.get(field, "")
        if isinstance(found, list | tuple):
            if value not in found:
                return False
        elif str(found) != value:
            return False
    return True


def read_split_file(path: str | os.PathLike[str]) -> set[str]:
    """The image file names a split file lists, as archives distribute them.

    Each line names one image: its first token with an image suffix, so ChestX-ray14's
    ``test_list.txt`` (a bare name per line) and COVIDx's ``test.txt`` (``patient file class
    source``) both read; a path keeps its last part. Blank lines and ``#`` comments are skipped.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: No line names an image.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"split file not found: {source}")
    names = set()
    for line in source.read_text(encoding="utf-8").splitlines():
        tokens = [t.strip(",") for t in line.split("#", 1)[0].replace(",", " ").split()]
        name = next((t for t in tokens if Path(t).suffix.lower() in IMAGE_SUFFIXES), None)
        if name:
            names.add(Path(name).name)
    if not names:
        raise ValueError(f"{source} names no image file ({', '.join(IMAGE_SUFFIXES)}), one per line")
    return names


def is_shard_folder(path: str | os.PathLike[str]) -> bool:
    """A folder written by :func:`convirt.data.writer.write_shards` (it holds a manifest)."""
    return (Path(path) / MANIFEST).is_file()


def read_image_rows(
    path: str | os.PathLike[str],
    where: dict[str, str] | None = None,
    label_format: str = "auto",
    images: str | None = None,
    uncertain: str = "zeros",
    split_file: str | os.PathLike[str] | None = None,
) -> list[Row]:
    """Rows of a label table or of every image under a folder.

    A table is read by :func:`convirt.data.labels.read_label_rows` (generic CSV with an ``image``
    column, CheXpert or NIH ``Data_Entry_2017``; ``label_format``, ``images`` and ``uncertain``
    are passed on), or, with a ``label_format`` of :data:`convirt.data.test_sets.TEST_SET_FORMATS`,
    by that public test set's reader (``images``: its archive folder, by default the table's).
    Folder rows are sorted by path; their key is the relative path, their patient the key. With
    ``split_file`` (:func:`read_split_file`), only the rows whose image file name it lists are
    kept: the official split, named by the file its archive distributes. Every reader's findings go
    through one check (:func:`convirt.data.schema.checked_findings`): names, never coordinates, ids
    or numbers.

    Raises:
        FileNotFoundError: ``path`` or ``split_file`` does not exist, or a folder holds no image.
        ValueError: No row is left after the ``where`` filter or the split file (the message says
            which), or a finding is a coordinate, an id or a number (the message names the file, the
            column its findings came from and the values).
    """
    source = Path(path)
    if label_format in TEST_SET_FORMATS:
        root = Path(images) if images else (source if source.is_dir() else source.parent)
        rows = list(checked_findings(read_test_set(label_format, source, root), source, TEST_SET_LAYOUTS[label_format]))
    elif source.is_file():
        table = read_label_rows(source, label_format, images, uncertain)
        kind = detect_format(source) if label_format == "auto" else label_format
        rows = list(checked_findings(table, source, LABEL_LAYOUTS[kind], CSV_NEXT_STEP if kind == "csv" else ""))
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {source}")
        rows = []
        for file in files:
            key = key_from_path(str(file.relative_to(source)))
            rows.append(Row(key=key, image_path=str(file), text="", patient_id=key, source=source.name))
    else:
        raise FileNotFoundError(f"no such file or folder: {source}")
    if split_file is not None:
        listed = read_split_file(split_file)
        rows = [row for row in rows if Path(row.image_path).name in listed]
        if not rows:
            raise ValueError(f"no image of {source} is listed in {split_file}")
    if where:
        rows = [row for row in rows if metadata_matches({**row.metadata(), "split": row.split or ""}, where)]
        if not rows:
            shown = ", ".join(f"{k}={v}" for k, v in where.items())
            raise ValueError(f"no row of {source} matches {shown}")
    return rows


class RowDataset(Dataset[Sample]):
    """Rows -> ``(key, image tensor, text, metadata, text group)`` samples, loaded on access.

    The metadata is the row's plus ``path`` (the image file).
    """

    def __init__(
        self,
        rows: Sequence[Row],
        image_transform: Callable[[Image.Image], torch.Tensor],
        text_transform: Callable[[str], str] | None = None,
    ) -> None:
        self.rows = list(rows)
        self.image_transform = image_transform
        self.text_transform = text_transform or (lambda text: text)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        row = self.rows[index]
        try:
            image = load_grayscale(row.image_path)
        except (OSError, ValueError) as error:
            raise OSError(f"cannot read image {row.image_path!r} (row {row.key}): {error}") from error
        meta = {**row.metadata(), "path": row.image_path}
        return row.key, self.image_transform(image), self.text_transform(row.text), meta, text_group(row.text)


def build_input_batches(
    path: str | os.PathLike[str],
    image_transform: Callable[[Image.Image], torch.Tensor],
    tokenizer: Callable[..., torch.Tensor] | None,
    batch_size: int,
    split: str = "test",
    text_transform: Callable[[str], str] | None = None,
    where: dict[str, str] | None = None,
    skip_keys: Container[str] | None = None,
    num_workers: int = 0,
    split_by_rank: bool | tuple[int, int] = False,
    label_format: str = "auto",
    images: str | None = None,
    uncertain: str = "zeros",
    texts_only: bool = False,
    split_file: str | os.PathLike[str] | None = None,
    fields: Fields | None = None,
) -> Iterable[dict[str, Any]]:
    """Batch dicts (as :func:`convirt.data.stream.build_batches` makes them) of any input, in order.

    With ``texts_only``, shard batches hold the reports without images (images are not decoded,
    and text-only shards, such as Open-i converted without its PNGs, can be read).

    Args:
        path: A shard folder (then ``split`` picks the split), shards without a manifest (a folder of
            tars, a pattern or a URL: :mod:`convirt.data.foreign`), a CSV file or an image folder.
        image_transform: PIL image -> tensor.
        tokenizer: Texts -> ``(B, L)`` token ids.
        batch_size: Samples per batch.
        split: Shard split to read.
        text_transform: Applied to each report.
        where: Keep only samples whose metadata has these ``field=value`` pairs.
        skip_keys: Keys to leave out (already done).
        num_workers: Data-loader processes.
        split_by_rank: Shards only: each distributed rank reads its own shards, rank ``r`` of ``n``
            given as ``(r, n)`` (or ``True``: webdataset's lookup, see :func:`convirt.data.stream.build_batches`).
            (A CSV or folder is split by the caller's sampler instead.)
        label_format, images, uncertain, split_file: How to read a label table and which of
            its rows (see :func:`read_image_rows`); a shard folder carries its own split.
        fields: Shards without a manifest: the extensions read as image, text and metadata
            (:func:`convirt.data.fields.parse_fields`; default: the usual ones, as the first sample has them).

    Returns:
        A :class:`torch.utils.data.DataLoader` over the batches; for a CSV or folder its
        dataset is a :class:`RowDataset` so that a distributed sampler can be put in.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    shards = _shard_urls(path, split, split_file, fields, texts_only)
    if shards is not None:
        urls, read = shards
        keep = (lambda meta: metadata_matches(meta, where)) if where else None
        dataset = build_batches(
            urls,
            None if texts_only else image_transform,
            tokenizer,
            batch_size,
            text_transform=text_transform,
            skip_keys=skip_keys,
            keep=keep,
            split_by_rank=split_by_rank,
            fields=read,
        )
        return DataLoader(dataset, batch_size=None, num_workers=num_workers)
    rows = read_image_rows(path, where, label_format, images, uncertain, split_file)
    if skip_keys:
        rows = [row for row in rows if row.key not in skip_keys]
    pad_id = pad_id_of(tokenizer)
    return DataLoader(
        RowDataset(rows, image_transform, text_transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=partial(collate_samples, tokenizer=tokenizer, pad_id=pad_id),
    )


def _shard_urls(
    path: str | os.PathLike[str],
    split: str,
    split_file: str | os.PathLike[str] | None,
    fields: Fields | None,
    texts_only: bool,
) -> tuple[list[str], Fields] | None:
    """A split's shards and the fields to read, for a shard folder or shards without a manifest; else ``None``.

    Raises:
        ValueError: A split file for shards, fields for a convirt shard folder, or shards without what
            the batches need (images; texts with ``texts_only``).
    """
    if split_file is not None and (is_shard_folder(path) or is_foreign_shards(path)):
        raise ValueError(f"{path} holds shards: they carry their own split (split=...), not a split file")
    if is_shard_folder(path):
        if fields is not None and fields.given:
            raise ValueError(f"{path} is a `convirt shards` folder: its fields are jpg, txt, json (no field options)")
        if not texts_only:
            require_images(path)
        return shard_urls(str(path), split), CONVIRT_FIELDS
    if not is_foreign_shards(path):
        return None
    shards = open_foreign_shards(path, fields)
    shards.require(*(("text", "reading texts") if texts_only else ("image", "reading images")))
    return shards.urls(split), shards.fields


def build_eval_batches(
    path: str | os.PathLike[str],
    preprocess_cfg: dict[str, Any],
    tokenizer: Callable[..., torch.Tensor] | None,
    batch_size: int = 64,
    **options: Any,
) -> Iterable[dict[str, Any]]:
    """Batches of any input preprocessed as a model expects for evaluation: its eval image
    transform (``preprocess_cfg``: size, mean, std, resize) and the reports cleaned as in training.

    Each sample comes once and in order. ``options`` are those of :func:`build_input_batches`
    (``split``, ``where``, ``skip_keys``, ``num_workers``, ``split_by_rank``, ``label_format``,
    ``images``, ``uncertain``, ``split_file``, ``texts_only``, ``fields``).
    """
    from convirt.data.transforms import clean_report, image_transform_for

    return build_input_batches(
        path,
        image_transform_for(preprocess_cfg, train=False),
        tokenizer,
        batch_size,
        text_transform=clean_report,
        **options,
    )
