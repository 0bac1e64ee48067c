"""Events: one per transition, in the order the transitions happened."""

from __future__ import annotations

import asyncgraph as ag
from asyncgraph._events import Event, EventKind
from asyncgraph._runner import _Run


async def test_event_order_of_a_small_graph_with_a_retry_and_a_failure() -> None:
    g = ag.Graph()

    @g.task
    async def a() -> int:
        return 1

    @g.task(retries=1, retry_delay=0.001)
    async def b(a: int) -> int:
        raise ValueError("boom")

    @g.task
    async def c(b: int) -> int:
        return 2

    events: list[Event] = []
    the_run = _Run(
        g,
        max_io=None,
        cpu_workers=1,
        limits={},
        fail_fast=False,
        deadline=None,
        emit=events.append,
    )
    await the_run.run()
    seen = [(e.kind, e.task, e.attempt) for e in events]
    assert seen == [
        (EventKind.QUEUED, "a", 0),
        (EventKind.QUEUED, "b", 0),
        (EventKind.QUEUED, "c", 0),
        (EventKind.STARTED, "a", 1),
        (EventKind.DONE, "a", 1),
        (EventKind.STARTED, "b", 1),
        (EventKind.RETRYING, "b", 1),
        (EventKind.STARTED, "b", 2),
        (EventKind.FAILED, "b", 2),
        (EventKind.SKIPPED, "c", 0),
    ]
    assert isinstance(events[6].error, ValueError)
    assert isinstance(events[8].error, ValueError)
    times = [e.time for e in events]
    assert times == sorted(times)
