"""The embedded store: one SQLite file that records every run and every task's outcome.

Layout, schema version 2 (see ``docs/store.md``)::

    meta    (key, value)             format marker, schema version, the file's random
                                     ``token``; ``order``: the task names of the last
                                     run's graph, in its order
    runs    (id, started, finished, status, pid, host, counts..., graph: the graph's
                                     name, a column added to stores from before it)
    history (seq, run_id, tasks, rows)  every record every run wrote: one row per
                                     committed batch, its records in one value
                                     (``journal``), small results inside them
    state   (part, upto, tasks, rows)   the latest record of every task as of history
                                     row ``upto``, in the same form: the history after
                                     it completes it (rewritten once that is longer)
    results (name, id, format, data)    each task's result bigger than
                                     ``journal.INLINE``, under its random key

Version 1 had a row per task in ``state`` and in ``history`` (a trigger's); the first
run of this version on such a store converts it in place, in one transaction
(``_migrate_v1``), and reads of it before then read it as it is.

A run holds the store for its whole length through an ``flock`` on the store file itself,
so every name of the file finds the same lock (the kernel drops it if the process dies, so
a SIGKILLed run never leaves it held): ``files.FileLock``, a collaborator with the rest of
what concerns the file rather than its SQL. The run's writes come from one writer thread
(``writer.RunWriter``) in batches, each one transaction. WAL mode with
``synchronous=FULL``: a committed result survives a crash of the process and of the
machine (the schema and the run's start are committed ``NORMAL`` and synced with the
first batch: see ``_connect_for_run``; the run's end ``NORMAL`` too, synced by the
checkpoint of the connection's close: see ``end_run``).

The only module of the package that uses :mod:`sqlite3`, and only inside functions, so
``import asyncgraph`` does not load it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import operator
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import StoreError
from .._nogc import paused
from .._state import State
from .._task import constructor
from . import journal
from .files import (
    SHM_SIZE,
    FileLock,
    alive,
    beside,
    check_directory,
    full_because,
    has_wal,
    identity,
    legacy_holders,
    lock_holders,
    no_room,
    open_files,
    processes,
    stat_of,
    writable,
)
from .protocol import COUNTS, Batch, RunInfo, Store, StoredTask, TaskRow, check_store
from .serialize import deserialize

if TYPE_CHECKING:
    import sqlite3

__all__ = ["FORMAT", "SCHEMA_VERSION", "SQLiteStore", "open_store"]

#: ``StoredTask(*fields)``, faster (see ``_task.constructor``): ``tasks()`` builds one
#: per task of the store on every load and resume.
_new_stored_task = constructor(StoredTask)

FORMAT = "asyncgraph-store"
SCHEMA_VERSION = 2
#: The versions this asyncgraph reads; it writes only SCHEMA_VERSION (a run converts).
_READS = (1, 2)

#: What version 2 adds to a version 1 store's meta and runs (``_migrate_v1`` makes these).
_TABLES = """
CREATE TABLE history (
    seq INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    tasks INTEGER NOT NULL,
    rows BLOB NOT NULL
);
CREATE TABLE state (
    part INTEGER PRIMARY KEY,
    upto INTEGER NOT NULL,
    tasks INTEGER NOT NULL,
    rows BLOB NOT NULL
);
CREATE TABLE results (
    name TEXT PRIMARY KEY,
    id INTEGER NOT NULL,
    format TEXT NOT NULL,
    data BLOB NOT NULL
)
"""

_SCHEMA = (
    """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    tasks INTEGER NOT NULL DEFAULT 0,
    reused INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0
);
"""
    + _TABLES
)

#: The columns of a version 1 store's ``state``, in a record's order.
_V1_COLUMNS = (
    "name, run_id, status, attempts, started, finished, error_type, error_message, "
    "traceback, fingerprint, code, result_id, result_format"
)


#: Added to ``runs`` by the first run on a store (a guarded ALTER: see _connect_for_run).
_GRAPH_COLUMN = "ALTER TABLE runs ADD COLUMN graph TEXT DEFAULT NULL"


#: How many results ``load_results`` asks for in one statement (SQLite takes 32766
#: parameters since 3.32, 999 before: below both).
_CHUNK = 500
_LOAD_RESULTS = (
    "SELECT name, result_id, result_format, result FROM state WHERE name IN ("
    + ",".join("?" * _CHUNK)
    + ")"
)
_LOAD_BIG = (
    "SELECT name, id, format, data FROM results WHERE name IN (" + ",".join("?" * _CHUNK) + ")"
)

_DROP_BIG = "DELETE FROM results WHERE name IN (" + ",".join("?" * _CHUNK) + ")"

#: A version 2 store's records as of now: (token, state's upto, history's last seq).
_WHERE = (
    "SELECT (SELECT value FROM meta WHERE key = 'token'), "
    "(SELECT max(upto) FROM state), (SELECT max(seq) FROM history)"
)

#: A graph's digests as a store keeps them: ``_fingerprint.Known``'s fields (its graph
#: digest, each function's code digest, each task's function, each task's fingerprint).
Digests = tuple[str, list[str], bytes, bytes]

#: The most history rows (committed batches) a read of the latest records decodes after
#: ``state`` before a run's start rewrites ``state`` (``_fold``): a row costs a query
#: step and an unpickler of its own, however few records it holds.
_FOLD_ROWS = 512

#: The latest records last read from a version 2 store file by any SQLiteStore of this
#: process: ``(the file's real path, where they were read at (_WHERE), the records)``;
#: one file's at most. ``where`` tells the records apart: the token is new with every
#: run's start (``begin_run``) and every rewrite of ``state``, and the history only
#: grows within a run, so two reads that agree on it read the same records (a copy of
#: the file agrees with its original only until one of them runs).
_SHARED: tuple[str, tuple[Any, ...], dict[str, tuple[list[Any], int]]] | None = None


# -- the SQLite store -------------------------------------------------------------------

#: SQLite's limit for a row on a new connection (SQLITE_LIMIT_LENGTH), once read.
_built_in_limit: int | None = None


class SQLiteStore:
    """The embedded store: one SQLite file in WAL mode, created readable by its owner only.

    ``SQLiteStore("nightly.db")`` opens (or, on first write, creates) the file. Opening
    checks that an existing file is an asyncgraph store and raises :class:`StoreError`
    otherwise, without changing it. Reads open a short read-only connection each (no file
    is created or changed by reading); a run keeps one connection from ``acquire`` to
    ``release``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"SQLiteStore(path): path must be a file path, not {path!r}")
        _check_path(path)
        self.path = Path(path)
        self._lock = threading.Lock()  # the run's connection, used from a few threads
        self._conn: sqlite3.Connection | None = None
        self._file = FileLock(self.path)  # the run's hold on the store file
        self._held_by_run = False  # by a run of asyncgraph's (set by it), until release
        # The latest records read last (version 2), and what they were read at (see
        # _latest): reading a result again costs one small query, not a decode.
        self._cache: tuple[tuple[Any, ...], dict[str, tuple[list[Any], int]]] | None = None
        self._real: str | None = None  # os.path.realpath(path), once asked (_key)
        self._big = False  # whether results holds rows (the run's writes delete them)
        #: The run's graph name and task order, for begin_run to record (see there).
        self._described: tuple[str | None, Sequence[str]] | None = None
        #: The run's graph's digests, for begin_run to keep (see known_digests).
        self._known: Digests | None = None
        _check_store(self.path)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}  # a StoredResult travels with its store's path only

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._lock = threading.Lock()
        self._conn = None
        self._file = FileLock(self.path)
        self._held_by_run = False
        self._cache = None
        self._real = None
        self._big = False
        self._described = None
        self._known = None

    def __del__(self) -> None:
        # A store dropped while held (a run that could not clean up) lets go of its
        # lock and connection rather than keep them until the process ends.
        with contextlib.suppress(Exception):
            self._close()

    # -- opening ------------------------------------------------------------------------

    @property
    def _lock_fd(self) -> int | None:
        """The descriptor that holds the store file's lock (None: not held)."""
        return self._file.fd

    @property
    def _lock_key(self) -> tuple[int, int] | None:
        """The held store file's device and inode (None: not held)."""
        return self._file.key

    def _stat(self) -> os.stat_result | None:
        """The store file's status (None: no file yet); StoreError if it cannot be one."""
        return stat_of(self.path)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A connection to read with (None: no store yet); never creates or changes it.

        SQLite's own errors while reading become a StoreError naming the file: opening
        checks the tables a store must have, but a damaged page deeper in the file shows
        only when it is read::

            conn.execute("SELECT ... FROM state")   # DatabaseError: disk image is malformed

        The run's connection is used while a run holds the store (it sees the run's own
        writes); otherwise a short read-only one (see ``_connected``).
        """
        import sqlite3

        try:
            if self._conn is not None:
                with self._lock:
                    yield self._conn
                return
            st = self._stat()
            if st is None or st.st_size == 0:
                yield None
                return
            with _connected(self.path, st) as conn:
                yield conn if _has_schema(conn) else None
        except (sqlite3.DatabaseError, ValueError) as exc:  # ValueError: a bad status
            damaged = StoreError(
                f"store {str(self.path)!r} is damaged (reading it failed: "
                f"{type(exc).__name__}: {exc}); restore the file from a backup, or move it "
                "aside to start afresh"
            )
            if isinstance(exc, sqlite3.Error):
                raise _trouble(exc, str(self.path), writing=False) or damaged from exc
            raise damaged from exc

    def _open_for_run(self) -> sqlite3.Connection:
        """The run's connection (see ``_connect_for_run``), opened once per hold."""
        if self._conn is None:
            fd, key = self._lock_fd, self._lock_key
            assert fd is not None, "_open_for_run() without acquire()"
            assert key is not None
            self._conn = _connect_for_run(self.path, fd, key)
        return self._conn

    def close(self) -> None:
        """Close the store's connection (idempotent); refused while a run holds it.

        A run lets go of the store itself when it ends (``release``). Closing it under a
        running run would drop its lock and let another run in on the same store::

            store = ag.SQLiteStore("nightly.db")
            ... ag.run(g, store=store) running ...
            store.close()   # <- StoreError: a run of this process holds it
        """
        if self._held_by_run:
            raise StoreError(
                f"store {str(self.path)!r} is held by a run of this process; it cannot be "
                "closed under it (another run could then take it): the run lets go of it "
                "when it ends, so close it after that (or cancel the run first)"
            )
        self._close()

    def _close(self) -> None:
        """Close the run's connection and let go of the lock (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                if self._lock_key is not None:
                    open_files.closed(self._lock_key)
            self._file.let_go()

    # -- reading (never unpickles) ------------------------------------------------------

    def tasks(self) -> dict[str, StoredTask]:
        """The latest record of every task, without loading a result (see :class:`Store`)."""
        with self._reading() as conn:
            if conn is None:
                return {}
            states = {s.value: s for s in State}
            new = _new_stored_task  # StoredTask(...), a third of its cost (issue 15)
            if _version_of(conn) == 1:
                rows = conn.execute(
                    "SELECT name, run_id, status, attempts, started, finished, error_type, "
                    "error_message, traceback, fingerprint, code, result_id FROM state "
                    "ORDER BY rowid"
                ).fetchall()
                # State(...) for an unknown value: its ValueError says what it read
                return {
                    r[0]: new(r[0], r[1], states.get(r[2]) or State(r[2]), *r[3:]) for r in rows
                }
            records = self._latest(conn)
            fast = _by_columns(records, states)
            if fast is not None:
                return fast
            out = {}
            for name, (flat, i) in records.items():
                status = flat[i + 2]
                out[name] = new(
                    name,
                    flat[i + 1],
                    states.get(status) or State(status),
                    *flat[i + 3 : i + 12],
                )
            return out

    def generation(self) -> tuple[int, str | None, int]:
        """What a write to this store changes: the last run's id and status, and the
        history's last row. Every write belongs to a run, whose rows add history rows and
        whose end changes its status, so an equal answer later means that ``tasks()``
        would read the same rows. Not part of the Store protocol: a run reuses the rows
        its graph's ``load`` read when this says nothing was written since (issue 15)."""
        with self._reading() as conn:
            if conn is None:
                return (0, None, 0)
            run = conn.execute("SELECT id, status FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            last = conn.execute("SELECT max(rowid) FROM history").fetchone()[0]
        return (0, None, last or 0) if run is None else (run[0], run[1], last or 0)

    def known_digests(self) -> Digests | None:
        """The digests of the last run's graph, as ``_fingerprint.Known``'s fields
        (graph digest, codes, uses, fingerprints), or None. Not part of the Store
        protocol: ``load`` takes them instead of hashing every task when their graph
        digest is its graph's (issue 15, session 17). Plain values, read by the
        unpickler that refuses every class; anything else there counts as none."""
        with self._reading() as conn:
            if conn is None:
                return None
            row = conn.execute("SELECT value FROM meta WHERE key = 'digests'").fetchone()
        if row is None or type(row[0]) is not bytes:
            return None
        try:
            value = journal.plain(row[0])
        except ValueError:
            return None
        if (
            type(value) is not list
            or len(value) != 4
            or type(value[0]) is not str
            or type(value[1]) is not list
            or not all(type(c) is str for c in value[1])
            or type(value[2]) is not bytes
            or type(value[3]) is not bytes
        ):
            return None
        return value[0], value[1], value[2], value[3]

    def runs(self) -> list[RunInfo]:
        """Every run, oldest first (see :class:`Store`)."""
        with self._reading() as conn:
            if conn is None:
                return []
            # A store written before runs had a graph column reads as graph None.
            graph = "graph" if _has_graph_column(conn) else "NULL"
            rows = conn.execute(
                "SELECT id, started, finished, status, pid, host, tasks, reused, done, "
                f"failed, skipped, cancelled, {graph} FROM runs ORDER BY id"
            ).fetchall()
        return [RunInfo(*r) for r in rows]

    def task_order(self) -> list[str]:
        """The task names of the last run's graph in its order (topological, then
        definition), as :meth:`describe_run` recorded them; ``[]`` if none was."""
        import json

        with self._reading() as conn:
            if conn is None:
                return []
            row = conn.execute("SELECT value FROM meta WHERE key = 'order'").fetchone()
        if row is None:
            return []
        try:
            names = json.loads(row[0])
        except ValueError:
            return []
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def run_tasks(self, run_id: int) -> list[StoredTask]:
        """The records one run wrote, in the order it wrote them (results not included:
        only the latest result of each task is kept)."""
        with self._reading() as conn:
            if conn is None:
                return []
            if _version_of(conn) == 1:
                rows = conn.execute(
                    "SELECT name, run_id, status, attempts, started, finished, error_type, "
                    "error_message, traceback, fingerprint FROM history WHERE run_id = ? "
                    "ORDER BY rowid",
                    (run_id,),
                ).fetchall()
            else:
                rows = []
                for (data,) in conn.execute(
                    "SELECT rows FROM history WHERE run_id = ? ORDER BY seq", (run_id,)
                ):
                    flat = journal.decode(data)
                    rows += [flat[i : i + 10] for i in range(0, len(flat), journal.FIELDS)]
            return [
                StoredTask(
                    r[0], r[1], State(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9], None, None
                )
                for r in rows
            ]

    def load_result(self, result_id: int, task: str) -> Any:
        """The value ``task``'s row was written with under ``result_id`` (see :class:`Store`)."""
        with self._reading() as conn:
            row = None if conn is None else self._result_row(conn, task, result_id)
        if row is None:
            if conn is None:  # no file there, or an empty one: not a replaced result
                raise StoreError(
                    f"the result of task {task!r} was in store {str(self.path)!r}, which "
                    f"{'does not exist any more' if not self.path.exists() else 'is now empty'}"
                    " (moved, deleted or replaced?); put the store back, or rerun the task: "
                    f"ag.reset(graph, [{task!r}])"
                )
            raise StoreError(
                f"the result of task {task!r} is no longer in store {str(self.path)!r} "
                "(a later run replaced it); load the graph again"
            )
        return _decode(self.path, {task: row})[task]

    def _result_row(
        self, conn: sqlite3.Connection, task: str, result_id: int
    ) -> tuple[str, bytes] | None:
        """``(format, bytes)`` of ``task``'s result under ``result_id``, or None (gone)."""
        if _version_of(conn) == 1:
            row = conn.execute(
                "SELECT result_format, result FROM state WHERE name = ? AND result_id = ?",
                (task, result_id),
            ).fetchone()
            return None if row is None else (row[0], row[1])
        row = conn.execute(
            "SELECT format, data FROM results WHERE name = ? AND id = ?", (task, result_id)
        ).fetchone()
        if row is not None:  # a big one: the row is there only while it is the latest
            return row[0], row[1]
        found = self._latest(conn).get(task)
        if found is None:
            return None
        flat, i = found
        data = flat[i + journal.RESULT]
        if flat[i + journal.RESULT_ID] != result_id or data is None:
            return None
        return flat[i + journal.RESULT_FORMAT], data

    def load_results(self, wanted: Mapping[str, int]) -> dict[str, Any]:
        """Several results at once (task name -> result id), on one connection."""
        out: dict[str, Any] = {}
        names = list(wanted)
        with self._reading() as conn:
            if conn is not None and _version_of(conn) == 1:
                # One statement per _CHUNK names (a family's 10k elements: 20 queries,
                # not 10k), padded to the chunk's size so SQLite's statement cache keeps
                # the one statement; a row whose result id differs was replaced since.
                for i in range(0, len(names), _CHUNK):
                    part = names[i : i + _CHUNK]
                    part += [part[-1]] * (_CHUNK - len(part))
                    for name, result_id, fmt, data in conn.execute(_LOAD_RESULTS, part):
                        if wanted[name] == result_id:
                            out[name] = (fmt, data)
            elif conn is not None:
                records = self._latest(conn)
                big = []
                for name in names:
                    found = records.get(name)
                    if found is None:
                        continue
                    flat, i = found
                    if flat[i + journal.RESULT_ID] != wanted[name]:
                        continue  # replaced since
                    data = flat[i + journal.RESULT]
                    if data is None:
                        big.append(name)  # in results, if it is still the latest
                    else:
                        out[name] = (flat[i + journal.RESULT_FORMAT], data)
                for i in range(0, len(big), _CHUNK):
                    part = big[i : i + _CHUNK]
                    part += [part[-1]] * (_CHUNK - len(part))
                    for name, result_id, fmt, data in conn.execute(_LOAD_BIG, part):
                        if wanted[name] == result_id:
                            out[name] = (fmt, data)
        missing = [n for n in wanted if n not in out]
        if missing:
            return {
                **{n: self.load_result(wanted[n], n) for n in missing},
                **_decode(self.path, out),
            }
        return _decode(self.path, out)

    def _latest(self, conn: sqlite3.Connection) -> dict[str, tuple[list[Any], int]]:
        """Every task's latest record in a version 2 store (see ``journal.latest``):
        ``state``'s, then the history after it. Kept for as long as the store says it
        holds the same (its token, the upto of ``state``, the last history row), and
        shared by every SQLiteStore of the file in this process (see ``_SHARED``): a
        resume's ``load`` and its run open the file twice and read it once."""
        where = tuple(conn.execute(_WHERE).fetchone())
        known = self._cached(where)
        if known is not None:
            return known
        with paused():  # a list per batch and a tuple per task, all kept
            batches = []
            upto = 0
            for up, data in conn.execute("SELECT upto, rows FROM state ORDER BY part"):
                upto = up
                batches.append(journal.decode(data))
            for (data,) in conn.execute(
                "SELECT rows FROM history WHERE seq > ? ORDER BY seq", (upto,)
            ):
                batches.append(journal.decode(data))
            records = journal.latest(batches)
        self._keep(where, records)
        return records

    def _cached(self, where: tuple[Any, ...]) -> dict[str, tuple[list[Any], int]] | None:
        """The latest records as of ``where``, if this store or another of the file in
        this process read them (see ``_SHARED``); else None."""
        cache = self._cache
        if cache is not None and cache[0] == where:
            return cache[1]
        shared = _SHARED
        if shared is not None and shared[1] == where and shared[0] == self._key():
            self._cache = shared[1], shared[2]
            return shared[2]
        return None

    def _key(self) -> str:
        """The store file's real path: what ``_SHARED`` is keyed by."""
        key = self._real
        if key is None:
            key = self._real = os.path.realpath(self.path)
        return key

    def _keep(self, where: tuple[Any, ...], records: dict[str, tuple[list[Any], int]]) -> None:
        """Remember ``records`` as the latest as of ``where``, here and for the process."""
        global _SHARED
        self._cache = (where, records)
        _SHARED = (self._key(), where, records)

    # -- one run ------------------------------------------------------------------------

    def acquire(self) -> None:
        """Hold the store for one run, or raise :class:`StoreLockedError` naming who holds it."""
        with self._lock:
            self._file.take(self._holder)

    def release(self) -> None:
        """Let go of the store (idempotent): the next :meth:`acquire` succeeds."""
        self._held_by_run = False
        self._close()

    def begin_run(self) -> int:
        """Record that a run starts and return its id (see :class:`Store`).

        ``_described`` (the run's graph name and task order, set by the run before it
        calls this) is recorded in the same transaction, as :meth:`describe_run` would
        (one commit, not two). The latest records are rewritten into ``state`` here
        when the history written since it last was holds more records than it (see
        ``_fold``).
        """
        import socket

        assert self._lock_fd is not None, "begin_run() without acquire()"
        conn = self._open_for_run()
        with self._lock, _transaction(conn):
            # We hold the lock, so a run still marked running died with its process;
            # its running tasks are pending on the next load.
            conn.execute("UPDATE runs SET status = 'crashed' WHERE status = 'running'")
            cur = conn.execute(
                "INSERT INTO runs (started, status, pid, host) VALUES (?, 'running', ?, ?)",
                (time.time(), os.getpid(), socket.gethostname()),
            )
            run_id = cur.lastrowid
            assert run_id is not None
            described, self._described = self._described, None
            if described is not None:
                _describe(conn, run_id, *described)
            known, self._known = self._known, None
            if known is not None:
                _keep_digests(conn, known)
            # The latest records this process read already, if it did (a resume's load):
            # the fold takes them, and they stay known under the run's new token.
            records = self._fold(conn, self._cached(tuple(conn.execute(_WHERE).fetchone())))
            # A new token for every run: a copy of the file (a backup put back, say)
            # then never agrees with it on _WHERE unless it holds the same records.
            conn.execute("UPDATE meta SET value = ? WHERE key = 'token'", (os.urandom(8).hex(),))
            if records is not None:
                self._keep(tuple(conn.execute(_WHERE).fetchone()), records)
            self._big = conn.execute("SELECT EXISTS (SELECT 1 FROM results)").fetchone()[0] == 1
        conn.execute("PRAGMA synchronous=FULL")  # every batch: durable as it commits
        return run_id

    def _fold(
        self, conn: sqlite3.Connection, records: dict[str, tuple[list[Any], int]] | None
    ) -> dict[str, tuple[list[Any], int]] | None:
        """Rewrite ``state`` (the latest record of every task) from itself and the
        history after it, when a read decodes more than twice the records it finds (most
        of them replaced since), or more than ``_FOLD_ROWS`` rows of history: reading
        the latest records then costs at most about twice what ``state`` alone would,
        and each record is rewritten about once per record written (amortized). After a
        store's first run its history holds each task once: nothing to gain, so a
        resume does not pay for a rewrite (and its WAL's checkpoint). ``records``: the
        latest records, if this process read them already; returned, read if need be."""
        held, since, rows = conn.execute(
            "SELECT (SELECT coalesce(sum(tasks), 0) FROM state), "
            "(SELECT coalesce(sum(tasks), 0) FROM history WHERE seq > "
            "(SELECT coalesce(max(upto), 0) FROM state)), "
            "(SELECT count(*) FROM history WHERE seq > (SELECT coalesce(max(upto), 0) FROM state))"
        ).fetchone()
        if since <= held and rows <= _FOLD_ROWS:
            return records  # at most twice the records state holds: no more than twice
        if records is None:
            records = self._latest(conn)
        if held + since <= 2 * len(records) and rows <= _FOLD_ROWS:
            return records
        self._write_state(conn, journal.flatten(records))
        return records  # the same records: state holds them now

    def _write_state(self, conn: sqlite3.Connection, flat: list[Any]) -> None:
        """``state`` rewritten as ``flat`` (every task's latest record) as of the
        history's last row, in the caller's transaction. The file's token changes with
        it: a vouch rewrites ``state`` as of the same history row, and every reader's
        cache of the latest records (``_latest``) is keyed by the token and that row."""
        upto = conn.execute("SELECT max(seq) FROM history").fetchone()[0]
        conn.execute("UPDATE meta SET value = ? WHERE key = 'token'", (os.urandom(8).hex(),))
        conn.execute("DELETE FROM state")
        limit = conn.getlimit(_limit_length()) // 2
        for count, data in journal.parts(flat, limit):
            conn.execute(
                "INSERT INTO state (upto, tasks, rows) VALUES (?, ?, ?)", (upto, count, data)
            )

    def describe_run(self, run_id: int, graph: str | None, order: Sequence[str]) -> None:
        """Record the run's graph name and its task order (for ``history`` and ``status``),
        in one transaction, after :meth:`begin_run`. Not part of the Store protocol: a
        run calls it on stores that have it (or passes both to ``begin_run``)."""
        with self._lock:
            conn = self._conn
            assert conn is not None, "describe_run() outside begin_run()/end_run()"
            with _transaction(conn):
                _describe(conn, run_id, graph, order)

    def vouch(self, run_id: int, results: Mapping[str, int]) -> None:
        """Re-stamp done rows as checked by run ``run_id``, in one transaction: each
        task's row that still holds the result ``results[task]`` takes that run's id
        (its result, times and history stay as they are). Fan-out: a family that expanded
        again in that run kept these elements by their items' content, against that
        run's inputs, so the next load reuses them although their parent's row is newer
        than theirs. Not part of the Store protocol: a run calls it on stores that have
        it, after its last write (issue 13)."""
        with self._lock:
            conn = self._conn
            assert conn is not None, "vouch() outside begin_run()/end_run()"
            with _transaction(conn):
                # The run's connection converted a version 1 store as it opened, so this
                # is version 2: the latest records with those re-stamped, as a new state
                # (its history stays as it is: the rows were written by earlier runs).
                flat: list[Any] = []
                extend = flat.extend
                stamped = False
                for name, (rows, i) in self._latest(conn).items():
                    record = rows[i : i + journal.FIELDS]
                    result_id = results.get(name)
                    if (
                        result_id is not None
                        and record[2] == "done"
                        and record[journal.RESULT_ID] == result_id
                        and record[1] < run_id
                    ):
                        record[1] = run_id
                        stamped = True
                    extend(record)
                if stamped:
                    self._write_state(conn, flat)

    def write(
        self, run_id: int, rows: Sequence[TaskRow], counts: Mapping[str, int] | None = None
    ) -> None:
        """Record ``rows``, and add ``counts`` to the run's counts, in one transaction.

        ``counts`` defaults to a :class:`Batch`'s own (what a run writes); plain rows
        with no counts change no count.
        """
        if counts is None and isinstance(rows, Batch):
            counts = rows.counts
        with self._lock:
            conn = self._conn
            assert conn is not None, "write() outside begin_run()/end_run()"
            with _transaction(conn):
                self._append(conn, run_id, rows)
                add = {k: n for k in COUNTS if (n := (counts or {}).get(k, 0))}
                if add:  # only the columns that change (sqlite3 caches each statement)
                    columns = ", ".join(f"{k} = {k} + ?" for k in add)
                    conn.execute(f"UPDATE runs SET {columns} WHERE id = ?", (*add.values(), run_id))

    def _append(self, conn: sqlite3.Connection, run_id: int, rows: Sequence[TaskRow]) -> None:
        """``rows`` as one history row (more only for huge ones), in order: a task's
        later row in the batch is its latest. A result bigger than ``journal.INLINE``
        goes to ``results`` (replacing the task's one there); every other row of a task
        drops the task's big result, if ``results`` holds any (so a replaced result is
        never read in its place)."""
        import itertools

        flat: list[Any] = list(itertools.chain.from_iterable(rows))
        fields, at = journal.FIELDS, journal.RESULT
        inline = journal.INLINE
        longest = max(map(len, filter(None, flat[at::fields])), default=0)
        if longest > inline or self._big:
            last: dict[str, tuple[str, int, str, bytes] | None] = {}  # by each's last row
            for i in range(0, len(flat), fields):
                data = flat[i + at]
                if data is not None and len(data) > inline:
                    last[flat[i]] = (flat[i], flat[i + journal.RESULT_ID], flat[i + at - 1], data)
                    flat[i + at] = None
                else:
                    last[flat[i]] = None
            if self._big:
                drop = [name for name, big in last.items() if big is None]
                for i in range(0, len(drop), _CHUNK):
                    part = drop[i : i + _CHUNK]
                    part += [part[-1]] * (_CHUNK - len(part))
                    conn.execute(_DROP_BIG, part)
            bigs = [big for big in last.values() if big is not None]
            if bigs:
                conn.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", bigs)
                self._big = True
        limit = conn.getlimit(_limit_length()) // 2
        for count, data in journal.parts(flat, limit):
            conn.execute(
                "INSERT INTO history (run_id, tasks, rows) VALUES (?, ?, ?)", (run_id, count, data)
            )

    def result_size_limit(self) -> int:
        """The largest row SQLite takes on this store's connection (SQLITE_LIMIT_LENGTH,
        10**9 bytes unless SQLite was built otherwise); a result must fit in it."""
        import sqlite3

        with self._lock:
            if self._conn is not None:
                return self._conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        return _built_in_row_limit()

    def end_run(self, run_id: int, status: str, counts: Mapping[str, int]) -> None:
        """Record how the run ended: its status and counts (see :class:`Store`).

        Committed ``synchronous=NORMAL``: every task's row is durable already (each batch
        committed ``FULL``), and the run's connection closes next (``release``), whose
        checkpoint syncs the WAL, this record with it: one fsync less per run. A machine
        that dies in between loses this record only (the run then reads as crashed,
        its counts as its batches added them)."""
        keys = COUNTS
        with self._lock:
            conn = self._conn
            assert conn is not None
            conn.execute("PRAGMA synchronous=NORMAL")
            with _transaction(conn):
                conn.execute(
                    "UPDATE runs SET finished = ?, status = ?, tasks = ?, reused = ?, "
                    "done = ?, failed = ?, skipped = ?, cancelled = ? WHERE id = ?",
                    (time.time(), status, *(counts.get(k, 0) for k in keys), run_id),
                )

    def _holder(self, key: tuple[int, int] | None) -> tuple[str, str]:
        """Who holds the store, and what to do about it (see ``_describe_holder``)."""
        return _describe_holder(self.path, self._file, key)


# -- the store file, read-only -------------------------------------------------------


def _connect_for_run(path: Path, fd: int, key: tuple[int, int]) -> sqlite3.Connection:
    """The run's connection to the store file ``fd`` holds the lock of (``key``: its
    device and inode): creates the schema if need be (the lock made the file).

    An empty file the user created beforehand (``touch nightly.db``, mode 0644) is
    made owner-only before SQLite creates its ``-wal`` and ``-shm`` files, which take
    the store's mode: results are pickles, and status may be private. An existing
    store that others can read or write keeps its mode (the owner chose it), with a
    warning.
    """
    import sqlite3

    st = os.fstat(fd)
    if st.st_size == 0 and st.st_mode & 0o077 and st.st_uid == os.geteuid():
        os.fchmod(fd, 0o600)
    open_files.opened(key)
    try:
        # As a file: URI, so the name is always a file's name. A plain name such as
        # "file:nightly.db" would be taken as a URI by an SQLite built to take them
        # (and open nightly.db, beside the file the lock is on).
        conn = sqlite3.connect(
            _uri(path, writable=True),
            uri=True,
            check_same_thread=False,
            isolation_level=None,
        )
    except BaseException as exc:
        open_files.closed(key)
        if isinstance(exc, sqlite3.Error):
            raise _write_error(path, exc) from exc
        raise
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL until the run has begun (begin_run sets FULL): the schema, a version
        # 1 store's conversion and the run's start reach the disk with the run's first
        # batch, whose commit (FULL) syncs the whole WAL. A machine that dies before it
        # loses only those (no task's row: the store is as it was). A process that dies
        # loses nothing either way: the WAL is in the OS's cache.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        # Whether the schema is there, not whether the file is empty: the WAL pragma
        # writes the first page before the schema's transaction, so a run killed in
        # between leaves a file with no tables, which is a store not yet created.
        with _transaction(conn, str(path)):
            created = not _has_schema(conn)
            if created:
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("format", FORMAT),
                        ("version", str(SCHEMA_VERSION)),
                        ("token", os.urandom(8).hex()),
                    ],
                )
            else:
                version = _version_of(conn)
                if version == 1:  # converted in place, in this transaction
                    _migrate_v1(conn)
                elif version != SCHEMA_VERSION:  # changed since the store was opened
                    raise _unreadable_version(path, str(version))
            if not _has_graph_column(conn):
                # Runs record their graph's name (issue 16): a store from before gets the
                # column here, empty for the runs it has, and so does a new one, so both
                # have the same schema. Same version: older readers ignore the column.
                conn.execute(_GRAPH_COLUMN)
    except BaseException as exc:
        conn.close()
        open_files.closed(key)
        if isinstance(exc, sqlite3.Error):
            raise _write_error(path, exc) from exc
        raise
    if created:
        _tighten(path, st)  # a file with no store in it yet is ours to make private
    else:
        _warn_if_shared(path, st)
    return conn


