"""The latest records of a store file, read once per process (issue 15, session 17).

A resume opens its store twice, for ``load`` and for the run, and each read of a
version 2 store decodes every batch of records since the last rewrite of ``state``.
The records read are kept for the process, keyed by the file's real path and by what
the file says it holds (its token, state's upto, the history's last row); the token is
new with every run's start. What must hold: a second store object of the same file
decodes nothing while the file is unchanged; any write, and any other file put in its
place (a backup restored by copying, which keeps the path and even the inode), is read
afresh, never taken for the records kept; ``journal.latest`` gives what taking the
records one by one gives.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncgraph as ag
from asyncgraph._state import State
from asyncgraph._store import SQLiteStore, TaskRow, journal
from asyncgraph._store import sqlite as store_sqlite
from asyncgraph._store.protocol import StoredTask


def _graph(value: int) -> ag.Graph:
    g = ag.Graph()
    g.add("a", lambda: value)
    g.add("b", lambda a: a + 1, deps=["a"])
    return g


def _one_by_one(batches: list[list[Any]]) -> dict[str, tuple[list[Any], int]]:
    out: dict[str, tuple[list[Any], int]] = {}
    for flat in batches:
        for i in range(0, len(flat), journal.FIELDS):
            out.pop(flat[i], None)
            out[flat[i]] = (flat, i)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), max_size=8), max_size=6))
def test_latest_is_the_records_taken_one_by_one(names: list[list[int]]) -> None:
    batches = [
        [v for k, n in enumerate(batch) for v in (f"t{n}", k, *[None] * (journal.FIELDS - 2))]
        for batch in names
    ]
    assert list(journal.latest(batches).items()) == list(_one_by_one(batches).items())


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    decode = journal.decode

    def counted(data: bytes) -> list[Any]:
        calls[0] += 1
        return decode(data)

    monkeypatch.setattr(journal, "decode", counted)
    return calls


def test_a_second_store_of_the_file_decodes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "s.db"
    ag.run_sync(_graph(1), store=db)
    calls = _count_decodes(monkeypatch)
    first = SQLiteStore(db).tasks()
    assert calls[0] > 0
    calls[0] = 0
    again = SQLiteStore(str(db)).tasks()  # another object, another spelling
    assert calls[0] == 0 and again == first
    # a resume: its load and its run read the file once between them
    loaded = ag.reset_failed(ag.load(_graph(1), db))
    ag.run_sync(loaded, store=db)
    assert calls[0] == 0


def test_every_run_takes_a_new_token(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    tokens = []
    for _ in range(3):
        ag.run_sync(_graph(1), store=db)
        conn = sqlite3.connect(db)
        try:
            tokens.append(conn.execute("SELECT value FROM meta WHERE key = 'token'").fetchone())
        finally:
            conn.close()
    assert len(set(tokens)) == 3


def _five(value: int) -> ag.Graph:
    g = ag.Graph()
    g.add("t0", lambda: value)
    for i in range(1, 5):
        g.add(f"t{i}", lambda i=i: i)
    return g


def _rerun_t0(db: Path, value: int) -> None:
    ag.run_sync(ag.reset(ag.load(_five(value), db), ["t0"]), store=db)


def _restore(backup: Path, db: Path) -> None:
    with open(backup, "rb") as src, open(db, "r+b") as dst:  # in place, as cp does
        data = src.read()
        dst.seek(0)
        dst.write(data)
        dst.truncate()


def test_a_file_copied_back_in_place_is_read_afresh(tmp_path: Path) -> None:
    """A backup restored over the store (same path, same inode: ``cp`` writes in place),
    then run by another process with another result, by as many rows as a run of the
    original wrote since the backup: the records this process kept for the original are
    never read for it. (Without a new token per run the two files would agree on
    everything _WHERE reads: no rewrite of ``state`` happens in between, 2 records a
    run against the 5 it holds.)"""
    db, backup = tmp_path / "s.db", tmp_path / "backup.db"
    ag.run_sync(_five(1), store=db)
    _rerun_t0(db, 1)  # state is rewritten at this run's start: it holds all five
    shutil.copyfile(db, backup)  # the run closed the store: no WAL beside it
    _rerun_t0(db, 2)
    assert ag.load(_five(2), db).results["t0"] == 2
    kept = store_sqlite._SHARED  # what this process keeps for the file now
    inode = db.stat().st_ino
    _restore(backup, db)
    _rerun_t0(db, 3)  # as another process would: its own records, not ours
    assert db.stat().st_ino == inode
    store_sqlite._SHARED = kept
    assert ag.load(_five(3), db).results["t0"] == 3
    store_sqlite._SHARED = kept
    assert SQLiteStore(db).tasks()["t0"].run_id == 3


def test_a_write_is_read(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    ag.run_sync(_graph(1), store=db)
    store = SQLiteStore(db)
    assert set(store.tasks()) == {"a", "b"}
    g = _graph(1)
    g.add("c", lambda b: b, deps=["b"])
    ag.run_sync(g, store=db)
    assert set(SQLiteStore(db).tasks()) == {"a", "b", "c"}
    assert set(store.tasks()) == {"a", "b", "c"}


def _state_and_since(db: Path) -> tuple[int, int, int]:
    """(records in state, records in the history after it, history rows after it)."""
    conn = sqlite3.connect(db)
    try:
        held, upto = conn.execute(
            "SELECT coalesce(sum(tasks), 0), max(upto) FROM state"
        ).fetchone()
        since, rows = conn.execute(
            "SELECT coalesce(sum(tasks), 0), count(*) FROM history WHERE seq > ?", (upto or 0,)
        ).fetchone()
    finally:
        conn.close()
    return held, since, rows


def test_a_resume_after_a_first_run_rewrites_no_state(tmp_path: Path) -> None:
    """The first run's history holds each task once: a read of it decodes no record
    twice, so the resume's start leaves it as it is (no rewrite of every record)."""
    db = tmp_path / "s.db"
    g = ag.Graph()
    for i in range(40):
        g.add(f"t{i}", lambda i=i: i)
    ag.run_sync(g, store=db)
    ag.run_sync(ag.reset(ag.load(g, db), ["t3"]), store=db)
    held, since, _ = _state_and_since(db)
    assert held == 0 and since == 42  # 40, then t3's reset and its end
    assert ag.load(g, db).results["t3"] == 3


