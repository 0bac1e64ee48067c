"""A run of a loaded graph reuses the rows its ``load`` read, only while they are current.

``load`` reads every row of the store; the run of the graph it returns used to read them
all again. It now takes the load's rows when the store's generation (the last run's id
and status, the history's last row) is what it was before the load read them; any run in
between makes it read again, so what the run decides from them (which done rows to reset
first) is never decided on rows that are out of date.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncgraph as ag
from asyncgraph import State


class Counting(ag.SQLiteStore):
    """Counts ``tasks()`` reads and records each written batch's (name, status) pairs."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0
        self.batches: list[list[tuple[str, str]]] = []

    def tasks(self) -> Any:
        self.reads += 1
        return super().tasks()

    def write(self, run_id: int, rows: Any, counts: Any = None) -> None:
        self.batches.append([(r[0], r[2]) for r in rows])
        super().write(run_id, rows, counts)


def build(flag: Path) -> ag.Graph:
    def a() -> int:
        if flag.exists():
            raise RuntimeError("a is down")
        return 1

    g = ag.Graph()
    g.add("a", a, deps=[])
    g.add("b", lambda a: a + 1, deps=["a"])
    g.add("c", lambda: 3, deps=[])
    return g


def test_a_run_right_after_its_load_reads_the_rows_once(tmp_path):
    db, flag = tmp_path / "s.db", tmp_path / "flag"
    flag.write_text("")
    ag.run_sync(build(flag), store=db)
    flag.unlink()
    store = Counting(db)
    try:
        loaded = ag.reset_failed(ag.load(build(flag), store))
        assert store.reads == 1
        out = ag.run_sync(loaded, store=store)
        assert store.reads == 1  # the load's rows served the run
        assert out.results["b"] == 2 and out.status["c"] is State.DONE
        out = ag.run_sync(ag.reset(out, "a"), store=store)  # once only: read again
        assert store.reads == 2
        assert out.results["b"] == 2
    finally:
        store.close()


def test_a_run_in_between_makes_the_run_read_again_and_reset_first(tmp_path):
    db, flag = tmp_path / "s.db", tmp_path / "flag"
    flag.write_text("")
    ag.run_sync(build(flag), store=db)
    flag.unlink()
    store = Counting(db)
    try:
        loaded = ag.reset_failed(ag.load(build(flag), store))  # a failed, b skipped
        ag.run_sync(build(flag), store=db)  # another run: a and b are done now
        store.batches.clear()
        out = ag.run_sync(loaded, store=store)
        assert store.reads == 2
        # The rows read again say a and b are done: their stale "done" goes first.
        assert set(store.batches[0]) >= {("a", "pending"), ("b", "pending")}
        assert out.results["b"] == 2
    finally:
        store.close()


def test_the_generation_moves_with_every_run(tmp_path):
    db, flag = tmp_path / "s.db", tmp_path / "flag"
    store = ag.SQLiteStore(db)
    try:
        assert store.generation() == (0, None, 0)
        ag.run_sync(build(flag), store=db)
        first = store.generation()
        assert first[:2] == (1, "done")
        assert store.generation() == first  # reading changes nothing
        ag.run_sync(build(flag), store=db)  # all reused: no row, but a run
        second = store.generation()
        assert second != first and second[:2] == (2, "done")
    finally:
        store.close()
