"""Columns of metadata rows, as arrays: what evaluation and the service keep of an index's millions of rows.

One pass over the rows (an index folder's :class:`convirt.retrieval.MetadataRows` streams its file) feeds each
column's ``add(row)``; no row is kept. A row's labels become a code into the distinct label sets
(archives repeat a few hundred combinations), and a string id of the row (its patient, its key) a
code into the distinct ids, each id's rows found by one sort: a few bytes a row, where the rows
themselves, as dicts, take a kilobyte or two each.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, overload

import numpy as np

from convirt.data.schema import finding_set

T = TypeVar("T")
# Ids of at most this many UTF-8 bytes are kept as they are; longer ones as a tagged digest, so that
# the sorted array of ids (fixed width) stays this wide whatever one row holds.
ID_BYTES = 16
_CHUNK = 1 << 16


class Column(Protocol):
    """Something that keeps a column of rows, fed one row at a time, in order."""

    def add(self, row: dict[str, Any]) -> None: ...


def patient_of(row: dict[str, Any]) -> str:
    """The patient a metadata row belongs to: its ``patient_id``, or without one its ``key`` (each image its
    own patient), as every evaluation groups rows."""
    return str(row.get("patient_id") or row.get("key", ""))


def encoded_id(value: str) -> bytes:
    """The bytes an id is kept and looked up as: its UTF-8, or where that is longer than :data:`ID_BYTES`
    or ends in NUL (numpy's bytes arrays drop trailing NULs), a 112-bit digest between two ``0xff`` (a
    byte UTF-8 never holds)."""
    data = value.encode("utf-8", "surrogatepass")
    if len(data) <= ID_BYTES and not data.endswith(b"\0"):
        return data
    return b"\xff" + hashlib.blake2b(data, digest_size=ID_BYTES - 2).digest() + b"\xff"


class _Coded(Sequence[T]):
    """A sequence whose items are ``values[codes[i]]``."""

    def __init__(self, codes: np.ndarray, values: Sequence[T]) -> None:
        self.codes, self.values = codes, values

    def __len__(self) -> int:
        return len(self.codes)

    @overload
    def __getitem__(self, item: int) -> T: ...

    @overload
    def __getitem__(self, item: slice) -> list[T]: ...

    def __getitem__(self, item: int | slice) -> T | list[T]:
        if isinstance(item, slice):
            return [self.values[code] for code in self.codes[item].tolist()]
        return self.values[int(self.codes[item])]

    def __iter__(self) -> Iterator[T]:
        for start in range(0, len(self.codes), _CHUNK):
            yield from map(self.values.__getitem__, self.codes[start : start + _CHUNK].tolist())


class LabelSets(_Coded[frozenset[str]]):
    """Each row's label set (as written, ``No Finding`` included): ``codes`` ``(N,)`` ``int32`` into ``values``."""

    def findings(self, only: set[str] | None = None) -> LabelSets:
        """Each row's finding set (``No Finding`` = the empty set), restricted to ``only`` when given."""
        sets = [finding_set(labels) for labels in self.values]
        return LabelSets(self.codes, [found & only for found in sets] if only is not None else sets)

    def names(self) -> set[str]:
        """Every finding some row has."""
        return set().union(*self.findings().values)

    def matrix(self, names: Sequence[str]) -> np.ndarray:
        """``(N, F)`` bool: whether finding ``names[f]`` is among row n's labels (as
        :func:`convirt.data.labels.label_matrix`, one byte a cell)."""
        table = np.array([[name in labels for name in names] for labels in self.values], dtype=bool)
        return table.reshape(len(self.values), len(names))[self.codes]


class LabelColumn:
    """Gathers each row's ``labels``, row by row (:meth:`add`), into :class:`LabelSets`."""

    def __init__(self) -> None:
        self._codes = array("i")
        self._seen: dict[frozenset[str], int] = {}

    def add(self, row: dict[str, Any]) -> None:
        """Note the next row's labels."""
        labels = frozenset(str(label) for label in row.get("labels") or ())
        self._codes.append(self._seen.setdefault(labels, len(self._seen)))

    def sets(self) -> LabelSets:
        """The label sets of the rows added so far."""
        return LabelSets(np.frombuffer(self._codes, dtype=np.intc).astype(np.int32), list(self._seen))


@dataclass(frozen=True)
class IdGroups:
    """Rows grouped by a string id of each (a patient, a key).

    Attributes:
        ids: ``(P,)`` the distinct ids, sorted, as :func:`encoded_id` bytes.
        codes: ``(N,)`` ``int32`` each row's id, an index into ``ids``.
        order: ``(N,)`` the row ids sorted by id (each id's rows ascending).
        starts: ``(P + 1,)`` where each id's rows begin in ``order``.
    """

    ids: np.ndarray
    codes: np.ndarray
    order: np.ndarray
    starts: np.ndarray

    def code(self, value: str) -> int:
        """The code of id ``value``; -1 when no row has it."""
        key = encoded_id(value)
        found = int(np.searchsorted(self.ids, key))
        return found if found < len(self.ids) and self.ids[found] == key else -1

    def rows_of(self, code: int) -> np.ndarray:
        """The rows with id ``codes == code``, ascending (none for -1)."""
        return self.order[self.starts[code] : self.starts[code + 1]] if code >= 0 else self.order[:0]

    def rows(self, value: str) -> np.ndarray:
        """The rows whose id is ``value``, ascending."""
        return self.rows_of(self.code(value))

    def sizes(self, codes: np.ndarray) -> np.ndarray:
        """How many rows have each of ``codes`` (0 for -1)."""
        counts = np.append(np.diff(self.starts), 0)  # code -1 reads the 0 at the end
        return counts[codes]


class IdColumn:
    """Gathers a string id of each row, row by row (:meth:`add`), into :class:`IdGroups`.

    Args:
        id_of: The row's id.
    """

    def __init__(self, id_of: Callable[[dict[str, Any]], str]) -> None:
        self.id_of = id_of
        self._chunks: list[np.ndarray] = []
        self._pending: list[bytes] = []

    def add(self, row: dict[str, Any]) -> None:
        """Note the next row's id."""
        self._pending.append(encoded_id(self.id_of(row)))
        if len(self._pending) == _CHUNK:  # a list of bytes objects costs ~50 bytes an id; an array, its width
            self._chunks.append(np.array(self._pending, dtype=bytes))
            self._pending = []

    def groups(self) -> IdGroups:
        """The rows added, grouped by id (one stable sort); the column is emptied."""
        every = np.concatenate([*self._chunks, np.array(self._pending, dtype=bytes)])
        self._chunks, self._pending = [], []
        order = np.argsort(every, kind="stable")
        every = every[order]
        first = np.ones(len(every), dtype=bool)
        first[1:] = every[1:] != every[:-1]
        codes = np.empty(len(every), dtype=np.int32)
        codes[order] = np.cumsum(first) - 1
        starts = np.append(np.flatnonzero(first), len(every))
        small = np.int32 if len(every) < 2**31 else np.int64
        return IdGroups(every[first], codes, order.astype(small), starts)
