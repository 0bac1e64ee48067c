"""The durable store: resume, load, plan, history, locking and bad stores."""

from __future__ import annotations

import asyncio
import contextlib
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
from store_rows import latest_rows, rewrite

import asyncgraph as ag
from asyncgraph._store import SQLiteStore, TaskRow, new_result_id


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
    store.write(run_id, [TaskRow("middle", run_id, "running", 1, 1.0, None, None, None, None,
                                 *fps["middle"], None, None, None)])
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
    assert not Path(f"{db}-lock").exists()  # the lock is an flock on the store itself


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

    rewrite(db, "t7", status="bogus")  # schema 2: the record inside its batch's row
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
    assert store.rows == 3  # one final row per task (no start rows for new tasks)
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
        TaskRow("short", run_id, "done", 1, 0.0, 0.1, None, None, None, *fps["short"],
                new_result_id(), "pickle", pickle.dumps(None)),
        TaskRow("long", run_id, "done", 1, 0.0, 10.0, None, None, None, *fps["long"],
                new_result_id(), "pickle", pickle.dumps(None)),
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
    rows = latest_rows(db).values()  # schema 2: records in batches, big results apart
    formats = sorted(r.result_format for r in rows if r.result_format is not None)
    assert formats == ["parquet", "pickle"]
    loaded = ag.load(g, db)
    pd.testing.assert_frame_equal(loaded.results["table"], frame)
    assert list(loaded.results["mixed"]["x"]) == [1, "a"]


