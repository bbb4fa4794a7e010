"""Radiograph projections: which rows `convirt shards --views` keeps.

Archives name views their own way (MIMIC-CXR ``PA`` / ``AP`` / ``LATERAL`` / ``LL``, CheXpert Plus
``Frontal`` / ``Lateral``, PadChest ``AP_horizontal`` / ``L``, the COVID-19 collection ``AP Supine``),
so names are compared after upper-casing and turning ``_`` and ``-`` into spaces, and the group
``frontal`` stands for every name whose first word is a frontal projection.
"""

from __future__ import annotations

from collections.abc import Iterable

FRONTAL = "frontal"
# First words of frontal projections across the archives convirt reads.
_FRONTAL_WORDS = frozenset({"PA", "AP", "FRONTAL", "POSTEROANTERIOR", "ANTEROPOSTERIOR"})


def normalize_view(view: str) -> str:
    """``"ap_horizontal"`` -> ``"AP HORIZONTAL"``: upper case, ``_`` / ``-`` as spaces, single spaces."""
    return " ".join(view.replace("_", " ").replace("-", " ").upper().split())


def parse_views(names: Iterable[str]) -> frozenset[str]:
    """The normalised view names (or the group ``frontal``) to keep.

    Raises:
        ValueError: No name given, or an empty name.
    """
    parsed = set()
    for name in names:
        if not name.strip():
            raise ValueError("a view name is empty; give names such as PA,AP or the group 'frontal'")
        parsed.add(FRONTAL if name.strip().lower() == FRONTAL else normalize_view(name))
    if not parsed:
        raise ValueError("no view named; give names such as PA,AP or the group 'frontal'")
    return frozenset(parsed)


def view_kept(view: str, keep: frozenset[str]) -> bool:
    """Whether a row of projection ``view`` is kept; a row whose view is unknown is not."""
    name = normalize_view(view)
    if not name:
        return False
    return name in keep or (FRONTAL in keep and name.split()[0] in _FRONTAL_WORDS)