def _write_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """A StoreError for SQLite's error opening the run's connection."""
    return _trouble(exc, str(path), writing=True) or _damaged(path, exc)


def _describe_holder(path: Path, lock: FileLock, key: tuple[int, int] | None) -> tuple[str, str]:
    """Who holds the store, and what to do about it: the run recorded as running, or
    the process that holds the lock if that run's process is gone (a process it
    forked kept the lock, say)."""
    import socket

    wait = "wait for that run to end (or stop it) and try again"
    row = _running_run(path)
    holders, names = ([], []) if key is None else lock_holders(key)
    if key is not None and not lock.held_here(key):
        # This process has just locked the file itself, then found an older
        # asyncgraph's STORE-lock held (see FileLock._legacy_lock): it is not the holder.
        holders = [(pid, cmd) for pid, cmd in holders if pid != os.getpid()]
    holders += [h for h in legacy_holders(path) if h not in holders]
    for name in names:  # the holder's name of the file: a hard link keeps its own -wal
        if row is not None:
            break
        if name != os.path.realpath(path):
            row = _running_run(Path(name))
    if row is None:
        if holders:
            return f"another run that is starting ({processes(holders)})", wait
        return "another run that is starting", wait
    run_id, pid, host, started = row
    run = f"run {run_id} (pid {pid} on {host}, started {_utc(started)})"
    if host != socket.gethostname():
        return run, wait
    if any(p == pid for p, _ in holders) or (not holders and alive(pid)):
        return run, wait
    state = "no longer exists" if not alive(pid) else "does not hold the lock"
    who = (
        processes(holders)
        if holders
        else f"a process that could not be found (try: fuser {str(path)!r})"
    )
    return (
        f"{who}, which holds the store's lock: the store records {run} as running, but "
        f"that process {state}; a process it started may have kept the lock",
        "stop that process and try again",
    )


