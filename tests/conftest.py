"""Shared test setup: every async test runs on the default asyncio loop and on uvloop.

Tests marked ``long`` (the reliability suite's long trials, see docs/reliability.md) are
skipped unless pytest gets ``--long`` or the environment has ``ASYNCGRAPH_LONG=1``.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop
from dask_fixtures import forked_dask_workers  # noqa: F401 - a fixture of the Dask tests


def long_mode(config: pytest.Config) -> bool:
    return bool(config.getoption("--long")) or os.environ.get("ASYNCGRAPH_LONG") == "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="also run the long reliability trials (tests marked 'long'); "
        "ASYNCGRAPH_LONG=1 does the same",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if long_mode(config):
        return
    skip = pytest.mark.skip(reason="a long trial: run with --long or ASYNCGRAPH_LONG=1")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def long(request: pytest.FixtureRequest) -> bool:
    """Whether the suite runs in long mode (tests may scale their trials with it)."""
    return long_mode(request.config)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class Probe:
    """Records what ran, in order, and how many ran at once (an overlap probe)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.calls: dict[str, int] = {}
        self.active: set[str] = set()
        self.high_water = 0
        self.overlaps: list[frozenset[str]] = []

    def enter(self, name: str) -> None:
        self.started.append(name)
        self.calls[name] = self.calls.get(name, 0) + 1
        self.active.add(name)
        self.high_water = max(self.high_water, len(self.active))
        self.overlaps.append(frozenset(self.active))

    def leave(self, name: str) -> None:
        self.active.discard(name)


@pytest.fixture
def probe() -> Probe:
    return Probe()


def statuses(graph: Any) -> dict[str, str]:
    return {n: s.value for n, s in graph.status.items()}


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until these processes (not our children) exit; return those still alive.

    A pidfd becomes readable when its process exits, zombie or not: an event to wait on,
    where psutil would poll (and count an unreaped zombie as alive).
    """
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    try:
        waiting = set(fds)
        while waiting:
            ready, _, _ = select.select(list(waiting), [], [], timeout)
            if not ready:
                break
            waiting -= set(ready)
        return sorted(fds[fd] for fd in waiting)
    finally:
        for fd in fds:
            os.close(fd)


class DeadlineAtSignal:
    """The system clock, except that a run's deadline passes when the test says.

    A short real deadline races the machine: on a loaded 2-core machine a thread or a
    worker process may start after it. ``run_until_deadline`` lets the deadline pass
    once the events a test waits for were seen, whatever the time they took.
    """

    DEADLINE = 3600.0  # the deadline the run is given; tasks' own timeouts keep real time

    def __init__(self) -> None:
        from asyncgraph._clock import SYSTEM_CLOCK

        self.passed = asyncio.Event()
        self.time = SYSTEM_CLOCK.time
        self.call_later = SYSTEM_CLOCK.call_later
        self._system = SYSTEM_CLOCK
        self._waiters: list[asyncio.Task[None]] = []

    def move_on_after(self, delay: float | None) -> Any:
        import anyio

        if delay != self.DEADLINE:
            return self._system.move_on_after(delay)
        scope = anyio.CancelScope()
        self._waiters.append(asyncio.get_running_loop().create_task(self._cancel(scope)))
        return scope

    async def _cancel(self, scope: Any) -> None:
        await self.passed.wait()
        scope.cancel()


async def run_until_deadline(graph: Any, awaited: set[tuple[str, str]], **options: Any) -> Any:
    """``ag.run(graph, deadline=..., **options)`` whose deadline passes as soon as every
    ``(event kind, task)`` in ``awaited`` has been seen (the run's own path, with a
    clock that waits for those events instead of wall time)."""
    from asyncgraph._lifetime import start
    from asyncgraph._options import RunOptions

    clock = DeadlineAtSignal()
    awaited = set(awaited)
    user = options.pop("on_event", None)

    def on_event(event: Any) -> None:
        awaited.discard((event.kind.value, event.task))
        if not awaited:
            clock.passed.set()
        if user is not None:
            user(event)

    try:
        return await start(
            graph, RunOptions(deadline=clock.DEADLINE, on_event=on_event, clock=clock, **options)
        )
    finally:
        for waiter in clock._waiters:
            waiter.cancel()
