"""The ``Store`` contract: the same cases on ``SQLiteStore`` and on ``MemoryStore``.

``MemoryStore`` (``tests/memory_store.py``) is written against the protocol alone, so a
case that passes on both holds for any store that keeps the protocol's contract, and a
feature that reached past the protocol (a private member of SQLiteStore, a probe for an
optional method) fails here on the memory store. Three parts:

1. the protocol, one call at a time;
2. end to end through the public API (run, a failure, load, reset_failed and a rerun
   reusing what is done, plan, history, locking, a size limit, the CLI's read commands);
3. SQLite only: the file format is the one written before the store became a package.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import statuses
from memory_store import MemoryStore
from test_store import Flaky, pipeline
from test_trust_session import SmallRows

import asyncgraph as ag
from asyncgraph import _cli
from asyncgraph.__main__ import main
from asyncgraph._store import Batch, SQLiteStore, Store, TaskRow, new_result_id

#: The size limit the limited stores are made with (bytes in a row's result).
LIMIT = SmallRows.limit

MakeStore = Callable[..., Store]


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStore:
    """``make_store()`` -> a new empty store of the kind under test; ``limit=True``: one
    whose rows hold at most LIMIT bytes (and which says so)."""
    made = iter(range(1_000))

    def make(limit: bool = False) -> Store:
        if request.param == "memory":
            return MemoryStore(limit=LIMIT if limit else None)
        path = tmp_path / f"s{next(made)}.db"
        return SmallRows(path) if limit else SQLiteStore(path)

    return make


def _row(
    name: str,
    run_id: int,
    status: str = "done",
    *,
    value: Any = None,
    result_id: int | None = None,
    size: int | None = None,
) -> TaskRow:
    data = None if result_id is None else pickle.dumps(value if size is None else b"x" * size)
    error = ("ValueError", "bad") if status == "failed" else (None, None)
    return TaskRow(
        name,
        run_id,
        status,
        1,
        1.0,
        2.0,
        *error,
        None,
        f"fp-{name}",
        f"code-{name}",
        result_id,
        None if data is None else "pickle",
        data,
    )


# -- 1. the protocol, call by call ------------------------------------------------------


def test_a_new_store_is_empty_and_a_store(make_store: MakeStore) -> None:
    store = make_store()
    assert isinstance(store, ag.Store)
    assert store.tasks() == {}
    assert store.runs() == []
    limit = store.result_size_limit()
    assert limit is None or limit > 0
    store.close()
    store.close()  # idempotent


def test_one_run_call_by_call(make_store: MakeStore) -> None:
    store = make_store()
    store.acquire()
    run_id = store.begin_run()
    (run,) = store.runs()
    assert (run.id, run.status, run.finished, run.done) == (run_id, "running", None, 0)

    a_id = new_result_id()
    rows = [_row("a", run_id, value={"v": [1, 2]}, result_id=a_id), _row("b", run_id, "failed")]
    store.write(run_id, Batch(rows, {"tasks": 2, "reused": 0, "done": 1, "failed": 1}))
    # Committed: readable at once, and the counts are there before the run's end.
    tasks = store.tasks()
    assert list(tasks) == ["a", "b"]
    a, b = tasks["a"], tasks["b"]
    assert (a.status, a.run_id, a.attempts, a.result_id) == (ag.State.DONE, run_id, 1, a_id)
    assert (a.fingerprint, a.code, a.started, a.finished) == ("fp-a", "code-a", 1.0, 2.0)
    assert (b.status, b.error_type, b.error_message, b.result_id) == (
        ag.State.FAILED,
        "ValueError",
        "bad",
        None,
    )
    (run,) = store.runs()
    assert (run.status, run.tasks, run.done, run.failed, run.skipped) == ("running", 2, 1, 1, 0)
    assert store.load_result(a_id, "a") == {"v": [1, 2]}
    assert store.load_results({"a": a_id}) == {"a": {"v": [1, 2]}}
    with pytest.raises(ag.StoreError):
        store.load_result(a_id + 1, "a")  # another key: never another result
    with pytest.raises(ag.StoreError):
        store.load_result(a_id, "b")

    store.end_run(run_id, "failed", {"tasks": 2, "done": 1, "failed": 1})
    store.release()
    (run,) = store.runs()
    assert (run.status, run.tasks, run.reused, run.done, run.failed) == ("failed", 2, 0, 1, 1)
    assert run.finished is not None and run.finished >= run.started
    store.close()
    assert store.load_result(a_id, "a") == {"v": [1, 2]}  # closing loses nothing


def test_a_later_row_replaces_the_result_and_run_ids_grow(make_store: MakeStore) -> None:
    store = make_store()
    store.acquire()
    first = store.begin_run()
    old = new_result_id()
    store.write(first, Batch([_row("a", first, value=1, result_id=old), _row("b", first)]))
    store.end_run(first, "done", {"tasks": 2, "done": 2})
    store.release()

    store.acquire()
    second = store.begin_run()
    assert second > first
    new = new_result_id()
    # In one batch, a task's later row replaces its earlier one.
    batch = [_row("a", second, "pending"), _row("a", second, value=2, result_id=new)]
    store.write(second, Batch(batch))
    assert store.tasks()["a"].result_id == new
    assert list(store.tasks()) == ["b", "a"]  # in the order last written
    assert store.load_result(new, "a") == 2
    with pytest.raises(ag.StoreError, match="no longer in store"):
        store.load_result(old, "a")
    # A batch without counts changes no count.
    (_, run) = store.runs()
    assert (run.tasks, run.done) == (0, 0)
    store.end_run(second, "done", {"tasks": 2, "done": 1, "reused": 1})
    store.release()
    assert [(r.id, r.status, r.reused) for r in store.runs()] == [
        (first, "done", 0),
        (second, "done", 1),
    ]


def test_one_run_at_a_time(make_store: MakeStore) -> None:
    store = make_store()
    store.acquire()
    with pytest.raises(ag.StoreLockedError) as caught:
        store.acquire()
    assert caught.value.holder
    store.release()
    store.release()  # idempotent
    store.acquire()  # let go: the next one goes ahead
    store.release()


def test_a_write_is_all_or_nothing(make_store: MakeStore) -> None:
    store = make_store(limit=True)
    limit = store.result_size_limit()
    assert limit == LIMIT
    store.acquire()
    run_id = store.begin_run()
    good = _row("good", run_id, result_id=new_result_id())
    too_big = _row("big", run_id, result_id=new_result_id(), size=2 * LIMIT)
    with pytest.raises((ag.StoreError, sqlite3.Error)):  # each store words its own refusal
        store.write(run_id, Batch([good, too_big], {"done": 2}))
    assert store.tasks() == {}
    assert store.runs()[0].done == 0
    store.write(run_id, Batch([good], {"done": 1}))
    assert list(store.tasks()) == ["good"]
    store.end_run(run_id, "done", {"done": 1})
    store.release()


# -- 2. end to end, through the public API ----------------------------------------------


def _two() -> ag.Graph:
    g = ag.Graph()
    g.add("a", lambda: {"rows": [1, 2, 3]})
    g.add("b", lambda a: len(a["rows"]))
    return g


async def test_a_run_records_every_task_and_load_reads_it_back(make_store: MakeStore) -> None:
    store = make_store()
    out = await ag.run(_two(), store=store)
    assert dict(out.results) == {"a": {"rows": [1, 2, 3]}, "b": 3}
    assert {n: t.status for n, t in store.tasks().items()} == dict.fromkeys("ab", ag.State.DONE)
    (run,) = store.runs()
    assert (run.status, run.tasks, run.reused, run.done) == ("done", 2, 0, 2)

    loaded = ag.load(_two(), store)
    assert statuses(loaded) == {"a": "done", "b": "done"}
    assert isinstance(loaded.records["a"].result, ag.StoredResult)
    assert loaded.results["b"] == 3

    frame = ag.history(store)
    assert list(frame["status"]) == ["done"] and list(frame["done"]) == [2]


async def test_a_failure_then_reset_failed_reruns_only_it_and_reuses_the_rest(
    make_store: MakeStore, tmp_path: Path
) -> None:
    store = make_store()
    flaky = Flaky(tmp_path)
    first = await ag.run(pipeline(flaky), store=store)
    assert statuses(first) == {
        "extract": "done",
        "load_db": "failed",
        "report": "skipped",
        "side": "done",
    }
    assert store.tasks()["load_db"].error_type == "ConnectionError"

    loaded = ag.load(pipeline(flaky), store)
    assert statuses(loaded) == statuses(first)
    assert "database is down" in str(loaded.errors["load_db"])
    ready = ag.reset_failed(loaded)
    plan = ag.plan(ready, store).set_index("name")
    assert plan["action"].to_dict() == {
        "extract": "reuse",
        "load_db": "run",
        "report": "run",
        "side": "reuse",
    }

    flaky.broken = False
    flaky.clear()
    second = await ag.run(ready, store=store)
    assert sorted(flaky.ran) == ["load_db", "report"]  # extract's stored result is an input
    assert second.results["report"] == "total 6"

    flaky.clear()
    third = await ag.run(pipeline(flaky), store=store)  # a fresh graph: all done, unchanged
    assert flaky.ran == []
    assert third.results["report"] == "total 6"

    frame = ag.history(store)
    assert list(frame["status"]) == ["failed", "done", "done"]
    assert list(frame["reused"]) == [0, 2, 4]
    assert list(frame["done"]) == [2, 2, 0]
    assert list(frame["failed"]) == [1, 0, 0]
    assert list(frame["skipped"]) == [1, 0, 0]


async def test_stored_inputs_are_read_in_one_call(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    await ag.run(_two(), store=store)
    asked: list[dict[str, int]] = []
    load_results = store.load_results

    def spy(wanted: Any) -> dict[str, Any]:
        asked.append(dict(wanted))
        return load_results(wanted)

    monkeypatch.setattr(store, "load_results", spy)
    again = await ag.run(ag.reset(ag.load(_two(), store), ["b"]), store=store)
    assert again.results["b"] == 3
    assert [list(w) for w in asked] == [["a"]]
    # A loaded graph run without a store reads its inputs from the store it came from.
    asked.clear()
    alone = await ag.run(ag.reset(ag.load(_two(), store), ["b"]))
    assert alone.results["b"] == 3
    assert [list(w) for w in asked] == [["a"]]


async def test_a_store_object_given_is_not_closed_by_the_run(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    closed: list[bool] = []
    monkeypatch.setattr(store, "close", lambda: closed.append(True))
    await ag.run(_two(), store=store)
    ag.plan(_two(), store)
    ag.history(store)
    assert closed == []


async def test_a_held_store_refuses_a_second_run(make_store: MakeStore) -> None:
    store = make_store()
    started = asyncio.Event()
    finish = asyncio.Event()

    async def slow() -> int:
        started.set()
        await finish.wait()
        return 1

    g = ag.Graph()
    g.add("slow", slow)
    first = asyncio.ensure_future(ag.run(g, store=store))
    await started.wait()
    with pytest.raises(ag.StoreLockedError):
        await ag.run(_two(), store=store)
    finish.set()
    out = await first
    assert out.results["slow"] == 1
    assert [r.status for r in store.runs()] == ["done"]  # the refused run left no trace

    store.acquire()  # held from outside a run: a run is refused the same way
    try:
        with pytest.raises(ag.StoreLockedError):
            await ag.run(_two(), store=store)
    finally:
        store.release()
    assert len(store.runs()) == 1


async def test_a_result_over_the_limit_fails_its_own_task(make_store: MakeStore) -> None:
    store = make_store(limit=True)
    g = ag.Graph()
    g.add("small", lambda: b"x" * 100)
    g.add("big", lambda: b"x" * (LIMIT + 1))
    g.add("after_small", lambda small: len(small))
    g.add("after_big", lambda big: len(big))
    out = await ag.run(g, store=store)
    assert statuses(out) == {
        "small": "done",
        "big": "failed",
        "after_small": "done",
        "after_big": "skipped",
    }
    assert isinstance(out.errors["big"], ag.UnstorableResultError)
    assert f"{LIMIT:,}" in str(out.errors["big"])
    (run,) = store.runs()
    assert (run.status, run.done, run.failed, run.skipped) == ("failed", 2, 1, 1)
    assert ag.load(g, store).results["after_small"] == 100


async def test_the_cli_reads_status_and_history_through_the_protocol(
    make_store: MakeStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = make_store()
    g = ag.Graph()
    g.add("fine", lambda: 1)

    def broken(fine: int) -> int:
        raise ValueError("no luck")

    g.add("broken", broken)
    await ag.run(g, store=store)
    monkeypatch.setattr(_cli, "open_existing", lambda path: store)
    capsys.readouterr()

    assert main(["status", "the-store", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {t["name"]: t["status"] for t in shown["tasks"]} == {"fine": "done", "broken": "failed"}
    assert shown["last_run"]["status"] == "failed"
    assert main(["status", "the-store", "--failed"]) == 0
    out = capsys.readouterr().out
    assert "broken" in out and "no luck" in out and "fine" not in out.split("---")[0]
    assert main(["history", "the-store", "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert (run["status"], run["done"], run["failed"]) == ("failed", 1, 1)
    assert store.runs()  # the command closed the store; it reads on


# -- 3. SQLite only: the file format is unchanged -----------------------------------------

#: The schema, as the store wrote it before it became a package (asyncgraph/_store.py at
#: commit 23127ea), statement by statement as SQLite keeps it in sqlite_master.
SCHEMA_BEFORE = {
    "meta": "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "runs": """CREATE TABLE runs (
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
)""",
    "state": """CREATE TABLE state (
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
)""",
    "history": """CREATE TABLE history (
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
)""",
    "state_history": """CREATE TRIGGER state_history AFTER INSERT ON state BEGIN
    INSERT INTO history VALUES (
        NEW.run_id, NEW.name, NEW.status, NEW.attempts, NEW.started, NEW.finished,
        NEW.error_type, NEW.error_message, NEW.traceback, NEW.fingerprint
    );