def _built_in_row_limit() -> int:
    """SQLite's limit for a row on a new connection (SQLITE_LIMIT_LENGTH), read once."""
    import sqlite3

    global _built_in_limit
    if _built_in_limit is None:
        conn = sqlite3.connect(":memory:")  # a new connection's limit: the built-in one
        try:
            _built_in_limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        finally:
            conn.close()
    return _built_in_limit


def _by_columns(
    records: dict[str, tuple[list[Any], int]], states: Mapping[str, State]
) -> dict[str, StoredTask] | None:
    """``tasks()`` of ``records`` column by column, when each batch they come from holds
    only latest records (as after a store's first run, or right after ``state`` was
    rewritten): then they are those batches' records in order, each field one slice of
    its batch, and the rows are made by ``map`` (no Python step per record beside the
    constructor). None otherwise, or for a status this version does not know (the
    record by record pass says which)."""
    first = _FIRST
    values = records.values()
    flats = list(dict(zip(map(id, map(first, values)), map(first, values), strict=True)).values())
    width = journal.FIELDS
    if sum(map(len, flats)) != len(records) * width:
        return None  # some record was replaced by a later one
    out: dict[str, StoredTask] = {}
    new = _new_stored_task
    get = states.get
    for flat in flats:
        statuses = list(map(get, flat[2::width]))
        if None in statuses:
            return None
        names = flat[0::width]
        rows = map(new, names, flat[1::width], statuses, *(flat[k::width] for k in range(3, 12)))
        out.update(zip(names, rows, strict=True))
    return out


