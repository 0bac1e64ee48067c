"""The durable store: one SQLite file that records every run and every task's outcome.

Layout (see ``docs/store.md``)::

    meta   (key, value)              format marker and schema version
    runs   (id, started, finished, status, pid, host, counts...)
    state  (name -> latest record)   status, times, error text, fingerprint, and the
                                     result (its format, a random key, the bytes: the
                                     last column, which status reads never touch)
    history (run_id, name, ...)      every record every run wrote, without results:
                                     appended by a trigger on state, in SQLite itself

A run holds the store for its whole length through an ``flock`` on a ``-lock`` file beside
it (the kernel drops it if the process dies, so a SIGKILLed run never leaves it held). The
run's writes go through one writer thread (:class:`RunWriter`) that commits in batches, so
the event loop never waits for the disk; a task counts as done (its ``done`` event, the
returned graph) only once its result is committed. WAL mode with ``synchronous=FULL``: a
committed result survives a crash of the process and of the machine.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import os
import pickle
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import cloudpickle

from ._exceptions import StoreError, StoreLockedError, UnstorableResultError
from ._state import State

if TYPE_CHECKING:
    import sqlite3

__all__ = [
    "RunInfo",
    "SQLiteStore",
    "Store",
    "StoredTask",
    "TaskRow",
    "new_result_id",
    "open_store",
    "serialize",
]

FORMAT = "asyncgraph-store"
#: The counts of a run, in the order of the ``runs`` table's columns.
COUNTS = ("tasks", "reused", "done", "failed", "skipped", "cancelled")
SCHEMA_VERSION = 1

_SCHEMA = """
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
CREATE TABLE state (
    name TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started REAL,
    finished REAL,
    error_type TEXT,
    error_message TEXT,
    traceback TEXT,
    fingerprint TEXT,
    code TEXT,
    result_id INTEGER,
    result_format TEXT,
    result BLOB
);
CREATE TABLE history (
    run_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started REAL,
    finished REAL,
    error_type TEXT,
    error_message TEXT,
    traceback TEXT,
    fingerprint TEXT
);
CREATE TRIGGER state_history AFTER INSERT ON state BEGIN
    INSERT INTO history VALUES (
        NEW.run_id, NEW.name, NEW.status, NEW.attempts, NEW.started, NEW.finished,
        NEW.error_type, NEW.error_message, NEW.traceback, NEW.fingerprint
    );
END
"""


@dataclass(frozen=True, slots=True)
class StoredTask:
    """What the store knows about one task (its result stays in the store)."""

    name: str
    run_id: int
    status: State
    attempts: int
    started: float | None
    finished: float | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    fingerprint: str | None
    code: str | None  # the digest of the task's own code and options
    result_id: int | None  # a random key of the stored result (None: no result)


class TaskRow(NamedTuple):
    """One write: a task's record at the end (or the start) of its attempts in a run.

    Its fields are the columns of the ``state`` table, in order, so a batch goes to
    SQLite as it is. A NamedTuple: one is built per task on the loop's thread.
    """

    name: str
    run_id: int
    status: str  # a State's value
    attempts: int
    started: float | None
    finished: float | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    fingerprint: str | None
    code: str | None
    result_id: int | None  # a new random key (new_result_id()) for a done task's result
    result_format: str | None
    result: bytes | None


def new_result_id() -> int:
    """A key for a new result: random, so no key is ever handed out twice."""
    return _random.getrandbits(62) + 1


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run in a store's history."""

    id: int
    started: float
    finished: float | None
    status: str  # running, done, failed, cancelled, crashed
    pid: int
    host: str
    tasks: int
    reused: int
    done: int
    failed: int
    skipped: int
    cancelled: int


