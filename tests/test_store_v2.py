"""Schema version 2 (issue 15, the store's second pass): records in batches, in place
conversion of version 1 stores, small results inside the records, big ones apart.

What must hold, whatever the layout: a store written by the previous version opens,
runs, resumes and reuses everything (and a graph loaded from it before still reads its
results); a store of a version this asyncgraph does not know is refused, saying what to
do, never read wrongly; a replaced result is never read in its place; reading status
runs no code from the file; the latest records stay cheap to read however many runs
wrote them.
"""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import statuses
from store_rows import history_records, latest_rows
from test_store_contract import MASTER_V2, META_BEFORE, SCHEMA_BEFORE

import asyncgraph as ag
from asyncgraph._fingerprint import digests
from asyncgraph._store import Batch, SQLiteStore, TaskRow, journal

BIG = b"x" * (journal.INLINE * 4)


def shop(big: Any = BIG) -> ag.Graph:
    g = ag.Graph(name="shop")
    g.add("small", lambda: 41)
    g.add("big", lambda: big)
    g.add("none", lambda: None)
    g.add("total", lambda small, big: small + len(big), deps=["small", "big"])
    return g


def _v1_store(db: Path, g: ag.Graph, failed: str | None = None) -> None:
    """A version 1 store as the previous asyncgraph wrote it after one run of ``g``
    (its statements: test_store_contract.SCHEMA_BEFORE; the history by its trigger)."""
    fps = digests(g)
    values = {"small": 41, "big": BIG, "none": None, "total": 41 + len(BIG)}
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    for sql in SCHEMA_BEFORE.values():
        conn.execute(sql)
    conn.execute("ALTER TABLE runs ADD COLUMN graph TEXT DEFAULT NULL")
    conn.executemany("INSERT INTO meta VALUES (?, ?)", list(META_BEFORE.items()))
    conn.execute(
        "INSERT INTO runs (started, finished, status, pid, host, tasks, done, graph) "
        "VALUES (100.0, 101.0, 'done', 1, 'elsewhere', 4, 4, 'shop')"
    )
    for i, (name, value) in enumerate(values.items()):
        own, fp = fps[name]
        if name == failed:
            row = (name, 1, "failed", 1, 100.0, 100.5, "ValueError", "no", "tb", fp, own)
            conn.execute(
                f"INSERT INTO state VALUES ({','.join('?' * 14)})", (*row, None, None, None)
            )
            continue
        data = pickle.dumps(value, protocol=5)
        row = (name, 1, "done", 1, 100.0 + i, 100.5 + i, None, None, None, fp, own)
        conn.execute(
            f"INSERT INTO state VALUES ({','.join('?' * 14)})", (*row, 1000 + i, "pickle", data)
        )
    conn.execute("COMMIT")
    conn.close()
    db.chmod(0o600)