_FIRST = operator.itemgetter(0)

_CHECKED_META = "SELECT key, value FROM meta WHERE key IN ('format', 'version')"


def _check_store(path: Path) -> None:
    """Raise StoreError if the file exists and is not a readable asyncgraph store."""
    st = stat_of(path)
    if st is None:
        # What a run would refuse (files.FileLock), said as early: a load or plan of a
        # store in a missing directory (a typo) would otherwise plan every task "new".
        check_directory(path)
    if st is None or st.st_size == 0:
        return  # created on first write
    import sqlite3  # here, not at the top: `import asyncgraph` stays cheap

    try:
        with _connected(path, st) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            meta = (  # the two it checks (not the last run's digests: 16 bytes a task)
                dict(conn.execute(_CHECKED_META)) if "meta" in tables else {}
            )
            if meta.get("format") == FORMAT:
                conn.execute("SELECT count(*) FROM state").fetchone()
                conn.execute("SELECT count(*) FROM runs").fetchone()
    except sqlite3.DatabaseError as exc:
        raise _trouble(exc, str(path), writing=False) or _damaged(path, exc) from exc
    if not tables:
        return  # a creation that never committed its schema: created on first write
    if meta.get("format") != FORMAT:
        raise StoreError(
            f"{str(path)!r} is an SQLite database but not an asyncgraph store "
            f"(it has the tables {sorted(tables)}); give another path"
        )
    version = str(meta.get("version", "0"))
    if not version.isdigit():
        raise StoreError(
            f"store {str(path)!r} has schema version {version!r}, which is not a "
            "number: something other than asyncgraph changed the file; restore it from "
            "a backup, or start a new store"
        )
    if int(version) not in _READS:
        raise _unreadable_version(path, version)