@runtime_checkable
class Store(Protocol):
    """What a run needs from a store. :class:`SQLiteStore` is the embedded default.

    Every method may block (they run in threads, never on the event loop); ``write`` is
    called from one writer thread at a time and must be atomic: all rows or none.

    Two optional extras a store may have (:class:`SQLiteStore` has both):

    - ``result_size_limit() -> int | None``: the largest row it can hold, in bytes. A
      result that does not fit fails its own task with UnstorableResultError before it
      reaches ``write``, instead of failing the write (and so the run).
    - a ``counts`` keyword on ``write``: how many of the run's tasks ended in each state
      with these rows (and, with the first batch, ``tasks`` and ``reused``), to add to
      the run's counts in the same transaction, so the counts of a run that never
      reaches ``end_run`` (killed) are those of its committed rows.
    """

    def tasks(self) -> dict[str, StoredTask]:
        """The latest record of every task, without loading any result."""
        ...

    def load_result(self, result_id: int, task: str) -> Any:
        """Deserialize one stored result."""
        ...

    def runs(self) -> list[RunInfo]:
        """Every run, oldest first."""
        ...

    def acquire(self) -> None:
        """Hold the store for one run, or raise StoreLockedError naming who holds it."""
        ...

    def release(self) -> None:
        """Let go of the store (also when no run began)."""
        ...

    def begin_run(self) -> int:
        """Record that a run starts (the store is held) and return its id."""
        ...

    def write(self, run_id: int, rows: Sequence[TaskRow]) -> None:
        """Record these rows durably, in one transaction (see above for ``counts``)."""
        ...

    def end_run(self, run_id: int, status: str, counts: Mapping[str, int]) -> None:
        """Record how the run ended."""
        ...


# -- serialization ---------------------------------------------------------------------

_PLAIN = (type(None), bool, int, float, str, bytes)
_NONE = ("pickle", pickle.dumps(None, protocol=5))


def serialize(name: str, value: Any, what: str = "returned") -> tuple[str, bytes]:
    """A result as ``(format, data)``; raise UnstorableResultError if it cannot be.

    Plain values go through :mod:`pickle`; anything else through cloudpickle, so a class
    or function defined in a script or a notebook is stored by value and loads in another
    process. A pandas DataFrame is stored as Parquet when pyarrow is installed (smaller,
    faster, readable by other tools), and pickled if Parquet cannot represent it.
    """
    if value is None:
        return _NONE  # the most common result of all (a task run for its side effects)
    if type(value) in _PLAIN:
        return "pickle", pickle.dumps(value, protocol=5)
    if type(value).__name__ == "DataFrame" and type(value).__module__.startswith("pandas"):
        data = _to_parquet(value)
        if data is not None:
            return "parquet", data
    try:
        return "pickle", cloudpickle.dumps(value, protocol=5)
    except Exception as exc:
        raise UnstorableResultError(
            f"task {name!r} {what} a {type(value).__name__} that cannot be stored "
            f"({type(exc).__name__}: {exc}); return a picklable value (plain data, a "
            "DataFrame) or run without a store"
        ) from exc


def _to_parquet(frame: Any) -> bytes | None:
    import importlib.util
    import io

    if importlib.util.find_spec("pyarrow") is None:
        return None

    buf = io.BytesIO()
    try:
        frame.to_parquet(buf)
    except Exception:  # noqa: BLE001 - e.g. mixed-type columns: fall back to a pickle
        return None
    return buf.getvalue()


def deserialize(fmt: str, data: bytes) -> Any:
    if fmt == "pickle":
        return pickle.loads(data)
    if fmt == "parquet":
        import io

        import pandas as pd

        return pd.read_parquet(io.BytesIO(data))
    raise StoreError(f"unknown result format {fmt!r}; was the store written by a newer asyncgraph?")


# -- the SQLite store -------------------------------------------------------------------

