"""A CPU task's timeout counts from the moment its worker began the attempt.

A worker's start, its imports and a wait for a free worker of a shared pool are not the
task's time: on a loaded machine a pool that started slowly used to time tasks out
before they ran (a one-second timeout failed a task whose worker was still booting).
On a user's executor, which says when a call began only with its result, the timeout
counts from the submission. The clock here is advanced by hand (tests/test_clock.py's
FakeClock): nothing waits for wall time.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import anyio
import pytest
from test_clock import FakeClock

import asyncgraph as ag
from asyncgraph._executors.futures import ShippedExecutor
from asyncgraph._executors.process import ProcessExecutor

GUARD = 30  # seconds: a hang guard only


class HeldPool:
    """A pool whose worker begins the call when the test says, and ends it when told."""

    def __init__(self) -> None:
        self.begin = asyncio.Event()
        self.end = asyncio.Event()
        self.called = asyncio.Event()

    async def call(self, task: str, fn: bytes, args: Any, on_start: Any = None) -> bytes:
        self.called.set()
        await self.begin.wait()
        if on_start is not None:
            on_start(123.0)
        await self.end.wait()
        return pickle.dumps("value")

    async def aclose(self) -> None:
        return None


def task(timeout: float) -> ag.Task:
    g = ag.Graph()
    g.add("t", lambda: 1, kind="cpu", timeout=timeout)
    return g.tasks["t"]


async def started(cls: type[ProcessExecutor], clock: FakeClock) -> tuple[Any, HeldPool, list]:
    ex = cls.__new__(cls)
    ProcessExecutor.__init__(ex, 1, clock)
    pool = HeldPool()
    ex.pool = pool
    ex.fn_bytes["t"] = b"fn"
    began: list[tuple[str, float]] = []
    fut = ex.start(task(10.0), [], {}, lambda n, w: began.append((n, w)))
    await pool.called.wait()
    return fut, pool, began


async def test_the_time_before_the_worker_begins_is_not_counted() -> None:
    clock = FakeClock()
    with anyio.fail_after(GUARD):
        fut, pool, began = await started(ProcessExecutor, clock)
        clock.advance(3600)  # the worker is still starting: no timer runs yet
        await asyncio.sleep(0)
        assert not fut.done()
        pool.begin.set()
        while not began:  # noqa: ASYNC110 - one or two turns of the loop
            await asyncio.sleep(0)
        assert began == [("t", 123.0)]
        clock.advance(9.9)
        await asyncio.sleep(0)
        assert not fut.done()
        clock.advance(0.1)  # ten seconds after the worker began
        with pytest.raises(TimeoutError, match="timeout=10.0s"):
            await fut


async def test_a_call_that_ends_in_time_returns_and_leaves_no_timer() -> None:
    clock = FakeClock()
    with anyio.fail_after(GUARD):
        fut, pool, _began = await started(ProcessExecutor, clock)
        pool.begin.set()
        pool.end.set()
        assert await fut == "value"
    assert all(handle.cancelled for _, _, handle in clock._timers)


async def test_on_a_users_executor_the_timeout_counts_from_the_submission() -> None:
    clock = FakeClock()
    with anyio.fail_after(GUARD):
        fut, _pool, _began = await started(ShippedExecutor, clock)
        clock.advance(10)  # the executor has not said it began: the clock runs anyway
        with pytest.raises(TimeoutError):
            await fut