def _unreadable_version(path: Path, version: str) -> StoreError:
    """The error for a store of a schema version this asyncgraph does not read."""
    if int(version) > SCHEMA_VERSION:
        return StoreError(
            f"store {str(path)!r} has schema version {version}, written by a newer "
            f"asyncgraph; this one reads versions {_READS[0]} to {SCHEMA_VERSION}: "
            "upgrade asyncgraph (pip install -U asyncgraph) to use it, or start a new store"
        )
    return StoreError(
        f"store {str(path)!r} has schema version {version}, which no asyncgraph wrote "
        f"(this one reads versions {_READS[0]} to {SCHEMA_VERSION}); restore it from a "
        "backup, or start a new store"
    )


def _damaged(path: Path, exc: BaseException) -> StoreError:
    return StoreError(
        f"{str(path)!r} is not an asyncgraph store, or it is damaged "
        f"(SQLite says: {exc}); give another path, or restore the file from a backup"
    )


def _uri(path: Path, immutable: bool = False, writable: bool = False, tidy: bool = False) -> str:
    # as_uri() percent-encodes '#' and '?', which a plain f"file:{path}" would take
    # as the URI's fragment and query (and open another file).
    uri = Path(os.path.abspath(path)).as_uri()
    if writable:
        return uri
    if tidy:
        # A read of a store with no -wal or -shm beside it: opened read-write (never
        # creating the file) but query-only, so that SQLite, closing the last
        # connection, removes the -wal and -shm it made, as it does for a writer; a
        # read-only connection cannot and leaves both behind. With other connections
        # open (a run), SQLite leaves them to the last one, as it always does.
        return uri + "?mode=rw"

    uri += "?mode=ro"
    return uri + "&immutable=1" if immutable else uri