#: What each state is stored as (``State.value`` is a Python-level property lookup).
_VALUES = {state: state.value for state in State}
#: SQLite's limit for a row on a new connection (SQLITE_LIMIT_LENGTH), once read.
_built_in_limit: int | None = None
#: Result keys: random (seeded from the OS), so no key is handed out again for another
#: result, in this process or another.
_random = random.Random()


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
        self.path = Path(path)
        self._lock = threading.Lock()  # the run's connection, used from a few threads
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._check()

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
        self._lock_fd = None

    def __del__(self) -> None:
        # A store dropped while held (a run that could not clean up) lets go of its
        # lock and connection rather than keep them until the process ends.
        with contextlib.suppress(Exception):
            self.close()

    # -- opening ------------------------------------------------------------------------

    def _uri(self) -> str:
        # as_uri() percent-encodes '#' and '?', which a plain f"file:{path}" would take
        # as the URI's fragment and query (and open another file).
        return Path(os.path.abspath(self.path)).as_uri() + "?mode=ro"

    def _check(self) -> None:
        """Raise StoreError if the file exists and is not a readable asyncgraph store."""
        if self.path.is_dir():
            raise StoreError(f"store {str(self.path)!r} is a directory; give a file name")
        if not self.path.exists() or self.path.stat().st_size == 0:
            return  # created on first write
        import sqlite3  # here, not at the top: `import asyncgraph` stays cheap

        try:
            conn = sqlite3.connect(self._uri(), uri=True)
            try:
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
                meta = dict(conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
                if meta.get("format") == FORMAT:
                    conn.execute("SELECT count(*) FROM state").fetchone()
                    conn.execute("SELECT count(*) FROM runs").fetchone()
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc
        if not tables:
            return  # a creation that never committed its schema: created on first write
        if meta.get("format") != FORMAT:
            raise StoreError(
                f"{str(self.path)!r} is an SQLite database but not an asyncgraph store "
                f"(it has the tables {sorted(tables)}); give another path"
            )
        version = int(meta.get("version", "0"))
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"store {str(self.path)!r} has schema version {version}, and this "
                f"asyncgraph reads version {SCHEMA_VERSION}; use the asyncgraph that wrote "
                "it, or start a new store"
            )

    def _damaged(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"{str(self.path)!r} is not an asyncgraph store, or it is damaged "
            f"(SQLite says: {exc}); give another path, or restore the file from a backup"
        )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A connection to read with (None: no store yet); never creates or changes it.

        SQLite's own errors while reading become a StoreError naming the file: opening
        checks the tables a store must have, but a damaged page deeper in the file shows
        only when it is read::

            ag.load(g, "nightly.db")   # <- sqlite3.DatabaseError: disk image is malformed
        """
        import sqlite3

        try:
            if self._conn is not None:
                with self._lock:
                    yield self._conn
                return
            if not self.path.exists() or self.path.stat().st_size == 0:
                yield None
                return
            try:
                conn = sqlite3.connect(self._uri(), uri=True)
            except sqlite3.DatabaseError as exc:
                raise self._damaged(exc) from exc
            try:
                yield conn if _has_schema(conn) else None
            finally:
                conn.close()
        except (sqlite3.DatabaseError, ValueError) as exc:  # ValueError: a bad status
            raise StoreError(
                f"store {str(self.path)!r} is damaged (reading it failed: "
                f"{type(exc).__name__}: {exc}); restore the file from a backup, or move it "
                "aside to start afresh"
            ) from exc

    def _open_for_run(self) -> sqlite3.Connection:
        """The run's connection: creates the file (owner-only) and the schema if need be."""
        import sqlite3

        if self._conn is not None:
            return self._conn
        if not (self.path.exists() and self.path.stat().st_size > 0):
            # Owner-only from the first byte: results are pickles, status may be private.
            # SQLite gives its -wal and -shm files the same permissions.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            # Whether the schema is there, not whether the file is empty: the WAL pragma
            # writes the first page before the schema's transaction, so a run killed in
            # between leaves a file with no tables, which is a store not yet created.
            with _transaction(conn):
                if not _has_schema(conn):
                    for statement in _statements(_SCHEMA):
                        conn.execute(statement)
                    conn.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [("format", FORMAT), ("version", str(SCHEMA_VERSION))],
                    )
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise self._damaged(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        """Close the run's connection and let go of the lock (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._release()

    # -- reading (never unpickles) ------------------------------------------------------

    def tasks(self) -> dict[str, StoredTask]:
        with self._reading() as conn:
            if conn is None:
                return {}
            rows = conn.execute(
                "SELECT name, run_id, status, attempts, started, finished, error_type, "
                "error_message, traceback, fingerprint, code, result_id FROM state "
                "ORDER BY rowid"
            ).fetchall()
            states = {s.value: s for s in State}
            # State(...) for an unknown value: its ValueError says what it read
            return {
                r[0]: StoredTask(r[0], r[1], states.get(r[2]) or State(r[2]), *r[3:]) for r in rows
            }

    def runs(self) -> list[RunInfo]:
        with self._reading() as conn:
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT id, started, finished, status, pid, host, tasks, reused, done, "
                "failed, skipped, cancelled FROM runs ORDER BY id"
            ).fetchall()
        return [RunInfo(*r) for r in rows]

    def run_tasks(self, run_id: int) -> list[StoredTask]:
        """The records one run wrote, in the order it wrote them (results not included:
        only the latest result of each task is kept)."""
        with self._reading() as conn:
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT name, run_id, status, attempts, started, finished, error_type, "
                "error_message, traceback, fingerprint FROM history WHERE run_id = ? "
                "ORDER BY rowid",
                (run_id,),
            ).fetchall()
            return [
                StoredTask(
                    r[0], r[1], State(r[2]), r[3], r[4], r[5], r[6], r[7], r[8], r[9], None, None
                )
                for r in rows
            ]

    def load_result(self, result_id: int, task: str) -> Any:
        with self._reading() as conn:
            row = (
                None
                if conn is None
                else conn.execute(
                    "SELECT result_format, result FROM state WHERE name = ? AND result_id = ?",
                    (task, result_id),
                ).fetchone()
            )
        if row is None:
            raise StoreError(
                f"the result of task {task!r} is no longer in store {str(self.path)!r} "
                "(a later run replaced it); load the graph again"
            )
        return self._decode({task: row})[task]

    def load_results(self, wanted: Mapping[str, int]) -> dict[str, Any]:
        """Several results at once (task name -> result id), on one connection."""
        out: dict[str, Any] = {}
        with self._reading() as conn:
            if conn is not None:
                for name, result_id in wanted.items():
                    row = conn.execute(
                        "SELECT result_format, result FROM state WHERE name = ? AND result_id = ?",
                        (name, result_id),
                    ).fetchone()
                    if row is not None:
                        out[name] = row
        missing = [n for n in wanted if n not in out]
        if missing:
            return {**{n: self.load_result(wanted[n], n) for n in missing}, **self._decode(out)}
        return self._decode(out)

    def _decode(self, rows: Mapping[str, tuple[str, bytes]]) -> dict[str, Any]:
        out = {}
        for name, (fmt, data) in rows.items():
            try:
                out[name] = deserialize(fmt, data)
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(
                    f"the stored result of task {name!r} in {str(self.path)!r} cannot be "
                    f"loaded ({type(exc).__name__}: {exc}); is the code that defines its "
                    f"type importable here? Or rerun the task: ag.reset(graph, [{name!r}])"
                ) from exc
        return out

    # -- one run ------------------------------------------------------------------------

    def acquire(self) -> None:
        with self._lock:
            self._acquire()

    def release(self) -> None:
        self.close()

    def begin_run(self) -> int:
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
        return run_id

    def write(
        self, run_id: int, rows: Sequence[TaskRow], counts: Mapping[str, int] | None = None
    ) -> None:
        """Record ``rows``, and add ``counts`` to the run's counts, in one transaction."""
        # One statement per batch: the rows are the table's columns, bound in C. A
        # task's later row in the same batch replaces its earlier one (INSERT OR
        # REPLACE, applied in order).
        with self._lock:
            conn = self._conn
            assert conn is not None, "write() outside begin_run()/end_run()"
            with _transaction(conn):
                conn.executemany(
                    "INSERT OR REPLACE INTO state VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
                )
                add = {k: n for k in COUNTS if (n := (counts or {}).get(k, 0))}
                if add:  # only the columns that change (sqlite3 caches each statement)
                    columns = ", ".join(f"{k} = {k} + ?" for k in add)
                    conn.execute(f"UPDATE runs SET {columns} WHERE id = ?", (*add.values(), run_id))

    def result_size_limit(self) -> int:
        """The largest row SQLite takes on this store's connection (SQLITE_LIMIT_LENGTH,
        10**9 bytes unless SQLite was built otherwise); a result must fit in it."""
        import sqlite3

        global _built_in_limit
        with self._lock:
            if self._conn is not None:
                return self._conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
        if _built_in_limit is None:
            conn = sqlite3.connect(":memory:")  # a new connection's limit: the built-in one
            try:
                _built_in_limit = conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
            finally:
                conn.close()
        return _built_in_limit

    def end_run(self, run_id: int, status: str, counts: Mapping[str, int]) -> None:
        keys = COUNTS
        with self._lock:
            conn = self._conn
            assert conn is not None
            with _transaction(conn):
                conn.execute(
                    "UPDATE runs SET finished = ?, status = ?, tasks = ?, reused = ?, "
                    "done = ?, failed = ?, skipped = ?, cancelled = ? WHERE id = ?",
                    (time.time(), status, *(counts.get(k, 0) for k in keys), run_id),
                )

    def _acquire(self) -> None:
        import fcntl

        if self._lock_fd is not None:
            return
        lock_path = f"{self.path}-lock"
        if not self.path.parent.is_dir():
            raise StoreError(
                f"store {str(self.path)!r}: the directory {str(self.path.parent)!r} does not "
                "exist; create it first (a typo in the path?)"
            )
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self._holder()
            raise StoreLockedError(
                f"store {str(self.path)!r} is in use by {holder}; wait for that run to "
                "end (or stop it) and try again",
                holder,
            ) from None
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def _holder(self) -> str:
        import sqlite3

        with contextlib.suppress(sqlite3.DatabaseError, StoreError):
            with self._reading() as conn:
                row = (
                    None
                    if conn is None
                    else conn.execute(
                        "SELECT id, pid, host, started FROM runs WHERE status = 'running' "
                        "ORDER BY id DESC LIMIT 1"
                    ).fetchone()
                )
            if row is not None:
                return f"run {row[0]} (pid {row[1]} on {row[2]}, started {_utc(row[3])})"
        return "another run that is starting"


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Any:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


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


def _has_schema(conn: sqlite3.Connection) -> bool:
    tables: int = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    return tables > 0


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def open_store(store: Any, parameter: str = "store") -> Store:
    """A Store from what the user passed: a path, or an object with the Store methods."""
    if isinstance(store, (str, os.PathLike)):
        return SQLiteStore(store)
    if isinstance(store, Store):
        return store
    raise TypeError(
        f"{parameter} must be a file path or a Store object (see asyncgraph.Store), "
        f"not {type(store).__name__} {store!r}"
    )


# -- the writer of one run ---------------------------------------------------------------

#: The states a task's last row in a run can count as (the runs table's columns).
_ENDED = ("done", "failed", "skipped", "cancelled")


def _takes_counts(store: Store) -> bool:
    """Whether ``store.write`` takes the ``counts`` keyword (see :class:`Store`)."""
    import inspect

    try:
        params = inspect.signature(store.write).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "counts" or p.kind is p.VAR_KEYWORD for p in params)


