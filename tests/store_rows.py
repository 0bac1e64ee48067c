"""Read and change a store file's records the way SQLite keeps them (schema version 2).

Since version 2 a task's record is not a row of its own: ``history`` holds one row per
committed batch and ``state`` the latest records, each a list of records in one value
(``asyncgraph._store.journal``); a result bigger than ``journal.INLINE`` is a row of
``results``. Tests that looked at, or damaged, one task's row go through these.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from asyncgraph._store import journal
from asyncgraph._store.protocol import TaskRow

__all__ = ["history_records", "latest_rows", "rewrite"]

F = journal.FIELDS


def _batches(conn: sqlite3.Connection) -> list[tuple[str, int, list[Any]]]:
    """(table, key, records) of state's parts, then of the history rows after them."""
    out = []
    upto = 0
    for part, up, data in conn.execute("SELECT part, upto, rows FROM state ORDER BY part"):
        upto = up
        out.append(("state", part, journal.decode(data)))
    for seq, data in conn.execute(
        "SELECT seq, rows FROM history WHERE seq > ? ORDER BY seq", (upto,)
    ):
        out.append(("history", seq, journal.decode(data)))
    return out


def latest_rows(db: Path) -> dict[str, TaskRow]:
    """Each task's latest record as a TaskRow, its result's bytes in it (big or not)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = journal.latest(flat for _, _, flat in _batches(conn))
        big = {n: (f, d) for n, f, d in conn.execute("SELECT name, format, data FROM results")}
    finally:
        conn.close()
    out = {}
    for name, (flat, i) in found.items():
        row = TaskRow(*flat[i : i + F])
        if row.result is None and name in big and row.result_format is not None:
            row = row._replace(result=big[name][1])
        out[name] = row
    return out


def rewrite(db: Path, name: str, **fields: Any) -> None:
    """Change fields of ``name``'s latest record in the file (a damaged store, say)."""
    conn = sqlite3.connect(db)
    try:
        where = None
        for table, key, flat in _batches(conn):
            for i in range(0, len(flat), F):
                if flat[i] == name:
                    where = (table, key, flat, i)
        assert where is not None, f"no record of {name!r}"
        table, key, flat, i = where
        for field, value in fields.items():
            flat[i + TaskRow._fields.index(field)] = value
        column = "part" if table == "state" else "seq"
        conn.execute(f"UPDATE {table} SET rows = ? WHERE {column} = ?", (journal.encode(flat), key))
        conn.commit()
    finally:
        conn.close()


def history_records(db: Path) -> list[tuple[Any, ...]]:
    """(run_id, name, status, attempts) of every record every run wrote, in order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = []
        for run_id, data in conn.execute("SELECT run_id, rows FROM history ORDER BY seq"):
            flat = journal.decode(data)
            out += [(run_id, flat[i], flat[i + 2], flat[i + 3]) for i in range(0, len(flat), F)]
        return out
    finally:
        conn.close()
