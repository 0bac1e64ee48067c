"""The ledger on its own: records, attempts, and the one path for events and rows.

No event loop and no run: the test calls what the run would, in the run's order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import asyncgraph as ag
from asyncgraph._events import Event, EventKind
from asyncgraph._ledger import Ledger, NullSink
from asyncgraph._state import TaskRecord

K = EventKind


def graph() -> ag.Graph:
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a + 1)
    g.add("c", lambda b: b + 1)
    return g._derive(g._records)  # a run's snapshot: its records are the ledger's


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class DeferringSink:
    """A store's side, as the ledger sees it: rows kept, done events deferred."""

    stores = True
    origin: str | None = "the-store"

    def __init__(self, refuse: Sequence[str] = ()) -> None:
        self.rows: list[tuple[str, str]] = []
        self.refuse = set(refuse)

    async def open(
        self, ledger: Ledger, pending: Sequence[str], on_error: Callable[[BaseException], None]
    ) -> None:
        return None

    def keep(self, name: str, value: Any) -> bool:
        return name not in self.refuse

    def refused(self, name: str) -> BaseException:
        return ag.UnstorableResultError(f"{name} cannot be stored")

    def ended(self, name: str, rec: TaskRecord) -> bool:
        self.rows.append((name, rec.status.value))
        return rec.status is ag.State.DONE

    async def close(self) -> None:
        return None


def kinds(events: list[Event]) -> list[tuple[str, str, int]]:
    return [(e.kind.value, e.task, e.attempt) for e in events]


def test_a_task_from_start_to_done_without_a_store():
    g = graph()
    events: list[Event] = []
    clock = Clock()
    ledger = Ledger(g, events.append, NullSink(), clock)
    ledger.announce(["a", "b", "c"], [])
    ledger.started([g.tasks["a"]], 100.0)
    clock.now = 102.0
    ledger.began("a", 101.0)  # its executor began it a second after the dispatch
    assert ledger.done("a", 1, 103.0)
    rec = ledger.records["a"]
    assert (rec.status, rec.result, rec.attempts, rec.started, rec.finished) == (
        ag.State.DONE,
        1,
        1,
        101.0,
        103.0,
    )
    assert ledger.result("a") == 1
    assert kinds(events) == [
        ("queued", "a", 0),
        ("queued", "b", 0),
        ("queued", "c", 0),
        ("started", "a", 1),
        ("done", "a", 1),
    ]


def test_began_never_moves_the_start_past_now_nor_before_the_dispatch():
    g = graph()
    clock = Clock()
    ledger = Ledger(g, None, NullSink(), clock)
    ledger.started([g.tasks["a"]], 100.0)
    ledger.began("a", 50.0)  # a worker's clock behind ours
    assert ledger.started_at["a"] == 100.0
    ledger.began("a", 500.0)  # ahead of ours
    assert ledger.started_at["a"] == clock.now


def test_a_retry_then_a_failure_skips_the_descendants():
    g = graph()
    events: list[Event] = []
    ledger = Ledger(g, events.append, NullSink(), Clock())
    error = ValueError("no")
    ledger.started([g.tasks["a"]], 100.0)
    ledger.retrying("a", error, "tb", 101.0)
    assert ledger.last_error["a"] == (error, "tb")
    ledger.started([g.tasks["a"]], 102.0)
    ledger.ended("a", ag.State.FAILED, error, "tb", 103.0)
    ledger.skipped(["b", "c"], 103.0)
    rec = ledger.records["a"]
    assert (rec.status, rec.attempts, rec.started, rec.error) == (ag.State.FAILED, 2, 100.0, error)
    assert ledger.records["b"].status is ag.State.SKIPPED
    assert kinds(events) == [
        ("started", "a", 1),
        ("retrying", "a", 1),
        ("started", "a", 2),
        ("failed", "a", 2),
        ("skipped", "b", 0),
        ("skipped", "c", 0),
    ]