class RunWriter:
    """Writes one run's rows from a thread, in batches, and reports each commit.

    ``put`` is called on the loop's thread and never blocks: an append to a deque, and
    a wake-up only when the writer is asleep. The thread takes everything queued, writes
    it in one transaction, then calls ``on_commit(rows)`` on the loop (via
    ``call_soon_threadsafe``). A failed write is handed to ``on_error`` the same way and
    the writer stops: nothing later is reported durable.

    ``first`` rows are queued before the thread starts, so they are in the first
    transaction, ahead of every row ``put`` later (a run's resets: see ``_Session``).
    They are not counted; each later row that ends a task (done, failed, skipped,
    cancelled) is, and ``committed`` holds the counts of the rows committed so far
    (read it once ``close`` returned). A store whose ``write`` takes ``counts`` gets
    each batch's counts (and ``first_counts`` with the first batch) in the same
    transaction as its rows.
    """

    def __init__(
        self,
        store: Store,
        run_id: int,
        loop: Any,
        on_commit: Callable[[list[TaskRow]], None],
        on_error: Callable[[BaseException], None],
        *,
        first: Sequence[TaskRow] = (),
        first_counts: Mapping[str, int] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.loop = loop
        self.on_commit = on_commit
        self.on_error = on_error
        self._queue: collections.deque[TaskRow] = collections.deque(first)
        self._uncounted = len(first)  # the first rows the thread takes are not counted
        self._extra: dict[str, int] = dict(first_counts or {})
        self._with_counts = _takes_counts(store)
        #: Tasks that ended in each state with a committed row (done, failed, ...).
        self.committed: dict[str, int] = dict.fromkeys(_ENDED, 0)
        self._wake = threading.Event()
        self._asleep = False  # read without a lock: a spare wake-up costs nothing
        self._closing = False
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="asyncgraph-store", daemon=True)
        self._thread.start()

    def put(self, row: TaskRow) -> None:
        self._queue.append(row)  # deque.append is atomic
        if self._asleep:
            self._wake.set()

    def _work(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                # Say we sleep, then look once more: a put() in between either sees the
                # flag and wakes us, or its row is seen here.
                self._asleep = True
                if not queue and not self._closing:
                    self._wake.wait()
                self._asleep = False
                self._wake.clear()
                continue
            batch = []
            while queue:
                batch.append(queue.popleft())
            counts, self._extra = self._extra, {}
            skip = min(self._uncounted, len(batch))
            self._uncounted -= skip
            for row in batch[skip:] if skip else batch:
                status = row[2]
                if status in _ENDED:
                    counts[status] = counts.get(status, 0) + 1
            try:
                if counts and self._with_counts:
                    self.store.write(self.run_id, batch, counts=counts)  # type: ignore[call-arg]
                else:
                    self.store.write(self.run_id, batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the run
                self.failed = exc
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self.loop.call_soon_threadsafe(self.on_error, exc)
                return
            committed = self.committed
            for status in _ENDED:
                committed[status] += counts.get(status, 0)
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.on_commit, batch)

    def close(self) -> None:
        """Write what is queued and stop the thread (blocking: call it in a thread)."""
        self._closing = True
        self._wake.set()
        self._thread.join()
