"""A stream's durable record: tables of its own in the store's SQLite file.

The unit of recovery is the source batch (bytewax's epoch). A batch's row says how it
ended (``done``, ``failed``, ``cancelled``), how many rows the source gave for it (to
notice a source that does not replay), the digest of the stream's code when it was done
(``graph_fp``: a batch done by other code is stale) and the output files it committed.
A batch is written ``done`` only after every file derived from it was renamed into
place, in one transaction with the other batches a merge tied to it, so after a crash a
file that no done batch lists is a leftover of an attempt that never committed.

The tables are created here with ``CREATE TABLE IF NOT EXISTS`` and carry their own
version row (``stream_version``); the store's own schema and version are not touched.
The stream holds the store's file lock (``_store.files.FileLock``) while it runs, so a
run or another stream on the same file is refused with the usual error.

Commits use ``synchronous=NORMAL`` in WAL mode: a committed batch survives the
process's death (SIGKILL, OOM), which is what exactly-once needs here, and a commit costs
tens of microseconds on the loop instead of an fsync; a power cut may lose the last
commits, whose batches are then recomputed (and their files replaced).

State it keeps
    ``conn``    the connection (autocommit; explicit transactions), once open;
    ``lock``    the store file's lock, held from ``open`` to ``close``;
    ``run_id``  this stream run's row in ``stream_runs``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import StoreError
from .._store.files import FileLock

if TYPE_CHECKING:
    import sqlite3

__all__ = ["VERSION", "BatchRow", "StreamReplayError", "StreamStore", "read_batches"]

#: The version of the stream tables (its own row; the store's version is the store's).
VERSION = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS stream_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS stream_batches (
        sid INTEGER PRIMARY KEY,
        status TEXT NOT NULL,
        rows_in INTEGER NOT NULL,
        graph_fp TEXT NOT NULL,
        files TEXT NOT NULL,
        run_id INTEGER,
        finished REAL,
        error_type TEXT,
        error_message TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS stream_runs (
        run_id INTEGER PRIMARY KEY AUTOINCREMENT,
        started REAL NOT NULL,
        finished REAL,
        graph_fp TEXT NOT NULL,
        out TEXT,
        done INTEGER,
        failed INTEGER,
        cancelled INTEGER,
        skipped INTEGER,
        stopped TEXT
    )""",
)

#: (sid, status, rows_in, files, error_type, error_message)
BatchRow = tuple[int, str, int, list[str], str | None, str | None]


class StreamStore:
    """The stream tables of one store file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock = FileLock(self.path)
        self.conn: sqlite3.Connection | None = None
        self.run_id: int | None = None
        self.fp = ""

    def open(self) -> None:
        import sqlite3  # only a durable stream needs it: not at ``import asyncgraph``

        self.lock.take(_describe)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn = conn
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT version FROM stream_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO stream_version VALUES (?)", (VERSION,))
            elif row[0] > VERSION:
                conn.execute("ROLLBACK")
                raise StoreError(
                    f"store {str(self.path)!r}: its stream tables are version {row[0]}, "
                    f"written by a newer asyncgraph (this one reads {VERSION}); upgrade "
                    "asyncgraph, or use another store file"
                )
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(
                f"store {str(self.path)!r} cannot hold a stream: {exc}; pass an asyncgraph "
                "store file (or a new path)"
            ) from exc
        except BaseException:
            self.close()
            raise

    def batches(self) -> dict[int, tuple[str, int, str, list[str]]]:
        """Every recorded batch: sid -> (status, rows_in, graph_fp, files)."""
        assert self.conn is not None
        return {
            sid: (status, rows, fp, json.loads(files))
            for sid, status, rows, fp, files in self.conn.execute(
                "SELECT sid, status, rows_in, graph_fp, files FROM stream_batches"
            )
        }

    def begin(self, fp: str, out: str | None) -> None:
        assert self.conn is not None
        self.fp = fp
        cur = self.conn.execute(
            "INSERT INTO stream_runs (started, graph_fp, out) VALUES (?, ?, ?)",
            (time.time(), fp, out),
        )
        self.run_id = cur.lastrowid

    def commit(self, rows: Iterable[BatchRow]) -> None:
        """Record how these batches ended, in one transaction."""
        assert self.conn is not None
        now = time.time()
        conn = self.conn
        conn.execute("BEGIN")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO stream_batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (sid, status, rows_in, self.fp, json.dumps(files), self.run_id, now, et, em)
                    for sid, status, rows_in, files, et, em in rows
                ],
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def end(self, result: Any) -> None:
        if self.conn is None or self.run_id is None:
            return
        self.conn.execute(
            "UPDATE stream_runs SET finished=?, done=?, failed=?, cancelled=?, skipped=?, "
            "stopped=? WHERE run_id=?",
            (
                time.time(),
                result.done,
                result.failed,
                result.cancelled,
                result.skipped,
                result.stopped,
                self.run_id,
            ),
        )

    def close(self) -> None:
        conn, self.conn = self.conn, None
        try:
            if conn is not None:
                conn.close()
        finally:
            self.lock.let_go()


def _describe(key: tuple[int, int] | None) -> tuple[str, str]:
    return (
        "another run or stream",
        "wait for it to end, or use another store file for this stream",
    )


def read_batches(path: str | os.PathLike[str]) -> dict[int, tuple[str, int, str, list[str]]]:
    """The stream tables of a store file, read without its lock (tests, ``plan``)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        try:
            rows = conn.execute(
                "SELECT sid, status, rows_in, graph_fp, files FROM stream_batches"
            ).fetchall()
        except sqlite3.OperationalError:
            return {}
        return {sid: (st, n, fp, json.loads(f)) for sid, st, n, fp, f in rows}
    finally:
        conn.close()


class StreamReplayError(StoreError):
    """A resumed stream's source did not give the batches it gave before (another
    file, another order): its done batches cannot be trusted to match. ``batch`` is the
    first source batch that differs."""

    def __init__(self, message: str, batch: int) -> None:
        super().__init__(message)
        self.batch = batch
