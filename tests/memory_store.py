"""A ``Store`` kept in memory, written against ``asyncgraph.Store`` alone.

It does not subclass ``SQLiteStore`` and uses nothing of it: only the protocol module's
records (``StoredTask``, ``TaskRow``, ``Batch``, ``RunInfo``). It is honest where the
protocol asks for something:

- **locking**: one run at a time. ``acquire`` while a run holds it (on this object, from
  any thread) raises ``StoreLockedError`` naming the run; ``release`` lets go.
- **results as bytes**: a row's result is kept as the ``(format, bytes)`` it came with
  and deserialized by ``load_result``; a result a later row of its task replaced is gone.
- **atomic writes**: a batch is checked whole before any of it is applied.
- **counts**: each batch's ``counts`` are added to its run as it commits, so a run that
  never reaches ``end_run`` shows what it committed; ``end_run`` sets them.
- **a size limit**, if given: ``result_size_limit()`` says it, and a row with a bigger
  result is refused by ``write`` (as SQLite refuses a row over its limit).

``tests/test_store_contract.py`` runs the same cases on it and on ``SQLiteStore``.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from asyncgraph import State, StoreError, StoreLockedError
from asyncgraph._store.protocol import COUNTS, Batch, RunInfo, StoredTask, TaskRow

__all__ = ["MemoryStore"]

_names = itertools.count(1)


class MemoryStore:
    """A store that lives as long as the object (``close`` keeps what it holds).

    State it keeps (under one mutex: the writer thread and readers share it)
        _latest   task name -> its latest row (with the result bytes), in write order
        _runs     run id -> the ``runs`` record as a dict (RunInfo's fields)
        _history  every row every run wrote, in order (without results)
        _holder   the run holding the store (its description), or None
        _running  the id of the run between begin_run and end_run, or None
    """

    def __init__(self, limit: int | None = None, name: str | None = None) -> None:
        self.name = name or f"memory-{next(_names)}"
        self.limit = limit
        self._mutex = threading.Lock()
        self._latest: dict[str, TaskRow] = {}
        self._runs: dict[int, dict[str, Any]] = {}
        self._history: list[TaskRow] = []
        self._holder: str | None = None
        self._running: int | None = None
        self._next_run = 1
        self.writes = 0  # batches committed
        self.closed = 0  # how often close() was called

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r})"

    # -- reading ------------------------------------------------------------------------

    def tasks(self) -> dict[str, StoredTask]:
        with self._mutex:
            rows = list(self._latest.values())
        return {r.name: _stored(r) for r in rows}

    def runs(self) -> list[RunInfo]:
        with self._mutex:
            return [RunInfo(**self._runs[i]) for i in sorted(self._runs)]

    def run_tasks(self, run_id: int) -> list[StoredTask]:
        """The rows one run wrote, in order (not part of the protocol: for the tests)."""
        with self._mutex:
            return [_stored(r) for r in self._history if r.run_id == run_id]

    def load_result(self, result_id: int, task: str) -> Any:
        with self._mutex:
            row = self._latest.get(task)
        if row is None or row.result_id != result_id or row.result_format is None:
            raise StoreError(
                f"the result of task {task!r} is no longer in store {self} (a later run "
                "replaced it); load the graph again"
            )
        assert row.result is not None
        return _deserialize(row.result_format, row.result)

    def load_results(self, wanted: Mapping[str, int]) -> dict[str, Any]:
        return {task: self.load_result(result_id, task) for task, result_id in wanted.items()}

    def result_size_limit(self) -> int | None:
        return self.limit

    # -- one run ------------------------------------------------------------------------

    def acquire(self) -> None:
        with self._mutex:
            if self._holder is not None:
                raise StoreLockedError(
                    f"store {self} is in use by {self._holder}; wait for that run to end "
                    "and try again",
                    self._holder,
                )
            self._holder = f"a run of process {os.getpid()} (thread {threading.get_ident()})"

    def release(self) -> None:
        with self._mutex:
            self._holder = None

    def begin_run(self) -> int:
        with self._mutex:
            if self._holder is None:
                raise StoreError(f"begin_run() on store {self} without acquire()")
            for run in self._runs.values():
                if run["status"] == "running":
                    run["status"] = "crashed"  # held by us: its run is gone
            run_id = self._next_run
            self._next_run += 1
            self._runs[run_id] = {
                "id": run_id,
                "started": time.time(),
                "finished": None,
                "status": "running",
                "pid": os.getpid(),
                "host": socket.gethostname(),
                **dict.fromkeys(COUNTS, 0),
            }
            self._running = run_id
            self._holder = f"run {run_id} (pid {os.getpid()})"
            return run_id

    def write(self, run_id: int, rows: Batch) -> None:
        with self._mutex:
            if run_id != self._running:
                raise StoreError(f"write() to store {self} for run {run_id}, which is not running")
            for row in rows:  # all or none: every row is checked before any is applied
                if not isinstance(row, TaskRow) or row.run_id != run_id:
                    raise StoreError(f"store {self} cannot record {row!r} for run {run_id}")
                State(row.status)  # a ValueError for a status no State has
                if (row.result is None) != (row.result_id is None):
                    raise StoreError(f"row {row.name!r}: a result needs a result id, and back")
                size = 0 if row.result is None else len(row.result)
                if self.limit is not None and size > self.limit:
                    raise StoreError(
                        f"store {self}: the row of {row.name!r} holds {size:,} bytes, over "
                        f"its limit of {self.limit:,}"
                    )
            for row in rows:
                self._latest.pop(row.name, None)  # in write order, as tasks() says
                self._latest[row.name] = row
                self._history.append(row._replace(result=None))
            counts = self._runs[run_id]
            for key in COUNTS:
                counts[key] += rows.counts.get(key, 0)
            self.writes += 1

    def end_run(self, run_id: int, status: str, counts: Mapping[str, int]) -> None:
        with self._mutex:
            run = self._runs[run_id]
            run.update({key: counts.get(key, 0) for key in COUNTS})
            run["status"] = status
            run["finished"] = time.time()
            self._running = None

    def close(self) -> None:
        with self._mutex:
            if self._running is not None:
                raise StoreError(f"store {self} is held by run {self._running}; close it after")
            self.closed += 1


def _stored(row: TaskRow) -> StoredTask:
    return StoredTask(
        row.name,
        row.run_id,
        State(row.status),
        row.attempts,
        row.started,
        row.finished,
        row.error_type,
        row.error_message,
        row.traceback,
        row.fingerprint,
        row.code,
        row.result_id,
    )


def _deserialize(fmt: str, data: bytes) -> Any:
    if fmt == "pickle":
        return pickle.loads(data)
    if fmt == "parquet":
        import pandas as pd

        return pd.read_parquet(io.BytesIO(data))
    raise StoreError(f"unknown result format {fmt!r}")