@contextlib.contextmanager
def _connected(path: Path, st: os.stat_result) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the store file ``st`` describes; never changes it.

    SQLite reads a WAL store through its ``-shm`` file, which it creates if need be.
    In a read-only directory it cannot, and then:

    * with no ``-wal`` file, or an empty one, the file alone is the whole store: it is
      opened ``immutable=1`` (no -shm, no locks), and its size and times are checked
      again afterwards, since that mode cannot see a run writing it from elsewhere
      (through a writable mount of the same directory, say);
    * a ``-wal`` with commits in it cannot be read without the -shm: StoreError,
      saying so (``immutable=1`` would silently skip those commits).

    The same goes for a full disk (no room for the -shm, or no inode), found before
    SQLite tries (it would leave a -shm of a few bytes behind) or from its error.
    """
    import sqlite3

    key = (st.st_dev, st.st_ino)
    open_files.opened(key)
    conn: sqlite3.Connection | None = None
    seen: tuple[int, int, int] | None = None  # the file as an immutable read found it
    try:
        if not has_wal(path) and (not writable(str(path), file=True) or no_room(path) is not None):
            # A file we cannot write (chmod 0444, chattr +i): SQLite would leave a
            # -shm and an empty -wal beside it, unable to remove them. A full disk
            # (no room or no inode for the -shm): SQLite would fail as "disk I/O
            # error", leaving a -shm of a few bytes and an empty -wal.
            seen = identity(path)
            conn = sqlite3.connect(_uri(path, immutable=True), uri=True)
        else:
            conn = sqlite3.connect(_uri(path, tidy=_nothing_beside(path)), uri=True)
            try:
                conn.execute("PRAGMA query_only = ON")  # a read, whatever the mode
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError as exc:
                if not _no_shm(exc):
                    raise
                conn.close()
                conn = None
                seen = _unchanging(path, exc)
                conn = sqlite3.connect(_uri(path, immutable=True), uri=True)
        yield conn
    finally:
        if conn is not None:
            conn.close()
        open_files.closed(key)
    if seen is not None and identity(path) != seen:
        raise StoreError(
            f"store {str(path)!r} changed while it was read (is a run writing it "
            "from another mount?); read it again"
        )


def _nothing_beside(path: Path) -> bool:
    """Whether the store has neither a ``-wal`` nor a ``-shm`` file beside it."""
    return not any(os.path.lexists(name) for name in beside(path))


def _unchanging(path: Path, exc: sqlite3.Error) -> tuple[int, int, int] | None:
    """The file's identity if it can be read as immutable; StoreError if it cannot."""
    wal, shm = beside(path)
    if not has_wal(path):
        return identity(path)
    directory = os.path.dirname(os.path.realpath(path))
    full = full_because(directory)
    advice = (
        "read it once where its directory is writable, or copy the store with its "
        "-wal file to a writable directory"
    )
    if not writable(directory):
        why = f"the directory {directory!r} is read-only"
    elif full is not None:
        why = f"{full}; SQLite says: {exc}"
        advice = "free some space there and read it again: nothing is lost"
    else:
        why = f"SQLite says: {exc}"
    raise StoreError(
        f"store {str(path)!r} cannot be read here: its last commits are in "
        f"{wal!r}, and SQLite needs to create {shm!r} to read "
        f"them, which it cannot ({why}); {advice}"
    ) from exc


