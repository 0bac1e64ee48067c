"""A run on a clock the test advances by hand: timeouts, deadlines and retry backoffs
happen exactly when the test says, and no test here waits for wall time.

Each time limit below is an hour or a minute: on the real clock these tests would hang
(GUARD stops them), so passing proves the run took its time from the fake clock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

import anyio

import asyncgraph as ag
from asyncgraph._clock import backoff as _backoff
from asyncgraph._events import Event, EventKind
from asyncgraph._executors import InlineExecutor
from asyncgraph._options import RunOptions
from asyncgraph._runner import _Run

GUARD = 30  # seconds: a hang guard only, never an assertion


class FakeClock:
    """trio's MockClock, for a run: time moves only when ``advance`` says."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Handle:
        handle = _Handle(callback, args)
        heapq.heappush(self._timers, (self.now + delay, next(self._seq), handle))
        return handle

    def move_on_after(self, delay: float | None) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        if delay is not None:
            self.call_later(delay, scope.cancel)
        return scope

    def advance(self, seconds: float) -> None:
        """Move time on, firing every timer that falls due, in order."""
        self.now += seconds
        while self._timers and self._timers[0][0] <= self.now:
            _, _, handle = heapq.heappop(self._timers)
            handle.fire()


class _Handle:
    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.callback, self.args, self.cancelled = callback, args, False

    def cancel(self) -> None:
        self.cancelled = True

    def fire(self) -> None:
        if not self.cancelled:
            self.callback(*self.args)


class Events:
    """The run's events, and a way to wait for one (an asyncio.Event, no polling)."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.waiting: dict[tuple[EventKind, str], asyncio.Event] = {}

    def __call__(self, event: Event) -> None:
        self.seen.append(event)
        key = (event.kind, event.task)
        if key in self.waiting:
            self.waiting[key].set()

    async def wait(self, kind: EventKind, task: str) -> None:
        if any(e.kind is kind and e.task == task for e in self.seen):
            return
        await self.waiting.setdefault((kind, task), asyncio.Event()).wait()


def make_run(g: ag.Graph, clock: FakeClock, events: Events, **options: Any) -> _Run:
    defaults: dict[str, Any] = {
        "max_io": None,
        "cpu_workers": 1,
        "limits": {},
        "fail_fast": False,
        "deadline": None,
    }
    executors = options.pop("executors", None)
    defaults.update(options)
    return _Run(g, RunOptions(clock=clock, **defaults), emit=events, executors=executors)


async def test_a_timeout_fires_when_the_clock_passes_it():
    g = ag.Graph()
    entered = asyncio.Event()

    @g.task(timeout=3600)
    async def stuck() -> None:
        entered.set()
        await anyio.sleep_forever()

    clock, events = FakeClock(), Events()
    the_run = make_run(g, clock, events)
    with anyio.fail_after(GUARD):
        running = asyncio.ensure_future(the_run.run())
        await entered.wait()
        clock.advance(3599)
        await asyncio.sleep(0)  # one turn of the loop: nothing is due yet
        assert not running.done()
        clock.advance(1)
        out = await running
    assert out.status["stuck"] is ag.State.FAILED
    assert isinstance(out.errors["stuck"], TimeoutError)
    assert out.records["stuck"].finished == clock.now  # the record's time is the clock's


async def test_a_timeout_on_the_inline_executor_too():
    g = ag.Graph()
    entered = asyncio.Event()

    @g.task(timeout=60)
    async def stuck() -> None:
        entered.set()
        await anyio.sleep_forever()

    clock, events = FakeClock(), Events()
    executor = InlineExecutor(clock=clock)
    the_run = make_run(g, clock, events, executors=[executor])
    with anyio.fail_after(GUARD):
        running = asyncio.ensure_future(the_run.run())
        await entered.wait()
        clock.advance(60)
        out = await running
    assert isinstance(out.errors["stuck"], TimeoutError)


async def test_the_deadline_cancels_what_is_left_when_the_clock_passes_it():
    g = ag.Graph()
    entered = asyncio.Event()

    @g.task
    async def slow() -> None:
        entered.set()
        await anyio.sleep_forever()

    g.add("after", lambda slow: slow)
    clock, events = FakeClock(), Events()
    the_run = make_run(g, clock, events, deadline=3600)
    with anyio.fail_after(GUARD):
        running = asyncio.ensure_future(the_run.run())
        await entered.wait()
        clock.advance(3600)
        out = await running
    assert out.status == {"slow": ag.State.CANCELLED, "after": ag.State.CANCELLED}
    assert "deadline of 3600s passed" in str(out.errors["slow"])


async def test_a_retry_waits_exactly_its_jittered_backoff_on_the_clock():
    r"""
    flaky fails once (retry_delay=60), then succeeds. The run's random source is seeded,
    so the backoff is known to the microsecond: a hair before it, nothing; at it, the
    second attempt starts.
    """
    g = ag.Graph()
    calls: list[float] = []
    clock = FakeClock()

    def flaky() -> str:
        calls.append(clock.now)
        if len(calls) == 1:
            raise ValueError("once")
        return "ok"

    task = g.add("flaky", flaky, retries=1, retry_delay=60)
    expected = _backoff(task, 1, random.Random(7).uniform)
    events = Events()
    the_run = make_run(g, clock, events, executors=[InlineExecutor()], rng=random.Random(7))
    with anyio.fail_after(GUARD):
        running = asyncio.ensure_future(the_run.run())
        await events.wait(EventKind.RETRYING, "flaky")
        clock.advance(expected - 1e-6)
        await asyncio.sleep(0)
        assert len(calls) == 1  # still waiting out its backoff
        clock.advance(1e-6)
        out = await running
    assert calls == [1_000_000.0, 1_000_000.0 + expected]
    assert out.results["flaky"] == "ok"
    assert out.records["flaky"].attempts == 2
    assert 30 <= expected <= 90  # 60 s, jittered by 0.5-1.5


async def test_a_cancelled_backoff_timer_does_not_fire_after_the_run():
    g = ag.Graph()
    g.add("never", lambda: 1 / 0, retries=5, retry_delay=60)
    clock, events = FakeClock(), Events()
    the_run = make_run(g, clock, events, executors=[InlineExecutor()], deadline=10)
    with anyio.fail_after(GUARD):
        running = asyncio.ensure_future(the_run.run())
        await events.wait(EventKind.RETRYING, "never")
        clock.advance(10)  # the deadline, before the backoff (at least 30 s)
        out = await running
        clock.advance(3600)  # the backoff's timer was cancelled with the run
    rec = out.records["never"]
    assert rec.status is ag.State.CANCELLED
    assert "waiting to retry after ZeroDivisionError" in str(rec.error)
    assert [e.kind for e in events.seen].count(EventKind.STARTED) == 1
