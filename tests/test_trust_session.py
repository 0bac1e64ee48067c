"""Issue 10, items 1, 2, 3, 18, 21 and the last sub-item of 19: stored results and counts.

- 1: a reset is durable for every task it touches before anything of the run commits,
  so a SIGKILL after the reset task's new result committed cannot bring back a stale
  descendant (``trust_session_driver.py``, with a side-effect log written with fsync);
- 2: a loaded graph run without ``store=`` hands its tasks values, not placeholders;
  19: a graph loaded from one store and run on another is refused, naming both;
- 3: a result over the store's size limit fails its own task only;
- 18, 21: the counts ``history`` shows are those of the rows committed, also for a run
  whose write failed and for a run killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trust_session_driver as driver
from conftest import statuses

import asyncgraph as ag
from asyncgraph._store import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
#: An upper bound for waits on processes, not a measurement: only hit when stuck.
PATIENCE = 60.0


# -- helpers ---------------------------------------------------------------------------


def _env(log: Path, phase: str, value: int, block: bool) -> dict[str, str]:
    env = dict(os.environ)
    paths = (str(ROOT), str(HERE), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env[driver.LOG_ENV] = str(log)
    env[driver.PHASE_ENV] = phase
    env[driver.VALUE_ENV] = str(value)
    env[driver.BLOCK_ENV] = "1" if block else "0"
    return env


def _argv(store: Path, mode: str) -> list[str]:
    return [sys.executable, "-c", "import trust_session_driver as d; d.main()", str(store), mode]


def _drive(store: Path, mode: str, env: dict[str, str]) -> dict[str, str]:
    """Run the driver to its end; its results by task name."""
    proc = subprocess.run(
        _argv(store, mode), env=env, capture_output=True, text=True, timeout=PATIENCE
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return {
        line.split()[1]: line.split()[2]
        for line in proc.stdout.splitlines()
        if line.startswith("result ")
    }


def _ran(log: Path, phase: str) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[1] for line in lines if line.split()[0] == phase]


def _committed_counts(db: Path, run_id: int) -> Counter[str]:
    """What the run's committed rows say, from the history table (not from runs)."""
    return Counter(t.status.value for t in SQLiteStore(db).run_tasks(run_id))


def _run_counts(db: Path, run_id: int) -> dict[str, int]:
    runs = ag.history(db).set_index("run")
    return {k: int(runs.loc[run_id, k]) for k in ("done", "failed", "skipped", "cancelled")}


# -- 1 and 21: SIGKILL after the reset task's new result committed ----------------------


def test_a_crash_after_a_reset_task_committed_never_reuses_its_stale_descendant(
    tmp_path: Path,
) -> None:
    db, log = tmp_path / "s.db", tmp_path / "ran.log"

    # Run 1: everything done, derived = 10 from source = 1.
    assert _drive(db, "plain", _env(log, "first", 1, block=False))["derived"] == "10"

    # Run 2: reset source (so derived too) and the blocker; source's new result (2)
    # commits; derived waits for the slot the blocker holds; SIGKILL.
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            _argv(db, "reset"),
            env=_env(log, "crash", 2, block=True),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        # A hang guard only: the read below ends when the line comes or the driver dies.
        guard = threading.Timer(PATIENCE, os.killpg, (proc.pid, signal.SIGKILL))
        guard.start()
        try:
            for line in proc.stdout:
                if line.strip() == "done source":  # committed: the event comes after
                    break
        finally:
            guard.cancel()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=PATIENCE)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    assert sorted(_ran(log, "crash")) == ["blocker", "source"]  # derived never started

    # 21: the killed run's counts are those of its committed rows (source done).
    runs = ag.history(db)
    assert list(runs["status"]) == ["done", "running"]
    assert _run_counts(db, 2) == {"done": 1, "failed": 0, "skipped": 0, "cancelled": 0}
    assert _committed_counts(db, 2)["done"] == 1
    assert int(runs.set_index("run").loc[2, "tasks"]) == 3

    # 1: the store does not offer the stale derived (computed from source = 1).
    after = ag.load(driver.build(), db)
    assert after.status["source"] is ag.State.DONE
    assert after.status["derived"] is ag.State.PENDING
    plan = ag.plan(driver.build(), db).set_index("name")
    assert plan.loc["derived", "action"] == "run"

    # Run 3, a fresh graph: derived runs again, from the new source.
    results = _drive(db, "plain", _env(log, "resume", 2, block=False))
    assert results["derived"] == "20"
    assert "derived" in _ran(log, "resume") and "source" not in _ran(log, "resume")
    assert list(ag.history(db)["status"]) == ["done", "crashed", "done"]