END""",
}
#: What sqlite_master holds then: those, and the table AUTOINCREMENT makes.
MASTER_BEFORE = {**SCHEMA_BEFORE, "sqlite_sequence": "CREATE TABLE sqlite_sequence(name,seq)"}
META_BEFORE = {"format": "asyncgraph-store", "version": "1"}
# Issue 16: runs record their graph's name in one column that a run adds (ALTER TABLE, to an
# old store as to a new one), and meta the last run's task order (for `asyncgraph status`).
MASTER_NOW = {
    **MASTER_BEFORE,
    "runs": SCHEMA_BEFORE["runs"].removesuffix(")") + ", graph TEXT DEFAULT NULL)",
}
# Schema version 2 (issue 15, the store's second pass): a batch of records is one row of
# history, the latest records are a few rows of state, both holding records in one value
# each; a result bigger than the records keep is a row of results. meta, runs as before.
# A store of version 1 (MASTER_NOW) is converted in place by the first run on it.
MASTER_V2 = {
    "meta": MASTER_NOW["meta"],
    "runs": MASTER_NOW["runs"],
    "sqlite_sequence": MASTER_NOW["sqlite_sequence"],
    "history": """CREATE TABLE history (
    seq INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    tasks INTEGER NOT NULL,
    rows BLOB NOT NULL
)""",
    "state": """CREATE TABLE state (
    part INTEGER PRIMARY KEY,
    upto INTEGER NOT NULL,
    tasks INTEGER NOT NULL,
    rows BLOB NOT NULL
)""",
    "results": """CREATE TABLE results (
    name TEXT PRIMARY KEY,
    id INTEGER NOT NULL,
    format TEXT NOT NULL,
    data BLOB NOT NULL
)""",
}
META_V2 = {"format": "asyncgraph-store", "version": "2"}


def _without_token(meta: dict[str, str]) -> dict[str, str]:
    """meta less its random ``token`` (checked to be one: 16 hex digits), and less the
    last run's graph digests (``graph``: 64 hex digits, ``digests``: their bytes; kept
    since session 17 for the next load, see test_store_digests), checked to be there."""
    token = meta.pop("token")
    assert len(token) == 16 and int(token, 16) >= 0
    graph, digests = meta.pop("graph"), meta.pop("digests")
    assert len(graph) == 64 and int(graph, 16) >= 0 and isinstance(digests, bytes)
    return meta


def _schema(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    conn = sqlite3.connect(path)
    try:
        objects = dict(
            conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
        )
        return objects, dict(conn.execute("SELECT key, value FROM meta").fetchall())
    finally:
        conn.close()


async def test_a_store_written_now_has_the_schema_of_version_2(tmp_path: Path) -> None:
    db = tmp_path / "now.db"
    await ag.run(_two(), store=db)
    objects, meta = _schema(db)
    assert (objects, _without_token(meta)) == (MASTER_V2, {**META_V2, "order": '["a", "b"]'})


async def test_a_store_written_before_opens_and_runs_on(tmp_path: Path) -> None:
    """A store made with the statements of the earlier module (as its first run made it,
    and as it wrote a run): loaded, planned, then run on, by this version."""
    db = tmp_path / "before.db"
    g = _two()
    fresh = await ag.run(_two(), store=tmp_path / "fingerprints.db")  # today's digests
    stored = SQLiteStore(tmp_path / "fingerprints.db").tasks()
    fps = {name: (t.fingerprint, t.code) for name, t in stored.items()}
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    for sql in SCHEMA_BEFORE.values():
        conn.execute(sql)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", list(META_BEFORE.items()))
    conn.execute(
        "INSERT INTO runs (started, status, pid, host) VALUES (?, 'running', ?, ?)",
        (100.0, 1, "elsewhere"),
    )
    row = _row("a", 1, value=fresh.results["a"], result_id=new_result_id())
    row = row._replace(fingerprint=fps["a"][0], code=fps["a"][1])
    conn.execute("INSERT OR REPLACE INTO state VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
    conn.execute(
        "UPDATE runs SET finished = ?, status = ?, tasks = ?, reused = ?, done = ?, "
        "failed = ?, skipped = ?, cancelled = ? WHERE id = ?",
        (102.0, "cancelled", 2, 0, 1, 0, 0, 1, 1),
    )
    conn.execute("COMMIT")
    conn.close()
    db.chmod(0o600)  # as a run creates it (sqlite3.connect made it 0644)

    loaded = ag.load(g, db)
    assert statuses(loaded) == {"a": "done", "b": "pending"}
    assert loaded.results["a"] == {"rows": [1, 2, 3]}
    assert ag.plan(g, db).set_index("name")["action"].to_dict() == {"a": "reuse", "b": "run"}
    out = await ag.run(g, store=db)
    assert out.results["b"] == 3
    assert [(r.id, r.status, r.reused, r.done) for r in SQLiteStore(db).runs()] == [
        (1, "cancelled", 0, 1),
        (2, "done", 1, 1),
    ]
    objects, meta = _schema(db)  # converted to version 2 by the run, in place
    assert (objects, _without_token(meta)) == (MASTER_V2, {**META_V2, "order": '["a", "b"]'})
    assert [t.name for t in SQLiteStore(db).run_tasks(1)] == ["a"]
