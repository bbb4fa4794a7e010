"""What the service shows of an archive case, and what it never shows unless the operator says so.

A case leaves the service as its index id, a salted hash of its key (``ref``: stable while the salt
is, so a client can tell the same case again, and useless for finding the patient), its labels, view
and source. Archive keys and study ids hold the patient id in common namings (CheXpert's
``patient00001/study1/view1_frontal``, NIH's ``00000001_000``): they go out only when the operator
names them (``convirt serve --show-field key``). The patient id and file paths never go out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from typing import Any

SHOWN = ("labels", "view", "source")  # always: what a reader needs and no one can be found by
OPT_IN = ("key", "study_id")  # only when the operator names them
SALT_ENV = "CONVIRT_CASE_SALT"


def check_fields(fields: Iterable[str]) -> tuple[str, ...]:
    """``fields`` when each is one the operator may turn on.

    Raises:
        ValueError: A field outside :data:`OPT_IN` (the patient id and paths are never shown).
    """
    fields = tuple(dict.fromkeys(fields))
    for field in fields:
        if field not in OPT_IN:
            raise ValueError(
                f"--show-field {field}: only {', '.join(OPT_IN)} can be shown (never a patient id or path)"
            )
    return fields


def case_salt(salt: bytes | str | None = None) -> bytes:
    """The salt of case refs: ``salt``, else ``$CONVIRT_CASE_SALT`` (refs stable across restarts), else
    random (stable while the service runs)."""
    salt = salt if salt is not None else os.environ.get(SALT_ENV)
    if salt is None or salt == "":
        return os.urandom(32)
    return salt.encode() if isinstance(salt, str) else salt


def case_ref(salt: bytes, key: str) -> str:
    """A 16-hex-digit salted hash (HMAC-SHA256) of a case's key."""
    return hmac.new(salt, key.encode(), hashlib.sha256).hexdigest()[:16]


def shown_metadata(row: Mapping[str, Any], salt: bytes, fields: Iterable[str] = ()) -> dict[str, Any]:
    """A case row's metadata as the API shows it: ``ref``, the :data:`SHOWN` fields and the opted-in ``fields``."""
    shown: dict[str, Any] = {"ref": case_ref(salt, str(row.get("key", "")))}
    for name in (*SHOWN, *fields):
        if name in row and row[name] is not None:
            shown[name] = [str(value) for value in row[name]] if name == "labels" else str(row[name])
    return shown
