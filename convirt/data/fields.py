"""Which fields of a shard sample are its image, its text and its metadata.

A webdataset sample is ``__key__`` plus one field per extension. ``convirt shards`` writes ``jpg``,
``txt`` and ``json`` (:mod:`convirt.data.schema`); shards made by other tools (img2dataset, open_clip's
pipelines) name them as they like: ``png`` or ``webp`` images, ``caption`` texts. :class:`Fields`
lists, for each role, the extensions to look for, in order; :func:`pick_fields` is the stream stage
that keeps each role's first present field under the schema's name and drops every other field
before anything is decoded (webdataset's default decoders unpickle ``pyd`` / ``pkl`` / ``pth``
fields: none of a shard's fields but these three is ever decoded).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from convirt.data.schema import IMAGE, KEY, META, TEXT, parse_labels

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
TEXT_FIELDS = ("txt", "caption", "text")
META_FIELDS = ("json",)
ROLES = ("image", "text", "meta")
# A report or a metadata record is a few kilobytes; a field past this is not one.
MAX_FIELD_BYTES = 1 << 20
_EXTENSION = re.compile(r"[a-z0-9_][a-z0-9_.-]*")


@dataclass(frozen=True)
class Fields:
    """The extensions read as each role of a sample, first present first (``()``: the shards have none).

    Attributes:
        image: Image fields (decoded to 8-bit grey as every shard image is).
        text: Text fields (UTF-8); without one, a sample's text is empty.
        meta: JSON metadata fields (an object; ``labels`` a list of finding names or a ``;``-separated string).
        given: The roles named by the user (the others are defaults or what the first sample has).
    """

    image: tuple[str, ...] = IMAGE_FIELDS
    text: tuple[str, ...] = TEXT_FIELDS
    meta: tuple[str, ...] = META_FIELDS
    given: frozenset[str] = frozenset()

    def of(self, role: str) -> tuple[str, ...]:
        """The extensions of ``role`` (image, text or meta)."""
        found: tuple[str, ...] = getattr(self, role)
        return found


# The fields `convirt shards` writes, read in its own folders.
CONVIRT_FIELDS = Fields((IMAGE,), (TEXT,), (META,), frozenset(ROLES))


def parse_fields(items: Sequence[str] | Mapping[str, str] | None) -> Fields:
    """``["image=png", "text=caption"]`` (or ``{"image": "png"}``) -> :class:`Fields`; roles not named keep
    their defaults. A value may list alternatives (``image=png,jpg``); an empty one says the shards have
    no such field (``text=``: images only).

    Raises:
        ValueError: An item without ``=``, an unknown role, a role given twice or a bad extension.
    """
    pairs = list(items.items()) if isinstance(items, Mapping) else [_split(item) for item in items or []]
    chosen: dict[str, tuple[str, ...]] = {}
    for role, value in pairs:
        role = str(role).strip().lower()
        if role not in ROLES:
            raise ValueError(f"unknown field role {role!r}; known: {', '.join(ROLES)} (e.g. image=png, text=caption)")
        if role in chosen:
            raise ValueError(f"field role {role!r} given twice")
        extensions = tuple(e.strip().lower().lstrip(".") for e in str(value or "").split(",") if e.strip())
        if bad := [e for e in extensions if not _EXTENSION.fullmatch(e)]:
            raise ValueError(f"bad field extension {bad[0]!r} for {role}: an extension such as png or caption")
        if role == "image" and not extensions:
            raise ValueError("image= names no field: give the images' extension (image=png)")
        chosen[role] = extensions
    return Fields(**{**{r: Fields().of(r) for r in ROLES}, **chosen}, given=frozenset(chosen))


def _split(item: str) -> tuple[str, str]:
    role, sep, value = str(item).partition("=")
    if not sep:
        raise ValueError(f"bad field {item!r}: write ROLE=EXT, e.g. image=png or text=caption")
    return role, value


def pick_fields(sample: dict[str, Any], fields: Fields, image: bool = True) -> dict[str, Any]:
    """A raw (undecoded) sample with only its image (when ``image``), text and metadata, under the schema's
    names (``jpg``, ``txt``, ``json``); an error for the stream's handler when a role it needs is absent.

    A role with no fields (``()``) is no error: the text is then empty and the metadata ``{}``.

    Raises:
        ValueError: No image (with ``image``) or no text where the fields name some; a text or metadata
            field over :data:`MAX_FIELD_BYTES`.
    """
    picked = {name: value for name, value in sample.items() if name.startswith("__")}
    for role, target, needed in (("image", IMAGE, image), ("text", TEXT, True), ("meta", META, False)):
        wanted = fields.of(role)
        if role == "image" and not image:
            continue
        found = next((name for name in wanted if name in sample), None)
        if found is None:
            if wanted and needed:
                raise ValueError(_incomplete(sample, fields, image))
            if role == "text":
                picked[TEXT] = b""
            continue
        value = sample[found]
        if role != "image" and len(value) > MAX_FIELD_BYTES:
            raise ValueError(f"sample {sample.get(KEY)!r}: its {found} field holds {len(value)} bytes (at most 1 MiB)")
        picked[target] = value
    return picked


def _incomplete(sample: dict[str, Any], fields: Fields, image: bool) -> str:
    has = ", ".join(sorted(k for k in sample if not k.startswith("_"))) or "nothing"
    need = (f"an image ({', '.join(fields.image)}) and " if image else "") + f"a text ({', '.join(fields.text)})"
    return (
        f"incomplete sample {sample.get(KEY)!r} in {sample.get('__url__')}: it has {has}; "
        f"{'image-text' if image else 'text'} batches need {need} (name other fields as ROLE=EXT, e.g. image=png)"
    )


def checked_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """A decoded sample whose metadata is a JSON object, its ``labels`` a list of names (a ``;``-separated
    string is split, a lone value listed), as every reader expects, without ``key`` or ``text`` (names the
    embedding rows keep for the sample's own); an error for the handler otherwise.

    Raises:
        ValueError: The metadata is not a JSON object.
    """
    meta = sample.get(META)
    if meta is None:
        return sample
    if not isinstance(meta, dict):
        raise ValueError(f"sample {sample.get(KEY)!r}: its metadata is a JSON {type(meta).__name__}, not an object")
    for reserved in ("key", "text"):  # the sample's key and text are the tar's (img2dataset's json repeats its key)
        meta.pop(reserved, None)
    labels = meta.get("labels")
    if isinstance(labels, str):
        meta["labels"] = parse_labels(labels)
    elif isinstance(labels, list | tuple):
        meta["labels"] = [str(label) for label in labels]
    elif labels is not None:
        meta["labels"] = [str(labels)]
    return sample