def _objects(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
    finally:
        conn.close()


def _version(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
    finally:
        conn.close()


async def test_a_version_1_store_is_read_then_converted_in_place_and_reused(tmp_path: Path):
    db = tmp_path / "v1.db"
    _v1_store(db, shop())
    # Read as it is, before any run converts it (reads never write).
    before = ag.load(shop(), db)
    assert statuses(before) == dict.fromkeys(["small", "big", "none", "total"], "done")
    assert list(ag.plan(shop(), db)["action"]) == ["reuse"] * 4
    assert _version(db) == "1"
    # The first run converts it, and reuses everything.
    out = await ag.run(shop(), store=db)
    assert _version(db) == "2"
    assert _objects(db) == MASTER_V2
    runs = ag.history(db)
    assert list(runs["status"]) == ["done", "done"]
    assert (runs["reused"].iloc[-1], runs["done"].iloc[-1]) == (4, 0)
    assert out.results["total"] == 41 + len(BIG)
    # A graph loaded before the conversion reads its results after it: same keys.
    assert dict(before.results) == {"small": 41, "big": BIG, "none": None, "total": 41 + len(BIG)}
    # The history of the first run came along; small results sit in their records,
    # the big one in results.
    # (run 1's records, as version 1's trigger wrote them)
    assert [t.name for t in SQLiteStore(db).run_tasks(1)] == ["small", "big", "none", "total"]
    rows = latest_rows(db)
    assert rows["big"].result == pickle.dumps(BIG, protocol=5)
    conn = sqlite3.connect(db)
    try:
        assert [r[0] for r in conn.execute("SELECT name FROM results")] == ["big"]
    finally:
        conn.close()
    again = ag.load(shop(), db)
    assert dict(again.results) == dict(before.results)


async def test_a_converted_store_keeps_failures_their_history_and_reruns_them(tmp_path: Path):
    db = tmp_path / "v1.db"
    _v1_store(db, shop(), failed="total")
    plan = ag.plan(shop(), db).set_index("name")
    assert plan.loc["total", "reason"] == "failed last time"
    out = await ag.run(shop(), store=db)
    assert statuses(out)["total"] == "done"
    runs = ag.history(db)
    assert (runs["reused"].iloc[-1], runs["done"].iloc[-1]) == (3, 1)
    # The history of both runs reads back, in order.
    assert [r[1] for r in history_records(db) if r[0] == 2] == ["total"]


def test_a_store_of_a_newer_version_is_refused_saying_what_to_do(tmp_path: Path):
    db = tmp_path / "v9.db"
    ag.run_sync(shop(), store=db)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '9' WHERE key = 'version'")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    for call in (lambda: ag.load(shop(), db), lambda: ag.run_sync(shop(), store=db)):
        with pytest.raises(ag.StoreError, match=r"schema version 9, written by a newer.*upgrade"):
            call()
    assert db.read_bytes() == before


def test_small_results_stay_in_their_records_and_big_ones_apart(tmp_path: Path):
    db = tmp_path / "s.db"
    ag.run_sync(shop(), store=db)
    rows = latest_rows(db)
    assert {n: r.result_format for n, r in rows.items()} == dict.fromkeys(rows, "pickle")
    conn = sqlite3.connect(db)
    try:
        assert [r[0] for r in conn.execute("SELECT name FROM results")] == ["big"]
        (blob,) = conn.execute("SELECT rows FROM history").fetchone()
    finally:
        conn.close()
    assert BIG not in blob  # the batch holds its key, not its bytes
    loaded = ag.load(shop(), db)
    assert loaded.results["big"] == BIG and loaded.results["none"] is None


@pytest.mark.parametrize("now", [b"y" * (journal.INLINE * 4), "small now"])
def test_a_replaced_result_is_never_read_in_its_place(tmp_path: Path, now: Any):
    db = tmp_path / "s.db"
    ag.run_sync(shop(), store=db)
    before = ag.load(shop(), db)
    out = ag.run_sync(shop(big=now), store=db)  # big's code changed: it reruns
    assert out.results["big"] == now
    with pytest.raises(ag.StoreError, match="'big' is no longer in store"):
        before.results["big"]
    assert ag.load(shop(big=now), db).results["big"] == now
    conn = sqlite3.connect(db)
    try:
        big = [r[0] for r in conn.execute("SELECT name FROM results")]
    finally:
        conn.close()
    assert big == (["big"] if isinstance(now, bytes) else [])  # the old one is gone


def test_a_row_without_a_result_drops_the_big_result_it_replaces(tmp_path: Path):
    """A reset's pending row (a run's first transaction), a failure: the task's big
    result goes with the row that replaces its record."""
    db = tmp_path / "s.db"
    ag.run_sync(shop(), store=db)
    before = ag.load(shop(), db)
    store = SQLiteStore(db)
    stored = store.tasks()["big"]
    store.acquire()
    try:
        run_id = store.begin_run()
        row = TaskRow(
            "big",
            run_id,
            "pending",
            stored.attempts,
            None,
            None,
            None,
            None,
            None,
            stored.fingerprint,
            stored.code,
            None,
            None,
            None,
        )
        store.write(run_id, Batch([row]))
    finally:
        store.release()
        store.close()
    with pytest.raises(ag.StoreError, match="'big' is no longer in store"):
        before.results["big"]
    assert before.results["small"] == 41
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (0,)
    finally:
        conn.close()


def test_the_latest_records_are_folded_as_runs_add_history(tmp_path: Path):
    db = tmp_path / "s.db"
    g = ag.Graph()
    for i in range(50):
        g.add(f"t{i}", lambda i=i: i)
    # 2 records a run after the first's 50: state is rewritten once a read would decode
    # more than twice the 50 tasks (session 17: not at the second run's start, when the
    # history holds each task once), so by the 27th run
    for k in range(30):
        ag.run_sync(ag.reset(ag.load(g, db), ["t0"]) if k else g, store=db)
        conn = sqlite3.connect(db)
        try:
            held, upto = conn.execute(
                "SELECT coalesce(sum(tasks), 0), max(upto) FROM state"
            ).fetchone()
            (since,) = conn.execute(
                "SELECT coalesce(sum(tasks), 0) FROM history WHERE seq > ?", (upto or 0,)
            ).fetchone()
        finally:
            conn.close()
        # What a read decodes stays within about twice the tasks (plus a run's rows).
        assert held + since <= 2 * 50 + 50
    assert held == 50  # folded at least once
    store = SQLiteStore(db)
    names = list(store.tasks())  # in the order last written: t0 last
    assert names[-1] == "t0" and sorted(names) == sorted(g.tasks)
    assert ag.load(g, db).results["t7"] == 7
    assert len(ag.history(db)) == 30
    assert [r[1] for r in history_records(db) if r[0] == 30] == ["t0", "t0"]  # reset, then done


def test_reading_runs_no_code_from_the_file(tmp_path: Path):
    db = tmp_path / "s.db"
    ag.run_sync(shop(), store=db)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> Any:
            return (open, (str(marker), "w"))

    conn = sqlite3.connect(db)
    conn.execute("UPDATE history SET rows = ?", (pickle.dumps([Evil()] * 14, protocol=5),))
    conn.commit()
    conn.close()
    for call in (lambda: ag.load(shop(), db), lambda: ag.plan(shop(), db)):
        with pytest.raises(ag.StoreError, match="damaged"):
            call()
    assert not marker.exists()


def test_huge_records_split_into_rows_that_fit():
    flat: list[Any] = []
    for i in range(40):
        flat += [
            f"t{i}",
            1,
            "failed",
            1,
            0.0,
            1.0,
            "E",
            f"m{i}" * 500,
            None,
            "fp",
            "c",
            None,
            None,
            None,
        ]
    parts = list(journal.parts(flat, 8_000))
    assert len(parts) > 4 and all(len(data) <= 8_000 for _, data in parts)
    assert sum(n for n, _ in parts) == 40
    again = [x for _, data in parts for x in journal.decode(data)]
    assert again == flat


async def test_no_row_per_task_the_file_grows_by_batches(tmp_path: Path):
    """10k no-op tasks: the history is a few rows (one per commit), not 10k."""
    db = tmp_path / "s.db"
    g = ag.Graph()
    for i in range(10_000):
        g.add(f"t{i}", lambda: None)
    out = await ag.run(g, store=db)
    assert statuses(out) == dict.fromkeys(g.tasks, "done")
    conn = sqlite3.connect(db)
    try:
        (rows,) = conn.execute("SELECT count(*) FROM history").fetchone()
        (records,) = conn.execute("SELECT sum(tasks) FROM history").fetchone()
    finally:
        conn.close()
    assert records == 10_000 and rows < 10_000
    assert len(SQLiteStore(db).tasks()) == 10_000
