"""The store: where a run records its outcomes durably, and what resuming reads back.

    protocol   the ``Store`` protocol and its records (StoredTask, TaskRow, Batch, RunInfo)
    serialize  a result to ``(format, bytes)`` and back (pickle, parquet)
    sqlite     ``SQLiteStore``, the embedded store (its SQL), and ``open_store``
    files      the store file for the file system: ``FileLock`` (a run's hold on it), the
               -wal/-shm beside it, the room on its disk, who has it open, forks
    writer     ``RunWriter``: one run's rows to the store, from a thread
    resume     ``load``, ``plan``, ``history``: a graph and what a store says of it

This package re-exports the names the rest of the library takes from it, so
``from asyncgraph._store import SQLiteStore`` works as it did when it was one module.
``resume`` is not imported here: it stands on the graph (``_graph``, ``_rewrite``,
``_fingerprint``), which the other modules here do not need; import it by its name.
"""

from __future__ import annotations

from .protocol import COUNTS, Batch, RunInfo, Store, StoredTask, TaskRow, new_result_id
from .serialize import deserialize, serialize
from .sqlite import FORMAT, SCHEMA_VERSION, SQLiteStore, open_store
from .writer import RunWriter

__all__ = [
    "COUNTS",
    "FORMAT",
    "SCHEMA_VERSION",
    "Batch",
    "RunInfo",
    "RunWriter",
    "SQLiteStore",
    "Store",
    "StoredTask",
    "TaskRow",
    "deserialize",
    "new_result_id",
    "open_store",
    "serialize",
]