async def test_the_reset_rows_are_the_runs_first_commit(tmp_path: Path) -> None:
    """The ordering the crash test relies on, seen from the store's side: the batch
    that takes every reset task's stale 'done' back is committed before any row of a
    task that ran in this run."""
    db = tmp_path / "s.db"
    batches: list[list[tuple[str, str]]] = []

    class Recording(SQLiteStore):
        def write(self, run_id: int, rows: Any, **kw: Any) -> None:
            super().write(run_id, rows, **kw)
            batches.append([(r.name, r.status) for r in rows])

    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a + 1)
    g.add("c", lambda b: b + 1)
    g.add("other", lambda: 0)
    await ag.run(g, store=db)
    batches.clear()
    again = await ag.run(ag.reset(ag.load(g, db), ["a"]), store=Recording(db))
    assert again.results["c"] == 3
    first = batches[0]
    assert {n for n, s in first if s == "pending"} == {"a", "b", "c"}
    written = [row for batch in batches for row in batch]
    firsts = {n: written.index((n, "pending")) for n in "abc"}
    assert max(firsts.values()) < min(i for i, (_, s) in enumerate(written) if s == "done")
    assert ag.load(g, db).status == dict.fromkeys(["a", "b", "c", "other"], ag.State.DONE)


# -- 2 and 19: a loaded graph without store=, and on another store ----------------------


def _fan() -> ag.Graph:
    g = ag.Graph()

    async def a() -> int:
        return 21

    async def io(a: int) -> int:
        return a * 2

    def thread(a: int) -> int:
        return a * 3

    def cpu(a: int) -> int:
        return a * 4

    g.add("a", a)
    g.add("io", io)
    g.add("thread", thread)
    g.add("cpu", cpu, kind="cpu")
    return g


def test_a_loaded_graph_run_without_a_store_hands_its_tasks_values(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    ag.run_sync(_fan(), store=db, cpu_workers=1)
    again = ag.run_sync(ag.reset(ag.load(_fan(), db), ["io", "thread", "cpu"]), cpu_workers=1)
    assert statuses(again) == dict.fromkeys(["a", "io", "thread", "cpu"], "done")
    assert dict(again.results) == {"a": 21, "io": 42, "thread": 63, "cpu": 84}


async def test_a_loaded_graph_run_without_a_store_async(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("a", lambda: [1, 2])
    g.add("b", lambda a: sum(a))
    await ag.run(g, store=db)
    out = await ag.run(ag.reset(ag.load(g, db), ["b"]))
    assert out.results["b"] == 3


async def test_a_graph_loaded_from_one_store_is_refused_on_another(tmp_path: Path) -> None:
    a_db, b_db = tmp_path / "a.db", tmp_path / "b.db"
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a + 1)
    await ag.run(g, store=a_db)
    loaded = ag.reset(ag.load(g, a_db), ["b"])
    for attempt in (
        lambda: ag.run(loaded, store=b_db),
        lambda: ag.run(loaded, store=SQLiteStore(b_db)),
    ):
        with pytest.raises(ag.StoreError) as info:
            await attempt()
        message = str(info.value)
        assert str(a_db) in message and str(b_db) in message
        assert "loaded from" in message and "ag.load(" in message
        assert "replaced" not in message
        assert not b_db.exists()  # nothing written to the other store,
        assert not (tmp_path / "b.db-lock").exists()  # which was not even held
    with pytest.raises(ag.StoreError, match="loaded from"):
        ag.plan(loaded, b_db)
    # The same file by another spelling is the same store.
    link = tmp_path / "link.db"
    link.symlink_to(a_db)
    out = await ag.run(loaded, store=link)
    assert out.results["b"] == 2


# -- 3: one result too big for the store ------------------------------------------------

LIMIT = 60_000


class SmallRows(SQLiteStore):
    """A store whose SQLite connection holds rows of at most ``limit`` bytes (the test's
    stand-in for SQLite's default 10**9), and says so."""

    limit = LIMIT

    def begin_run(self) -> int:
        run_id = super().begin_run()
        assert self._conn is not None
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.limit)
        return run_id

    def result_size_limit(self) -> int:
        return self.limit