def test_many_small_batches_are_folded(tmp_path: Path) -> None:
    """A history of more rows than _FOLD_ROWS after state is folded at the next run's
    start, even if no record in it was replaced (each row is a query step to read)."""
    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    n = store_sqlite._FOLD_ROWS + 1
    store.acquire()
    try:
        run_id = store.begin_run()
        for i in range(n):
            none = [None] * 3
            row = TaskRow(f"t{i}", run_id, "done", 1, 1.0, 2.0, *none, "f", "c", i, "pickle", None)
            store.write(run_id, [row])
        store.end_run(run_id, "done", {})
        assert _state_and_since(db) == (0, n, n)
        run_id = store.begin_run()
        store.end_run(run_id, "done", {})
    finally:
        store.release()
    assert _state_and_since(db) == (n, 0, 0)
    assert len(SQLiteStore(db).tasks()) == n


def _record_by_record(records: dict[str, tuple[list[Any], int]]) -> dict[str, Any]:
    return {
        name: StoredTask(name, flat[i + 1], State(flat[i + 2]), *flat[i + 3 : i + 12])
        for name, (flat, i) in records.items()
    }


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 9), st.sampled_from(["done", "failed", "odd"])), max_size=6
        ),
        max_size=5,
    )
)
def test_the_rows_by_columns_are_the_rows_record_by_record(
    batches_of: list[list[tuple[int, str]]],
) -> None:
    batches = [
        [
            v
            for k, (n, status) in enumerate(batch)
            for v in (f"t{n}", k, status, 1, 2.0, 3.0, *[None] * 3, f"f{k}", "c", k, None, None)
        ]
        for batch in batches_of
    ]
    records = journal.latest(batches)
    states = {s.value: s for s in State}
    fast = store_sqlite._by_columns(records, states)
    names = [n for batch in batches_of for n, _ in batch]
    statuses = {s for batch in batches_of for _, s in batch}
    if len(set(names)) == len(names) and "odd" not in statuses:
        assert fast is not None
    if fast is not None:
        assert list(fast.items()) == list(_record_by_record(records).items())