def test_cancel_says_why_for_running_abandoned_retrying_and_never_started_tasks():
    g = ag.Graph()
    for n in ("run", "stuck", "retry", "never"):
        g.add(n, lambda: None)
    g = g._derive(g._records)
    events: list[Event] = []
    ledger = Ledger(g, events.append, NullSink(), Clock())
    ledger.started([g.tasks[n] for n in ("run", "stuck", "retry")], 100.0)
    ledger.retrying("retry", KeyError("k"), None, 100.5)
    ledger.cancel(["run", "stuck"], ["retry", "never"], "the deadline passed", {"stuck"}, 5.0)
    errors = {n: str(r.error) for n, r in ledger.records.items()}
    assert errors["run"] == "task 'run' was cancelled: the deadline passed"
    assert "did not end within cancel_grace=5.0s and was abandoned" in errors["stuck"]
    assert "while waiting to retry after KeyError" in errors["retry"]
    assert errors["never"] == "task 'never' did not start: the deadline passed"
    assert ledger.records["never"].attempts == 0
    cancelled = [(e.task, e.attempt) for e in events if e.kind is K.CANCELLED]
    assert cancelled == [("run", 1), ("stuck", 1), ("retry", 1), ("never", 0)]


def test_with_a_store_a_done_event_waits_for_its_commit():
    g = graph()
    events: list[Event] = []
    sink = DeferringSink()
    ledger = Ledger(g, events.append, sink, Clock())
    ledger.started([g.tasks["a"]], 100.0)
    assert ledger.done("a", 1, 101.0)
    assert sink.rows == [("a", "done")]
    assert [e.kind for e in events] == [K.STARTED]  # not durable yet
    ledger.durable([("a", 101.0), ("marked", 90.0)])  # "marked" did not run here: no event
    assert kinds(events) == [("started", "a", 1), ("done", "a", 1)]
    assert ledger.reported == {"a"}


def test_a_lost_write_fails_the_done_tasks_not_yet_durable():
    g = graph()
    events: list[Event] = []
    ledger = Ledger(g, events.append, DeferringSink(), Clock())
    ledger.started([g.tasks["a"]], 100.0)
    ledger.done("a", 1, 101.0)
    ledger.durable([("a", 101.0)])
    ledger.started([g.tasks["b"]], 102.0)
    ledger.done("b", 2, 103.0)
    error = ag.StoreError("disk full")
    ledger.lost(error)
    assert kinds(events)[-1] == ("failed", "b", 1)
    assert events[-1].error is error
    assert [e.task for e in events if e.kind is K.FAILED] == ["b"]


def test_a_result_the_sink_refuses_is_not_recorded():
    g = graph()
    ledger = Ledger(g, None, DeferringSink(refuse=["a"]), Clock())
    ledger.started([g.tasks["a"]], 100.0)
    assert not ledger.done("a", object(), 101.0)
    assert ledger.records["a"].status is ag.State.PENDING
    assert isinstance(ledger.refused("a"), ag.UnstorableResultError)


def test_skipped_from_the_start_are_written_once_the_sink_is_open():
    g = graph()
    sink = DeferringSink()
    ledger = Ledger(g, None, sink, Clock())
    ledger.skip(["b", "c"])
    assert sink.rows == []
    ledger.write_skipped(["b", "c"])
    assert sink.rows == [("b", "skipped"), ("c", "skipped")]
    # Without a store, nothing is written (and nothing asks whether there is one).
    plain = Ledger(graph(), None, NullSink(), Clock())
    plain.skip(["b"])
    plain.write_skipped(["b"])
    assert plain.records["b"].status is ag.State.SKIPPED


def test_snapshot_is_the_graph_so_far_with_the_sinks_origin():
    g = graph()
    ledger = Ledger(g, None, DeferringSink(), Clock())
    ledger.started([g.tasks["a"]], 100.0)
    ledger.done("a", 1, 101.0)
    snap = ledger.snapshot()
    assert snap.status == {"a": ag.State.DONE, "b": ag.State.PENDING, "c": ag.State.PENDING}
    assert snap._origin == "the-store"
    assert Ledger(graph(), None, NullSink(), Clock()).snapshot()._origin is None
