"""The durable store: resume, load, plan, history, locking and bad stores."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import statuses

import asyncgraph as ag
from asyncgraph._store import SQLiteStore, TaskRow


class Flaky:
    """A switch and a side-effect log for the graphs below, kept in files.

    Not in the object itself: its tasks close over it, so its state is part of their
    fingerprints, and a switch flipped in memory would count as a code change.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.broken = True

    @property
    def broken(self) -> bool:
        return (self.root / "broken").exists()

    @broken.setter
    def broken(self, value: bool) -> None:
        if value:
            (self.root / "broken").touch()
        else:
            (self.root / "broken").unlink(missing_ok=True)

    def mark(self, name: str) -> None:
        with open(self.root / "ran.log", "a") as log:
            log.write(name + "\n")

    @property
    def ran(self) -> list[str]:
        log = self.root / "ran.log"
        return log.read_text().split() if log.exists() else []

    def clear(self) -> None:
        (self.root / "ran.log").unlink(missing_ok=True)


def pipeline(flaky: Flaky) -> ag.Graph:
    g = ag.Graph()

    @g.task
    async def extract() -> list[int]:
        flaky.mark("extract")
        return [1, 2, 3]

    @g.task
    def load_db(extract: list[int]) -> int:
        flaky.mark("load_db")
        if flaky.broken:
            raise ConnectionError("database is down")
        return sum(extract)

    @g.task
    async def report(load_db: int) -> str:
        flaky.mark("report")
        return f"total {load_db}"

    @g.task
    async def side(extract: list[int]) -> int:
        flaky.mark("side")
        return len(extract)

    return g


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_resume_reruns_only_the_failed_task_and_its_descendants(tmp_path: Path) -> None:
    db = tmp_path / "nightly.db"
    flaky = Flaky(tmp_path)
    first = await ag.run(pipeline(flaky), store=db)
    assert statuses(first) == {
        "extract": "done", "load_db": "failed", "report": "skipped", "side": "done"}
    assert flaky.ran.count("extract") == 1

    flaky.broken = False
    flaky.clear()
    second = await ag.run(pipeline(flaky), store=db)  # a fresh graph: load + reset_failed
    assert sorted(flaky.ran) == ["load_db", "report"]
    assert dict(second.results) == {
        "extract": [1, 2, 3], "load_db": 6, "report": "total 6", "side": 3}

    flaky.clear()
    third = await ag.run(pipeline(flaky), store=db)
    assert flaky.ran == []  # everything is done and unchanged
    assert third.status["report"] is ag.State.DONE

    runs = ag.history(db)
    assert list(runs["status"]) == ["failed", "done", "done"]
    assert list(runs["reused"]) == [0, 2, 4]
    assert list(runs["done"]) == [2, 2, 0]
    assert list(runs["failed"]) == [1, 0, 0]
    assert str(runs["started"].dtype) == "datetime64[us, UTC]"