def _running_run(path: Path) -> tuple[int, int, str, float] | None:
    """The last run recorded as running in the store at ``path`` (a store's path, or
    another name of its file), read on a connection of its own."""
    import sqlite3

    with contextlib.suppress(sqlite3.Error, StoreError, OSError):
        st = stat_of(path)
        if st is None or st.st_size == 0:
            return None
        with _connected(path, st) as conn:
            if not _has_schema(conn):
                return None
            row = conn.execute(
                "SELECT id, pid, host, started FROM runs WHERE status = 'running' "
                "ORDER BY id DESC LIMIT 1"
            ).fetchone()
            return None if row is None else (row[0], row[1], row[2], row[3])
    return None


def _decode(path: Path, rows: Mapping[str, tuple[str, bytes]]) -> dict[str, Any]:
    out = {}
    for name, (fmt, data) in rows.items():
        try:
            out[name] = deserialize(fmt, data)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"the stored result of task {name!r} in {str(path)!r} cannot be "
                f"loaded ({type(exc).__name__}: {exc}); is the code that defines its "
                f"type importable here? Or rerun the task: ag.reset(graph, [{name!r}])"
            ) from exc
    return out


def _tighten(path: Path, st: os.stat_result) -> None:
    """An SQLite file with no tables made beforehand (``sqlite3 x.db VACUUM``), which
    SQLite opened with its mode and gave its ``-wal`` and ``-shm`` files: all three
    are made owner-only now that the store's schema is in it."""
    if not st.st_mode & 0o077 or st.st_uid != os.geteuid():
        return
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(name, 0o600)


def _warn_if_shared(path: Path, st: os.stat_result) -> None:
    mode = stat.S_IMODE(st.st_mode)
    what = [w for w, bits in (("readable", 0o044), ("writable", 0o022)) if mode & bits]
    if not what:
        return
    import warnings

    warnings.warn(
        f"store {str(path)!r} is {' and '.join(what)} by other users (mode "
        f"{mode:04o}): its results are pickles, so whoever can write it can run code "
        "as the user who loads them, and whoever can read it can read every result; "
        f"if that is not meant, chmod 600 {str(path)!r}",
        UserWarning,
        stacklevel=2,
    )


def _no_shm(exc: sqlite3.Error) -> bool:
    """Whether SQLite's error says it could not open, create or grow the ``-shm``."""
    import sqlite3

    code = _code(exc)
    shm = (sqlite3.SQLITE_IOERR_SHMOPEN, sqlite3.SQLITE_IOERR_SHMSIZE, sqlite3.SQLITE_IOERR_SHMMAP)
    return code in shm or (code & 0xFF) in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_FULL)


def _code(exc: sqlite3.Error) -> int:
    """SQLite's extended result code of ``exc`` (0 for an error sqlite3 did not raise)."""
    return getattr(exc, "sqlite_errorcode", None) or 0


def _trouble(exc: sqlite3.Error, path: str, *, writing: bool) -> StoreError | None:
    """A StoreError naming the file, for SQLite's errors about access to the store file
    and the disk under it rather than about its bytes, worded for a read or for a run's
    write (``writing``); None for the others (the caller's: damaged, or as they are).

    The one place that reads SQLite's result codes for a message. A read tells apart:
    busy; a full disk (the file system says so); no access to the file. A write: a full
    disk (the file system says so, or SQLite: SQLITE_FULL is also a quota or a size
    limit); read-only; a failed disk.
    """
    import sqlite3

    code = _code(exc) & 0xFF
    where, says = f"store {path!r}", f"SQLite says: {exc}"
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return None if writing else StoreError(f"{where} is busy ({says}); try again")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR) or (
        code == sqlite3.SQLITE_FULL and not writing
    ):
        # SQLite says "unable to open database file" when it cannot create the -wal or
        # -shm for want of an inode, and "disk I/O error" when it cannot fill the -shm.
        size = 0 if writing and code == sqlite3.SQLITE_CANTOPEN else SHM_SIZE
        full = full_because(os.path.dirname(os.path.realpath(path)), files=1, size=size)
        if full is not None and writing:
            return StoreError(
                f"{where} is full: {full}, and a run needs room there for the store's -wal "
                f"and -shm files ({says}); free some space there (delete files) and run "
                "again: what was committed before is kept"
            )
        if full is not None:
            return StoreError(
                f"{where} cannot be read: {full} ({says}); free some space there and read it again"
            )
    if not writing:
        if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_IOERR):
            return StoreError(
                f"{where} cannot be read ({says}); check that the file and its directory "
                "can be read"
            )
        return None
    if code == sqlite3.SQLITE_FULL:
        return StoreError(
            f"{where} is full: there is no room on its disk (or in its quota, or under its "
            f"size limit) for this write ({says}); free some space and run again: what was "
            "committed before is kept"
        )
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN):
        return StoreError(
            f"{where} is read-only, or its directory is ({says}); a run writes every "
            "outcome to its store: make both writable, or run on a copy"
        )
    if code == sqlite3.SQLITE_IOERR:
        return StoreError(
            f"{where}: the disk failed a read or write ({says}); check the disk, then run "
            "again: what was committed before is kept"
        )
    return None