async def test_a_result_too_big_for_the_store_fails_its_own_task_only(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("small", lambda: b"x" * 100)
    g.add("big", lambda: b"x" * (LIMIT + 1))
    g.add("after_small", lambda small: len(small))
    g.add("after_big", lambda big: len(big))
    g.add("late", lambda after_small: after_small + 1)
    out = await ag.run(g, store=SmallRows(db))
    assert statuses(out) == {
        "small": "done",
        "big": "failed",
        "after_small": "done",
        "after_big": "skipped",
        "late": "done",
    }
    error = out.errors["big"]
    assert isinstance(error, ag.UnstorableResultError)
    message = str(error)
    assert "'big'" in message and f"{LIMIT:,}" in message and "SQLITE_LIMIT_LENGTH" in message
    # The rest is stored, and the counts are those rows.
    loaded = ag.load(g, db)
    assert {n for n, s in loaded.status.items() if s is ag.State.DONE} == {
        "small",
        "after_small",
        "late",
    }
    assert loaded.results["late"] == 101
    assert _run_counts(db, 1) == {"done": 3, "failed": 1, "skipped": 1, "cancelled": 0}


def test_a_sqlite_store_says_its_limit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    limit = sqlite3.connect(":memory:").getlimit(sqlite3.SQLITE_LIMIT_LENGTH)
    assert store.result_size_limit() == limit
    assert not (tmp_path / "s.db").exists()


async def test_a_result_just_under_the_limit_is_stored(tmp_path: Path) -> None:
    """About as big as the check lets through: SQLite's (lowered) row limit takes it,
    with a long task name and a failed task's traceback beside it in the batch."""
    from asyncgraph._store.session import _ROW_OVERHEAD

    db = tmp_path / "s.db"
    size = LIMIT - _ROW_OVERHEAD - 64  # the pickle's own header is a few bytes
    name = "big_" + "n" * 200
    g = ag.Graph()
    g.add(name, lambda: b"x" * size)
    g.add("over", lambda: b"x" * (size + 128))

    def broken() -> None:
        raise ValueError("e" * 20_000)

    g.add("broken", broken)
    out = await ag.run(g, store=SmallRows(db))
    assert statuses(out) == {name: "done", "over": "failed", "broken": "failed"}
    assert isinstance(out.errors["over"], ag.UnstorableResultError)
    assert len(ag.load(g, db).results[name]) == size


# -- 18: a failed write ------------------------------------------------------------------


async def test_after_a_failed_write_history_counts_only_what_was_committed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"

    class FullDisk(SQLiteStore):
        def write(self, run_id: int, rows: Any, **kw: Any) -> None:
            if any(r.name == "c" for r in rows):
                raise sqlite3.OperationalError("database or disk is full")
            super().write(run_id, rows, **kw)

    # b waits for a's commit (its done event is sent once the row is durable), so a is
    # committed in a batch of its own before c, whose batch fails, can exist: without
    # that, a, b and c could all end before the writer wakes and go in one failed batch.
    a_committed = threading.Event()

    def on_event(event: ag.Event) -> None:
        if event.kind is ag.EventKind.DONE and event.task == "a":
            a_committed.set()

    def b(a: int) -> int:
        assert a_committed.wait(60), "a's commit was never reported"
        return a + 1

    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", b)
    g.add("c", lambda b: b + 1)
    g.add("d", lambda c: c + 1)
    with pytest.raises(ag.StoreError, match="disk is full"):
        await ag.run(g, store=FullDisk(db), on_event=on_event)
    committed = _committed_counts(db, 1)
    assert committed["done"] >= 1  # a, at least, was stored
    counts = _run_counts(db, 1)
    assert counts["done"] == committed["done"]
    assert counts == {k: committed[k] for k in ("done", "failed", "skipped", "cancelled")}
    done_in_store = [t for t in SQLiteStore(db).tasks().values() if t.status is ag.State.DONE]
    assert len(done_in_store) == counts["done"]
    assert ag.history(db)["status"].iloc[0] == "failed"


async def test_a_too_big_result_marked_done_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a + 1)
    marked = ag.mark_done(g, ["a"], results={"a": b"x" * (LIMIT + 1)})
    with pytest.raises(ag.UnstorableResultError, match="'a' was marked done with a result"):
        await ag.run(marked, store=SmallRows(db))
    # Nothing written: the run locks the store file itself, so it may have created it,
    # empty (which a store reads as "no store yet"), but no run and no row are in it.
    assert not db.exists() or db.stat().st_size == 0
    assert ag.history(db).empty


# -- 1, the stronger side: a rerun upstream outside the descendant's run ----------------


async def test_a_subgraph_that_reran_a_task_leaves_its_dropped_descendants_to_rerun(
    tmp_path: Path,
) -> None:
    """A subgraph of a reset graph reruns ``source`` without ``derived``: the store then
    holds a ``derived`` computed in an earlier run than the ``source`` it depends on, and
    the next run must not reuse it. Tasks the user marks done keep the user's word."""
    db = tmp_path / "s.db"
    value = tmp_path / "value"
    value.write_text("1")
    g = ag.Graph()
    g.add("source", lambda: int(value.read_text()))
    g.add("derived", lambda source: source * 10)
    g.add("other", lambda: 0)
    assert (await ag.run(g, store=db)).results["derived"] == 10

    value.write_text("2")
    sub = ag.subgraph(ag.reset(ag.load(g, db), ["source"]), ["source"])
    assert dict((await ag.run(sub, store=db)).results) == {"source": 2}

    plan = ag.plan(g, db).set_index("name")
    assert tuple(plan.loc["derived", ["action", "reason"]]) == ("run", "upstream result changed")
    assert plan.loc["other", "action"] == "reuse"
    again = await ag.run(g, store=db)
    assert dict(again.results) == {"source": 2, "derived": 20, "other": 0}

    # mark_done of the upstream (no start time: not a computation) is the user's word.
    marked = ag.mark_done(ag.load(g, db), ["source"], results={"source": 5})
    await ag.run(ag.subgraph(marked, ["source"]), store=db)
    assert ag.load(g, db).status["derived"] is ag.State.DONE