async def test_load_gives_stored_state_and_leaves_results_in_the_store(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    flaky = Flaky(tmp_path)
    await ag.run(pipeline(flaky), store=db)

    g = ag.load(pipeline(flaky), db)
    assert statuses(g) == {
        "extract": "done", "load_db": "failed", "report": "skipped", "side": "done"}
    stored = g.records["extract"].result
    assert isinstance(stored, ag.StoredResult)
    assert "not loaded" in repr(stored)
    assert g.results["extract"] == [1, 2, 3]  # loaded on demand
    assert "loaded" in repr(stored)
    error = g.errors["load_db"]
    assert isinstance(error, ag.RemoteError)
    assert error.type_name == "ConnectionError"
    assert "database is down" in str(error)
    assert "ConnectionError" in (g.records["load_db"].traceback or "")

    # The operator fixes the fault, resets the failed tasks and reruns.
    flaky.broken = False
    flaky.clear()
    done = await ag.run(ag.reset_failed(g), store=db)
    assert sorted(flaky.ran) == ["load_db", "report"]
    assert done.results["report"] == "total 6"


class Unloadable:
    """A result that pickles but refuses to unpickle: any load is visible."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> None:
    raise RuntimeError("unpickled!")


async def test_reading_status_never_unpickles(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    g = ag.Graph()

    @g.task
    async def thing() -> Unloadable:
        return Unloadable()

    await ag.run(g, store=db)
    loaded = ag.load(g, db)  # no unpickling here...
    assert loaded.status["thing"] is ag.State.DONE
    assert list(ag.plan(g, db)["action"]) == ["reuse"]
    assert list(loaded.to_frame()["status"]) == ["done"]
    assert len(ag.history(db)) == 1
    assert "<in the store>" in repr(loaded.results)
    with pytest.raises(ag.StoreError, match="'thing'.*cannot be loaded"):
        loaded.results["thing"]  # ...only when asked


async def test_rewrites_on_a_loaded_graph(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    flaky = Flaky(tmp_path)
    await ag.run(pipeline(flaky), store=db)

    g = ag.load(pipeline(flaky), db)
    plan = ag.plan(ag.mark_done(g, "load_db", results={"load_db": 60}), db).set_index("name")
    assert plan.loc["load_db", "action"] == "reuse"
    assert plan.loc["load_db", "reason"] == "marked done by the user"
    assert plan.loc["report", "action"] == "run"

    flaky.clear()
    out = await ag.run(ag.mark_done(g, "load_db", results={"load_db": 60}), store=db)
    assert flaky.ran == ["report"]
    assert out.results["report"] == "total 60"

    # reset: a done task and its descendants run again, even though unchanged
    flaky.clear()
    g = ag.load(pipeline(flaky), db)
    plan = ag.plan(ag.reset(g, "extract"), db).set_index("name")
    assert set(plan["action"]) == {"run"}
    assert plan.loc["extract", "reason"] == "reset by the user"
    flaky.broken = False
    await ag.run(ag.reset(g, "extract"), store=db)
    assert sorted(flaky.ran) == ["extract", "load_db", "report", "side"]


def versioned(version: int) -> ag.Graph:
    g = ag.Graph()
    if version == 1:

        @g.task
        async def source() -> int:
            return 1

    else:

        @g.task
        async def source() -> int:  # edited: different code
            return int("10")

    @g.task
    async def middle(source: int) -> int:
        return source + 1

    @g.task
    async def other() -> int:
        return 7

    return g


async def test_plan_says_why_each_task_runs(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    plan = ag.plan(versioned(1), db)
    assert list(plan.columns) == ["name", "kind", "action", "reason", "last_status", "last_run"]
    assert set(plan["reason"]) == {"new"}
    assert not db.exists()  # plan only reads

    await ag.run(versioned(1), store=db)
    plan = ag.plan(versioned(2), db).set_index("name")
    assert plan.loc["source", "reason"] == "code changed"
    assert plan.loc["middle", "reason"] == "upstream changed"
    assert (plan.loc["other", "action"], plan.loc["other", "reason"]) == (
        "reuse", "done, unchanged")
    assert plan.loc["other", "last_run"] == 1

    out = await ag.run(versioned(2), store=db)
    assert out.results["middle"] == 11


async def test_a_crashed_run_leaves_running_tasks_pending(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await ag.run(versioned(1), store=db)
    # What a process killed mid-task leaves behind: a run marked running, a task row
    # marked running, and the lock released by the kernel.
    store = SQLiteStore(db)
    store.acquire()
    run_id = store.begin_run()
    fps = {t.name: (t.fingerprint, t.code) for t in store.tasks().values()}
    store.write(run_id, [TaskRow("middle", ag.State.RUNNING, 1, 1.0, None, None, None, None,
                                 *fps["middle"], None)])
    store.close()

    assert ag.history(db)["status"].iloc[-1] == "running"
    g = ag.load(versioned(1), db)
    assert g.status["middle"] is ag.State.PENDING
    plan = ag.plan(versioned(1), db).set_index("name")
    assert plan.loc["middle", "reason"].startswith("never finished")
    out = await ag.run(versioned(1), store=db)
    assert out.results["middle"] == 2
    assert list(ag.history(db)["status"]) == ["done", "crashed", "done"]


async def test_store_file_is_private(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await ag.run(versioned(1), store=db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{db}-lock").stat().st_mode) == 0o600


async def test_a_second_run_on_a_held_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    entered, release = asyncio.Event(), asyncio.Event()
    g = ag.Graph()

    @g.task
    async def slow() -> int:
        entered.set()
        await release.wait()
        return 1

    first = asyncio.create_task(ag.run(g, store=db))
    await entered.wait()
    before = digest(db)
    with pytest.raises(ag.StoreLockedError, match=r"in use by run 1 \(pid \d+") as caught:
        await ag.run(versioned(1), store=db)
    assert "run 1" in caught.value.holder
    assert digest(db) == before  # the refused run wrote nothing
    release.set()
    assert (await first).results["slow"] == 1
    # Released at the end: the next run goes ahead.
    await ag.run(g, store=db)


def test_a_file_that_is_not_a_store_is_refused_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    before = digest(text)
    for call in (lambda: ag.load(versioned(1), text), lambda: ag.plan(versioned(1), text),
                 lambda: ag.history(text), lambda: ag.run_sync(versioned(1), store=text)):
        with pytest.raises(ag.StoreError, match="notes.txt.*not an asyncgraph store"):
            call()
    assert digest(text) == before

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    before = digest(other)
    with pytest.raises(ag.StoreError, match=r"SQLite database but not an asyncgraph store.*users"):
        ag.run_sync(versioned(1), store=other)
    assert digest(other) == before


async def test_a_truncated_store_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    g = ag.Graph()
    for i in range(200):
        g.add(f"t{i}", lambda i=i: "x" * 500 + str(i))
    await ag.run(g, store=db)
    data = db.read_bytes()
    assert len(data) > 8192
    db.write_bytes(data[: len(data) // 3])
    before = digest(db)
    with pytest.raises(ag.StoreError, match="damaged"):
        ag.load(g, db)
    with pytest.raises(ag.StoreError, match="damaged"):
        await ag.run(g, store=db)
    assert digest(db) == before


async def test_damage_deep_in_a_store_is_a_store_error(tmp_path: Path) -> None:
    """Damage that opening does not see (it reads only a few tables) shows when the
    store is read: a StoreError naming the file, never SQLite's own exception."""
    db = tmp_path / "s.db"
    g = ag.Graph()
    for i in range(300):
        g.add(f"t{i}", lambda i=i: "x" * 500 + str(i))
    await ag.run(g, store=db)
    pristine = db.read_bytes()

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE state SET status = 'bogus' WHERE name = 't7'")
    conn.close()
    with pytest.raises(ag.StoreError, match=r"s.db' is damaged .*'bogus' is not a valid State"):
        ag.load(g, db)

    import random

    rng = random.Random(5)
    damaged = 0
    for _ in range(12):
        data = bytearray(pristine)
        start = rng.randrange(1, len(data) // 4096) * 4096 + rng.randrange(0, 4000)
        data[start : start + 64] = bytes(rng.randrange(256) for _ in range(64))
        db.write_bytes(bytes(data))
        for call in (lambda: dict(ag.load(g, db).results), lambda: ag.plan(g, db),
                     lambda: ag.history(db), lambda: ag.run_sync(g, store=db)):
            try:
                call()
            except ag.StoreError as exc:
                assert "s.db" in str(exc)
                damaged += 1
    assert damaged  # the seed hits pages that matter


async def test_a_store_of_another_graph_is_refused_unless_forced(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await ag.run(versioned(1), store=db)
    before = digest(db)
    other = ag.Graph()
    other.add("alpha", lambda: 1)
    other.add("middle", lambda: 2)
    with pytest.raises(ag.StoreMismatchError) as caught:
        await ag.run(other, store=db)
    assert caught.value.only_in_store == ("source", "other")
    assert caught.value.only_in_graph == ("alpha",)
    assert "'source', 'other'" in str(caught.value)
    assert "force=True" in str(caught.value)
    assert digest(db) == before

    with pytest.raises(TypeError, match="force must be True or False, not 'yes'"):
        ag.load(other, db, force="yes")  # type: ignore[arg-type]
    forced = await ag.run(ag.load(other, db, force=True), store=db)
    assert dict(forced.results) == {"alpha": 1, "middle": 2}


async def test_a_result_that_cannot_be_stored_fails_its_task_only(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    g = ag.Graph()

    @g.task
    async def handle() -> Any:
        return threading.Lock()  # no pickle can carry a lock

    @g.task
    async def user(handle: Any) -> int:
        return 1

    @g.task
    async def fine() -> int:
        return 2

    out = await ag.run(g, store=db)
    assert statuses(out) == {"handle": "failed", "user": "skipped", "fine": "done"}
    error = out.errors["handle"]
    assert isinstance(error, ag.UnstorableResultError)
    assert "'handle'" in str(error) and "lock" in str(error)
    assert ag.load(g, db).status["handle"] is ag.State.FAILED


async def test_a_store_object_can_be_passed(tmp_path: Path) -> None:
    class Counting(SQLiteStore):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.rows = 0

        def write(self, run_id: int, rows: Any) -> None:
            self.rows += len(rows)
            super().write(run_id, rows)

    store = Counting(tmp_path / "s.db")
    assert isinstance(store, ag.Store)
    out = await ag.run(versioned(1), store=store)
    assert out.results["middle"] == 2
    assert store.rows == 6  # a running row and a final row per task
    with pytest.raises(TypeError, match="store must be a file path or a Store"):
        await ag.run(versioned(1), store=42)  # type: ignore[arg-type]


async def test_past_durations_order_the_next_run(tmp_path: Path, probe: Any) -> None:
    db = tmp_path / "s.db"
    g = ag.Graph()
    for name in ("short", "long"):
        g.add(name, _probe_task(probe, name), kind="io")
    await ag.run(g, store=db)
    # Rewrite the recorded durations: "long" took 10 s, "short" 0.1 s.
    store = SQLiteStore(db)
    store.acquire()
    run_id = store.begin_run()
    fps = {t.name: (t.fingerprint, t.code) for t in store.tasks().values()}
    store.write(run_id, [
        TaskRow("short", ag.State.DONE, 1, 0.0, 0.1, None, None, None, *fps["short"],
                ("pickle", pickle.dumps(None))),
        TaskRow("long", ag.State.DONE, 1, 0.0, 10.0, None, None, None, *fps["long"],
                ("pickle", pickle.dumps(None))),
    ])
    store.end_run(run_id, "done", {})
    store.close()
    probe.started.clear()
    loaded = ag.load(g, db)
    await ag.run(ag.reset(loaded, ["short", "long"]), store=db, max_io=1)
    assert probe.started == ["long", "short"]  # unit weights would start "short" first


def _probe_task(probe: Any, name: str) -> Any:
    def work() -> None:
        probe.enter(name)
        probe.leave(name)

    return work


async def test_dataframe_results_are_stored_as_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    db = tmp_path / "s.db"
    frame = pd.DataFrame({"city": ["a", "b"], "n": [1, 2]})
    g = ag.Graph()
    g.add("table", lambda: frame)
    g.add("mixed", lambda: pd.DataFrame({"x": [1, "a"]}))  # parquet cannot: pickled
    await ag.run(g, store=db)
    with sqlite3.connect(db) as conn:
        formats = sorted(r[0] for r in conn.execute("SELECT format FROM results"))
    conn.close()
    assert formats == ["parquet", "pickle"]
    loaded = ag.load(g, db)
    pd.testing.assert_frame_equal(loaded.results["table"], frame)
    assert list(loaded.results["mixed"]["x"]) == [1, "a"]


def test_sync_run_on_store_and_store_path_kinds(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "dir" / "s.db"
    out = ag.run_sync(versioned(1), store=str(db))
    assert out.results["middle"] == 2
    assert db.exists()
    with pytest.raises(ag.StoreError, match="is a directory"):
        ag.run_sync(versioned(1), store=tmp_path)
    assert os.listdir(tmp_path) == ["deep"]