def _check_path(path: str | os.PathLike[str]) -> None:
    """Refuse what cannot name a store file, before anything is opened."""
    text = os.fspath(path)
    text = text if isinstance(text, str) else os.fsdecode(text)
    if "\0" in text:
        raise StoreError(
            f"SQLiteStore(path): the path {text!r} holds a NUL byte, which no file name "
            "can; give the store's file path"
        )
    if text == ":memory:" or text.startswith("file:"):
        raise StoreError(
            f"SQLiteStore(path): {text!r} is SQLite's "
            f"{'in-memory database' if text == ':memory:' else 'URI'} syntax, and a store is "
            "a file that outlives the run; give its file path (nightly.db), or run without "
            "a store"
        )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, path: str | None = None) -> Any:
    """One write transaction. SQLite's errors about the disk (full, read-only, I/O)
    become a StoreError naming the file; other errors pass as they are.

    After some errors (a full disk, an I/O error) SQLite has rolled the transaction
    back already: a ROLLBACK then fails ("no transaction is active") and would hide the
    cause, so it is issued only if the transaction is still open.
    """
    import sqlite3

    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        mapped = _trouble(exc, path if path is not None else _file_of(conn), writing=True)
        if mapped is None:
            raise
        raise mapped from exc


def _file_of(conn: sqlite3.Connection) -> str:
    import sqlite3

    with contextlib.suppress(sqlite3.Error):
        for _, name, file in conn.execute("PRAGMA database_list"):
            if name == "main":
                return str(file)
    return "?"


def _statements(script: str) -> list[str]:
    """The statements of a script (a trigger's body has semicolons of its own)."""
    import sqlite3

    out, buf = [], ""
    for piece in script.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    return out


def _limit_length() -> int:
    import sqlite3

    return sqlite3.SQLITE_LIMIT_LENGTH


def _describe(
    conn: sqlite3.Connection, run_id: int, graph: str | None, order: Sequence[str]
) -> None:
    import json

    conn.execute("UPDATE runs SET graph = ? WHERE id = ?", (graph, run_id))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('order', ?)", (json.dumps(list(order)),))


def _keep_digests(conn: sqlite3.Connection, known: Digests) -> None:
    """Keep the run's graph digests for the next load (see ``known_digests``), unless
    the store holds them already (the same graph digest: the same digests)."""
    graph = known[0]
    row = conn.execute("SELECT value FROM meta WHERE key = 'graph'").fetchone()
    if row is not None and row[0] == graph:
        return
    data = journal.encode(list(known))
    conn.executemany(
        "INSERT OR REPLACE INTO meta VALUES (?, ?)", [("graph", graph), ("digests", data)]
    )


def _version_of(conn: sqlite3.Connection) -> int:
    """The schema version of the store ``conn`` reads (checked on open: 1 or 2)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    return 1 if row is None or row[0] == "1" else int(row[0])


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Convert a version 1 store to version 2, in the caller's transaction.

    Version 1 had a row per task in ``state`` (its latest record, with its result) and
    one in ``history`` per record written (a trigger's). Here: the history, in its
    order, becomes one row per run (more if huge), its records without results as
    they were; ``state`` becomes the latest records as of the last of them, the small
    results inside, the bigger ones moved to ``results`` by SQLite itself (never held
    in memory). Every run, count, fingerprint, result and its key stays the same, so
    what was done is reused, and a graph loaded before still reads its results.
    """
    import itertools

    limit = conn.getlimit(_limit_length()) // 2
    conn.execute("DROP TRIGGER IF EXISTS state_history")
    conn.execute("ALTER TABLE history RENAME TO history_v1")
    conn.execute("ALTER TABLE state RENAME TO state_v1")
    for statement in _statements(_TABLES):
        conn.execute(statement)
    rows = conn.execute(
        "SELECT run_id, name, status, attempts, started, finished, error_type, "
        "error_message, traceback, fingerprint FROM history_v1 ORDER BY rowid"
    )
    for run_id, group in itertools.groupby(rows, key=lambda r: r[0]):
        flat: list[Any] = []
        for r in group:
            flat += (r[1], r[0], *r[2:], None, None, None, None)
        for count, data in journal.parts(flat, limit):
            conn.execute(
                "INSERT INTO history (run_id, tasks, rows) VALUES (?, ?, ?)",
                (run_id, count, data),
            )
    conn.execute(
        "INSERT INTO results SELECT name, result_id, result_format, result FROM state_v1 "
        "WHERE result IS NOT NULL AND length(result) > ?",
        (journal.INLINE,),
    )
    latest = conn.execute(
        f"SELECT {_V1_COLUMNS}, CASE WHEN length(result) > ? THEN NULL ELSE result END "
        "FROM state_v1 ORDER BY rowid",
        (journal.INLINE,),
    ).fetchall()
    upto = conn.execute("SELECT coalesce(max(seq), 0) FROM history").fetchone()[0]
    flat = list(itertools.chain.from_iterable(latest))
    if flat:
        for count, data in journal.parts(flat, limit):
            conn.execute(
                "INSERT INTO state (upto, tasks, rows) VALUES (?, ?, ?)", (upto, count, data)
            )
    conn.execute("DROP TABLE history_v1")
    conn.execute("DROP TABLE state_v1")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(SCHEMA_VERSION),))
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('token', ?)", (os.urandom(8).hex(),))


def _has_graph_column(conn: sqlite3.Connection) -> bool:
    """Whether the store's ``runs`` table has the ``graph`` column (added in place)."""
    return any(row[1] == "graph" for row in conn.execute("PRAGMA table_info(runs)"))


def _has_schema(conn: sqlite3.Connection) -> bool:
    tables: int = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    return tables > 0


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def open_store(store: Any, parameter: str = "store") -> Store:
    """A Store from what the user passed: a path, or an object with the Store methods."""
    if isinstance(store, (str, os.PathLike)):
        return SQLiteStore(store)
    return check_store(store, parameter)
