"""Task records as the store file keeps them since schema version 2: many in one value.

A run writes its records in batches (one per commit). Since version 2 a batch is one
row of the ``history`` table, not one row per task: its records, flattened into one
list of plain values (14 per record, :class:`~asyncgraph._store.protocol.TaskRow`'s
fields in order), pickled once. The latest record of every task (``state``) is the
same kind of value, rewritten now and then from the history (see ``sqlite.py``).
SQLite then touches one B-tree row per batch instead of three per task (a row of
``state``, its primary-key index, the history trigger's row): that was most of what a
run on a store cost per task.

A record's result is in it when it is small (``INLINE`` bytes at most: ``None``, a
number, a short string); a bigger one is a row of the ``results`` table and the record
says only its format and key.

Reading never runs code from the file: the values are unpickled by :class:`_Plain`,
which refuses every class and function (a list of numbers, strings, bytes and None
needs none), so status reads (``load``, ``plan``, ``asyncgraph status``) still never
unpickle a result, nor anything else that could run code.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any

__all__ = [
    "FIELDS",
    "INLINE",
    "RESULT",
    "RESULT_FORMAT",
    "RESULT_ID",
    "decode",
    "encode",
    "flatten",
    "latest",
    "parts",
    "plain",
]

#: Values per record: TaskRow's fields, in order.
FIELDS = 14
#: Offsets of a record's fields that the store reads itself.
RESULT_ID, RESULT_FORMAT, RESULT = 11, 12, 13
#: The largest result kept inside its record, in bytes; bigger ones go to ``results``.
INLINE = 512


class _Plain(pickle.Unpickler):
    """An unpickler of plain values only: any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"a store's records hold plain values only, not {module}.{name}"
        )


def encode(flat: list[Any]) -> bytes:
    """Records (a flat list, ``FIELDS`` values each) as the bytes of one row."""
    return pickle.dumps(flat, protocol=5)


def decode(data: bytes) -> list[Any]:
    """The flat list of records ``encode`` made; ValueError if ``data`` is not one."""
    try:
        flat = _Plain(io.BytesIO(data)).load()
    except Exception as exc:
        raise ValueError(
            f"a batch of records cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if type(flat) is not list or len(flat) % FIELDS:
        raise ValueError("a batch of records is not a list of whole records")
    return flat


def plain(data: bytes) -> Any:
    """A value ``encode`` made of plain values (lists, str, bytes, numbers, None),
    unpickled by the unpickler that refuses every class; ValueError if it is not one."""
    try:
        return _Plain(io.BytesIO(data)).load()
    except Exception as exc:
        raise ValueError(f"a stored value cannot be read ({type(exc).__name__}: {exc})") from exc


def parts(flat: list[Any], limit: int) -> Iterator[tuple[int, bytes]]:
    """``(records, bytes)`` of ``flat`` in as few rows as fit in ``limit`` bytes each
    (one row, unless the records are huge: error texts, say)."""
    data = encode(flat)
    if len(data) <= limit or len(flat) <= FIELDS:
        yield len(flat) // FIELDS, data
        return
    half = len(flat) // FIELDS // 2 * FIELDS
    yield from parts(flat[:half], limit)
    yield from parts(flat[half:], limit)


def latest(batches: Iterable[list[Any]]) -> dict[str, tuple[list[Any], int]]:
    """Each task's last record over ``batches`` (flat lists, oldest first): name ->
    (its batch, the record's offset there), in the order they were last written."""
    out: dict[str, tuple[list[Any], int]] = {}
    pop = out.pop
    for flat in batches:
        names = flat[::FIELDS]
        if out:  # a later record moves its task to the end: out first, then in again
            for name in out.keys() & names:
                del out[name]
        before = len(out)
        # In C: a tuple per record, no Python step per record (a resume reads 10k).
        out.update(zip(names, zip(repeat(flat), range(0, len(flat), FIELDS)), strict=True))
        if len(out) - before != len(names):
            # A task twice in one batch (a reset, then its end): update kept it where it
            # came first; the records one by one put it where it came last.
            for i in range(0, len(flat), FIELDS):
                name = flat[i]
                pop(name, None)
                out[name] = (flat, i)
    return out


def flatten(records: dict[str, tuple[list[Any], int]]) -> list[Any]:
    """The records ``latest`` found, as one flat list in its order."""
    out: list[Any] = []
    extend = out.extend
    for flat, i in records.values():
        extend(flat[i : i + FIELDS])
    return out
