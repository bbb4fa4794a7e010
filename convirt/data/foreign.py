"""Shards without a convirt manifest: a folder of tars, a brace pattern or a URL, as other tools write them.

img2dataset and open_clip's pipelines write ``jpg`` + ``txt`` + ``json`` samples (``00000.tar``, ...) and
no ``manifest.json``. :func:`open_foreign_shards` settles what such shards hold before they stream:

- fields: the first sample of the first local tar is read from its headers (a few members) and each
  role (:class:`convirt.data.fields.Fields`) takes the first of its extensions the sample has; remote
  shards are not opened first, and each sample gives the first of them it has.
- splits: tars of a folder named ``train-*`` / ``val-*`` / ``test-*`` (``_`` or ``.`` after the name
  too) are those splits; a folder of other names, a pattern or a URL is one split, read whatever the
  split asked (it is said).
- counts: a folder's samples are counted from its tar headers (no member is read); a pattern or URL is
  not opened to count it.

:meth:`ForeignShards.describe` says all of that in one line, for the commands to print.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

from webdataset.tariterators import base_plus_ext

from convirt.data.fields import MAX_FIELD_BYTES, ROLES, Fields
from convirt.data.schema import MANIFEST, SPLITS
from convirt.data.urls import expand_shard_urls

_SPLIT_PREFIX = re.compile(rf"^({'|'.join(SPLITS)})(?=[-_.])")
_FIRST_MEMBERS = 64  # the first sample's fields are among the first few members


TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")  # webdataset reads gzipped tars as they are


def is_foreign_shards(path: str | os.PathLike[str]) -> bool:
    """A folder of tars (``.tar``, ``.tar.gz``, ``.tgz``) without ``manifest.json``, a tar file, or a brace
    pattern, ``::`` list, ``pipe:`` command or URL of tars."""
    text = str(path)
    if any(mark in text for mark in ("://", "::", "{")) or text.startswith("pipe:"):
        return ".tar" in text or ".tgz" in text
    local = Path(text)
    if local.is_dir():
        return not (local / MANIFEST).is_file() and bool(_tars_in(local))
    return local.is_file() and local.name.endswith(TAR_SUFFIXES)


def _tars_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.name.endswith(TAR_SUFFIXES) and path.is_file())


@dataclass(frozen=True)
class ForeignShards:
    """Shards without a manifest, as :func:`open_foreign_shards` found them.

    Attributes:
        location: The folder, pattern or URL given.
        tars: Every shard's path or URL, in order.
        splits: Split -> its tars, from the tar names (a folder only); ``None``: one split.
        fields: What is read as image, text and metadata (narrowed to the first sample's, where it was read).
        first: The extensions of the first sample; ``None``: remote shards, not opened.
        labelled: Whether the first sample's metadata has ``labels`` (``None``: not read).
        folder: Whether ``location`` is a local folder (its samples can be counted).
    """

    location: str
    tars: tuple[str, ...]
    splits: dict[str, tuple[str, ...]] | None
    fields: Fields
    first: tuple[str, ...] | None
    labelled: bool | None
    folder: bool

    def urls(self, split: str | None = None) -> list[str]:
        """The tars of ``split``; every tar where the names carry no split.

        Raises:
            ValueError: An unknown split, or one that no tar is named for.
        """
        if self.splits is None or split is None:
            return list(self.tars)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        if not self.splits[split]:
            raise ValueError(f"no {split} shards in {self.location}: its tars are named by split ({self._by_split()})")
        return list(self.splits[split])

    def count(self, split: str | None = None) -> int:
        """The samples of ``split`` (:meth:`urls`), counted from their tar headers (a folder only).

        Raises:
            ValueError: The shards are not a local folder.
        """
        if not self.folder:
            raise ValueError(f"{self.location} is a pattern or URL: its samples are not counted (say how many)")
        return sum(_count_samples(tar) for tar in self.urls(split))

    def require(self, role: str, purpose: str) -> None:
        """Refuse shards whose samples have no ``role`` field (as far as the first sample says).

        Raises:
            ValueError: Naming what was looked for, what the first sample has and how to name the field.
        """
        if not self.fields.of(role):
            has = ", ".join(self.first or ()) or "nothing"
            looked = ", ".join(Fields().of(role))
            raise ValueError(
                f"{purpose} needs the {role} field, and the first sample of {self.location} has {has} (looked for "
                f"{looked}): name it as {role}=EXT (--field, or data.fields in a config)"
            )

    def describe(self, split: str | None = None, samples: int | None = None) -> str:
        """One line: the tars, the fields read, the labels, the splits (and ``split``'s sample count, where given)."""
        where = "a folder" if self.folder else "a pattern or URL"
        if self.first is None:
            got = "; ".join(f"{r}: first of .{'/.'.join(self.fields.of(r))}" for r in ROLES if self.fields.of(r))
            fields = f"fields per sample ({got}; remote shards are not opened first)"
        else:
            fields = ", ".join(_role_words(role, self.fields.of(role)) for role in ROLES)
            fields += f" (from the first sample's {', '.join(self.first)})"
        labels = {
            True: "labels from the metadata's 'labels'",
            False: "no labels in the metadata",
            None: "labels unknown",
        }
        if self.splits is None:
            asked = f" ({split!r} asked, read as all)" if split else ""
            splits = f"splits: none in the tar names, all {len(self.tars)} read as one{asked}"
        else:
            splits = f"splits by tar name: {self._by_split()}" + (f"; reading {split}" if split else "")
        counted = f"; {samples} samples counted from the tar headers" if samples is not None else ""
        return (
            f"shards without a manifest: {len(self.tars)} tars in {where}; {fields}; {labels[self.labelled]}; "
            f"{splits}{counted}"
        )

    def _by_split(self) -> str:
        return ", ".join(f"{s} {len(self.splits[s])} tars" for s in SPLITS) if self.splits else ""


def _role_words(role: str, extensions: tuple[str, ...]) -> str:
    name = {"image": "images", "text": "texts", "meta": "metadata"}[role]
    return f"{name} from .{extensions[0]}" if extensions else f"no {name}"


def open_foreign_shards(path: str | os.PathLike[str], fields: Fields | None = None) -> ForeignShards:
    """The tars, splits and fields of shards without a manifest (see the module's description).

    Args:
        path: A folder of tars, a tar, a brace pattern, a ``::`` list or a URL.
        fields: The extensions to look for per role (default: :class:`convirt.data.fields.Fields`).

    Raises:
        FileNotFoundError: A folder without tars.
        ValueError: A folder mixing tars named by split with others, an unreadable first tar, or a field
            named in ``fields`` that the first sample does not have.
    """
    fields = fields or Fields()
    text, local = str(path), Path(path)
    folder = local.is_dir()
    if folder:
        tars = tuple(str(tar) for tar in _tars_in(local))
        if not tars:
            raise FileNotFoundError(f"no .tar shards in {text}")
    else:
        tars = tuple(expand_shard_urls(text))
    splits = _splits(text, tars) if folder else None
    if "://" in text or text.startswith("pipe:"):
        return ForeignShards(text, tars, splits, fields, None, None, folder)
    if missing := next((tar for tar in tars if not Path(tar).is_file()), None):
        raise FileNotFoundError(f"no shard at {missing} (of {text})")
    first = _first_sample(tars[0], fields.meta)
    image, text_fields, meta = (_present(role, fields, first, tars[0]) for role in ROLES)
    chosen = replace(fields, image=image, text=text_fields, meta=meta)
    labelled = _has_labels(first[meta[0]] if meta else None)
    return ForeignShards(text, tars, splits, chosen, tuple(sorted(first)), labelled, folder)


def _has_labels(meta: bytes | None) -> bool:
    """Whether the first sample's metadata (its bytes; ``None``: none or too large) is an object with ``labels``."""
    try:
        found = json.loads(meta) if meta else None
    except ValueError:
        return False
    return isinstance(found, dict) and "labels" in found


def _splits(location: str, tars: tuple[str, ...]) -> dict[str, tuple[str, ...]] | None:
    named = {tar: match.group(1) for tar in tars if (match := _SPLIT_PREFIX.match(Path(tar).name))}
    if not named:
        return None
    if len(named) < len(tars):
        other = next(Path(tar).name for tar in tars if tar not in named)
        raise ValueError(
            f"{location} mixes tars named by split (train-*.tar, ...) with others ({other}): rename them, or name "
            f"the tars to read with a brace pattern"
        )
    return {split: tuple(tar for tar in tars if named[tar] == split) for split in SPLITS}


def _present(role: str, fields: Fields, first: dict[str, bytes | None], tar: str) -> tuple[str, ...]:
    """The role's extensions, the first sample's first (the others kept for later samples); ``()`` if the
    first sample has none of them (refused where the role was named)."""
    wanted = fields.of(role)
    found = [extension for extension in wanted if extension in first]
    if not found:
        if role in fields.given and wanted:
            raise ValueError(
                f"the first sample of {Path(tar).name} has no {'/'.join(wanted)} field for {role} (it has "
                f"{', '.join(sorted(first)) or 'nothing'})"
            )
        return ()
    return (found[0], *(extension for extension in wanted if extension != found[0]))


def _first_sample(tar: str, read: tuple[str, ...]) -> dict[str, bytes | None]:
    """The first sample's fields: the bytes of those in ``read`` (metadata, up to its bound), ``None`` for the others.

    Raises:
        ValueError: Not a readable tar, or a tar without samples.
    """
    found: dict[str, bytes | None] = {}
    key = None
    try:
        with tarfile.open(tar, "r:*") as archive:
            for number, member in enumerate(archive):
                if number >= _FIRST_MEMBERS:
                    break
                if not member.isreg() or Path(member.name).name.startswith("__"):
                    continue
                name, extension = base_plus_ext(member.name)
                if name is None:
                    continue
                if key is not None and name != key:
                    break
                key, extension = name, str(extension).lower()
                wanted = extension in read and member.size <= MAX_FIELD_BYTES
                reader = archive.extractfile(member) if wanted else None
                found[extension] = reader.read() if reader is not None else None
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"cannot read shard {Path(tar).name} as a tar: {error}") from None
    if not found:
        raise ValueError(f"shard {Path(tar).name} holds no sample (no KEY.EXT members)")
    return found


def _count_samples(tar: str) -> int:
    """The samples of a tar: its distinct keys, from the member headers (no member is read)."""
    keys = set()
    with tarfile.open(tar, "r:*") as archive:
        for member in archive:
            if member.isreg():
                key = base_plus_ext(member.name)[0]
                if key is not None:
                    keys.add(key)
    return len(keys)


def describe_input(path: str | os.PathLike[str], split: str | None, fields: Fields | None = None) -> str | None:
    """:meth:`ForeignShards.describe` of ``path`` where it is shards without a manifest, else ``None``."""
    return open_foreign_shards(path, fields).describe(split) if is_foreign_shards(path) else None