def test_sync_run_on_store_and_store_path_kinds(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    out = ag.run_sync(versioned(1), store=str(db))
    assert out.results["middle"] == 2
    assert db.exists()
    with pytest.raises(ag.StoreError, match="is a directory"):
        ag.run_sync(versioned(1), store=tmp_path)
    typo = tmp_path / "nigthly" / "s.db"
    with pytest.raises(ag.StoreError, match="nigthly' does not exist; create it first"):
        ag.run_sync(versioned(1), store=typo)
    assert sorted(os.listdir(tmp_path)) == ["s.db"]  # no directory made


async def test_marked_done_tasks_are_recorded_for_the_next_run(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    flaky = Flaky(tmp_path)
    await ag.run(pipeline(flaky), store=db)
    fixed = ag.mark_done(ag.load(pipeline(flaky), db), "load_db", results={"load_db": 60})
    await ag.run(fixed, store=db)
    flaky.clear()
    again = await ag.run(pipeline(flaky), store=db)  # a fresh graph: nothing left to run
    assert flaky.ran == []
    assert again.results["report"] == "total 60"
    assert ag.load(pipeline(flaky), db).results["load_db"] == 60


async def test_done_is_announced_only_once_its_result_is_committed(tmp_path: Path) -> None:
    committed: list[str] = []
    gate = threading.Event()

    class Slow(SQLiteStore):
        def write(self, run_id: int, rows: Any) -> None:
            gate.wait()  # the disk is slow: nothing is durable until the gate opens
            super().write(run_id, rows)
            committed.extend(r.name for r in rows if r.status == "done")

    announced: list[tuple[str, bool]] = []

    def on_event(event: ag.Event) -> None:
        if event.kind is ag.EventKind.DONE:
            announced.append((event.task, event.task in committed))
        if event.kind is ag.EventKind.STARTED and event.task == "other":
            gate.set()  # open the gate only after a downstream task has started

    g = ag.Graph()

    @g.task
    async def first() -> int:
        return 1

    @g.task
    async def other(first: int) -> int:  # starts before first's result is durable
        return first + 1

    store = Slow(tmp_path / "s.db")
    out = await ag.run(g, store=store, on_event=on_event)
    store.close()
    assert out.results["other"] == 2
    assert announced == [("first", True), ("other", True)]


async def test_open_run_on_a_store_yields_results_as_they_are_durable(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    flaky = Flaky(tmp_path)
    flaky.broken = False
    seen: list[str] = []
    async with ag.open_run(pipeline(flaky), store=db) as r:
        async for name, value in r.as_completed():
            seen.append(name)
            assert ag.load(pipeline(flaky), db).status[name] is ag.State.DONE
            if name == "load_db":
                assert value == 6
    assert sorted(seen) == ["extract", "load_db", "report", "side"]
    assert r.graph.results["report"] == "total 6"
    flaky.clear()
    async with ag.open_run(pipeline(flaky), store=db) as again:
        assert [n async for n, _ in again.as_completed()] == []  # all reused
    assert flaky.ran == []


# -- found by review -----------------------------------------------------------------------


async def test_a_replaced_result_is_never_read_as_another_tasks(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("a", lambda: "A")
    g.add("b", lambda: "B")
    await ag.run(g, store=db)
    old = ag.load(g, db)  # holds b's stored result

    def fail() -> str:
        raise RuntimeError("b is broken now")

    g2 = ag.Graph()
    g2.add("a", lambda: "A")
    g2.add("b", fail)
    g2.add("c", lambda: "C-result")
    await ag.run(g2, store=db)  # b's result goes, c's arrives
    with pytest.raises(ag.StoreError, match="'b' is no longer in store"):
        old.results["b"]


def _fds_on(path: Path) -> int:
    target = str(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(target):
                count += 1
    return count


async def test_reading_a_store_keeps_no_file_open(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await ag.run(versioned(1), store=db)
    graphs = [ag.load(versioned(1), db) for _ in range(5)]
    for _ in range(5):
        ag.plan(versioned(1), db)
        ag.history(db)
    assert graphs[0].results["middle"] == 2
    assert _fds_on(db) == 0


async def test_a_store_path_with_uri_characters(tmp_path: Path) -> None:
    db = tmp_path / "nightly#1?.db"
    ag.plan(versioned(1), db)
    assert os.listdir(tmp_path) == []  # plan reads only, and opened no other file
    out = await ag.run(versioned(1), store=db)
    assert out.results["middle"] == 2
    assert sorted(os.listdir(tmp_path)) == ["nightly#1?.db"]
    assert ag.load(versioned(1), db).results["middle"] == 2


async def test_rerunning_a_returned_graph_rewrites_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    first = await ag.run(versioned(1), store=db)
    again = await ag.run(first, store=db)
    assert again.results["middle"] == 2
    runs = ag.history(db)
    assert list(runs["done"]) == [3, 0]
    assert list(runs["reused"]) == [0, 3]
    assert list(runs["status"]) == ["done", "done"]
    assert {t.run_id for t in SQLiteStore(db).tasks().values()} == {1}


async def test_plan_reasons_for_failures_from_a_run_without_a_store(tmp_path: Path) -> None:
    flaky = Flaky(tmp_path)
    out = await ag.run(pipeline(flaky))  # no store
    plan = ag.plan(out, tmp_path / "s.db").set_index("name")
    assert plan.loc["load_db", "reason"] == "failed last time"
    assert plan.loc["report", "reason"] == "skipped last time (an upstream task failed)"
    assert plan.loc["extract", "reason"] == "marked done by the user"


async def test_an_unstorable_result_is_not_retried(tmp_path: Path) -> None:
    flaky = Flaky(tmp_path)
    g = ag.Graph()

    @g.task(retries=2, retry_delay=0.001)
    async def handle() -> Any:
        flaky.mark("handle")
        return threading.Lock()

    out = await ag.run(g, store=tmp_path / "s.db")
    assert isinstance(out.errors["handle"], ag.UnstorableResultError)
    assert flaky.ran == ["handle"]  # the same result would fail again: no retry


class _Slow(SQLiteStore):
    """A store whose acquire / begin_run block until told, to cancel a run there."""

    def __init__(self, path: Path, where: str) -> None:
        super().__init__(path)
        self.where = where
        self.inside = threading.Event()
        self.go_on = threading.Event()

    def acquire(self) -> None:
        super().acquire()
        if self.where == "acquire":
            self.inside.set()
            self.go_on.wait()

    def begin_run(self) -> int:
        run_id = super().begin_run()
        if self.where == "begin_run":
            self.inside.set()
            self.go_on.wait()
        return run_id


@pytest.mark.parametrize("where", ["acquire", "begin_run"])
async def test_a_run_cancelled_while_it_takes_the_store_lets_go(
    tmp_path: Path, where: str
) -> None:
    db = tmp_path / "s.db"
    slow = _Slow(db, where)
    run = asyncio.ensure_future(ag.run(versioned(1), store=slow))
    await asyncio.get_running_loop().run_in_executor(None, slow.inside.wait)
    run.cancel()
    await asyncio.sleep(0)  # let the cancellation land while the thread is blocked
    slow.go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await run
    slow.close()
    out = await ag.run(versioned(1), store=db)  # not locked
    assert out.results["middle"] == 2
    statuses_of_runs = list(ag.history(db)["status"])
    if where == "begin_run":
        assert statuses_of_runs == ["cancelled", "done"]  # not left "running"
    else:
        assert statuses_of_runs == ["done"]


def test_bad_store_and_open_run_arguments_are_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="SQLiteStore.path.: path must be a file path, not 3"):
        SQLiteStore(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="store must be a file path or a Store"):
        ag.open_run(versioned(1), store=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_io must be at least 1"):
        ag.open_run(versioned(1), max_io=0)


async def test_every_run_keeps_its_own_task_records(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    flaky = Flaky(tmp_path)
    await ag.run(pipeline(flaky), store=db)
    flaky.broken = False
    await ag.run(pipeline(flaky), store=db)
    store = SQLiteStore(db)
    first = {t.name: t.status.value for t in store.run_tasks(1)}
    second = {t.name: t.status.value for t in store.run_tasks(2)}
    assert first == {"extract": "done", "load_db": "failed", "report": "skipped", "side": "done"}
    assert second == {"load_db": "done", "report": "done"}  # what run 2 ran
    failed = next(t for t in store.run_tasks(1) if t.name == "load_db")
    assert failed.error_type == "ConnectionError" and "database is down" in (
        failed.error_message or "")


HOLDER = """
import sys
import asyncgraph as ag

g = ag.Graph()

def wait_for_stdin():
    sys.stdin.readline()  # the test says when to finish
    return 1

g.add("slow", wait_for_stdin)

def on_event(event):
    if event.kind is ag.EventKind.STARTED:
        print("started", flush=True)

ag.run_sync(g, store=sys.argv[1], on_event=on_event)
print("finished", flush=True)
"""


def test_a_second_process_on_a_held_store_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = tmp_path / "s.db"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    holder = subprocess.Popen(
        [sys.executable, str(script), str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "started"
        before = digest(db)
        with pytest.raises(ag.StoreLockedError, match=rf"in use by run 1 \(pid {holder.pid} "):
            ag.run_sync(versioned(1), store=db)
        assert digest(db) == before
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "finished"
    finally:
        holder.kill()
        holder.wait()
    assert ag.run_sync(ag.load(versioned(1), db, force=True), store=db).results["middle"] == 2
