"""A ProcessBackend shared by several runs (issue 12): calls that wait for a worker are
served by their task's ``priority`` across runs, in turns between runs at equal
priority, each run's calls in its own order; one run's cancellation leaves the others'
calls alone.

    run A ─┐                      _Slots (on the pool's loop)
    run B ─┼─ PoolClient.call ──>   waiting: {run: heap of (-priority, seq)}
    run C ─┘                        next = best priority, then the run served longest ago

Order is observed through what the workers do (a side file each task appends to, one
worker) and the pool's own queue, never through time.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import asyncgraph as ag
from asyncgraph._executors.shared import _Slots

GUARD = 60  # seconds: a guard against a hang, not a bound


# -- the queue itself -------------------------------------------------------------------


async def _order(slots: _Slots, calls: list[tuple[str, int, object]]) -> list[str]:
    """Hold the only worker, queue ``calls`` (name, priority, run), then let go: the
    order in which they get it."""
    got: list[str] = []
    await slots.acquire(0, "holder")

    async def one(name: str, priority: int, owner: object) -> None:
        await slots.acquire(priority, owner)
        got.append(name)
        slots.release(owner)

    tasks = []
    for name, priority, owner in calls:
        tasks.append(asyncio.ensure_future(one(name, priority, owner)))
        await asyncio.sleep(0)  # queued in this order
    assert len(slots) == len(calls)
    slots.release("holder")
    await asyncio.gather(*tasks)
    return got


async def test_a_higher_priority_call_of_another_run_goes_first() -> None:
    got = await _order(_Slots(1), [("a1", 0, "A"), ("a2", 0, "A"), ("b", 5, "B"), ("c", 1, "C")])
    assert got == ["b", "c", "a1", "a2"]


async def test_runs_at_equal_priority_take_turns() -> None:
    calls = [("a1", 0, "A"), ("a2", 0, "A"), ("a3", 0, "A"), ("b1", 0, "B"), ("b2", 0, "B")]
    assert await _order(_Slots(1), calls) == ["a1", "b1", "a2", "b2", "a3"]


async def test_a_runs_own_calls_keep_its_order_and_its_priorities() -> None:
    calls = [("x", 0, "A"), ("y", 0, "A"), ("urgent", 3, "A"), ("z", 0, "A")]
    assert await _order(_Slots(1), calls) == ["urgent", "x", "y", "z"]


async def test_a_cancelled_waiting_call_leaves_the_others_in_place() -> None:
    slots = _Slots(1)
    await slots.acquire(0, "holder")
    got: list[str] = []

    async def one(name: str, owner: object) -> None:
        await slots.acquire(0, owner)
        got.append(name)
        slots.release(owner)

    a = asyncio.ensure_future(one("a", "A"))
    b = asyncio.ensure_future(one("b", "B"))
    await asyncio.sleep(0)
    a.cancel()
    await asyncio.sleep(0)
    assert len(slots) == 1
    slots.release("holder")
    await b
    assert a.cancelled() and got == ["b"]
    assert slots.free == 1 and not slots.waiting and not slots.held and not slots.turns


async def test_a_call_cancelled_as_it_is_granted_passes_the_worker_on() -> None:
    slots = _Slots(1)
    await slots.acquire(0, "holder")
    got: list[str] = []

    async def one(name: str, owner: object) -> None:
        await slots.acquire(0, owner)
        got.append(name)
        slots.release(owner)

    a = asyncio.ensure_future(one("a", "A"))
    b = asyncio.ensure_future(one("b", "B"))
    await asyncio.sleep(0)
    slots.release("holder")  # grants a ...
    a.cancel()  # ... which is cancelled before it runs again
    await asyncio.gather(a, b, return_exceptions=True)
    assert a.cancelled() and got == ["b"]
    assert slots.free == 1 and not slots.held


# -- through the public API -------------------------------------------------------------


def _block(fifo: str, log: str, name: str) -> int:
    """Wait until the test writes to ``fifo`` (no time involved), then log."""
    with open(fifo) as f:
        f.read()
    return _log(log, name)


def _log(log: str, name: str, *_: Any) -> int:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)
    return os.getpid()


async def _on_pool(pool: ag.ProcessBackend, ask: Callable[[_Slots], Any]) -> Any:
    shared = pool._shared
    assert shared.loop is not None

    async def query() -> Any:
        assert shared.slots is not None
        return ask(shared.slots)

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(query(), shared.loop))


async def _until(pool: ag.ProcessBackend, ask: Callable[[_Slots], bool]) -> None:
    """Wait until ``ask`` holds for the pool's queue, woken by each change there."""
    changed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def watch() -> None:  # on the pool's thread
        loop.call_soon_threadsafe(changed.set)

    await _on_pool(pool, lambda s: setattr(s, "watch", watch))
    try:
        while True:
            changed.clear()
            if await _on_pool(pool, ask):
                return
            await changed.wait()
    finally:
        await _on_pool(pool, lambda s: setattr(s, "watch", None))


def _release(fifo: Path) -> None:
    with open(fifo, "w") as f:
        f.write("go")


def _one(name: str, fn: Callable[..., Any], priority: int = 0) -> ag.Graph:
    g = ag.Graph()
    g.add(name, fn, kind="cpu", priority=priority)
    return g


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a FIFO holds the worker")
async def test_waiting_calls_of_several_runs_are_served_by_priority(tmp_path: Path) -> None:
    fifo, log = tmp_path / "fifo", tmp_path / "log"
    os.mkfifo(fifo)
    async with ag.ProcessBackend(workers=1) as pool:

        async def body() -> None:
            runs = [
                asyncio.ensure_future(
                    ag.run(
                        _one("block", functools.partial(_block, str(fifo), str(log), "block")),
                        backend=pool,
                    )
                )
            ]
            await _until(pool, lambda s: s.free == 0)  # the blocker has the worker
            order = [("low1", 0), ("low2", 0), ("high", 7), ("mid", 2)]
            for i, (name, priority) in enumerate(order):
                fn = functools.partial(_log, str(log), name)
                runs.append(asyncio.ensure_future(ag.run(_one(name, fn, priority), backend=pool)))
                await _until(pool, lambda s, n=i + 1: len(s) == n)
            await asyncio.to_thread(_release, fifo)
            results = await asyncio.gather(*runs)
            for done in results:
                assert set(done.status.values()) == {ag.State.DONE}, done.errors
            # One worker served them all, in this order:
            assert len({pid for done in results for pid in done.results.values()}) == 1
            assert log.read_text().split() == ["block", "high", "mid", "low1", "low2"]

        await asyncio.wait_for(body(), GUARD)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a FIFO holds the worker")
async def test_one_runs_cancellation_leaves_another_runs_waiting_call_alone(
    tmp_path: Path,
) -> None:
    fifo, log = tmp_path / "fifo", tmp_path / "log"
    os.mkfifo(fifo)
    async with ag.ProcessBackend(workers=1) as pool:

        async def body() -> None:
            blocker = asyncio.ensure_future(
                ag.run(
                    _one("block", functools.partial(_block, str(fifo), str(log), "block")),
                    backend=pool,
                )
            )
            await _until(pool, lambda s: s.free == 0)
            doomed = asyncio.ensure_future(
                ag.run(_one("doomed", functools.partial(_log, str(log), "doomed")), backend=pool)
            )
            await _until(pool, lambda s: len(s) == 1)
            other = asyncio.ensure_future(
                ag.run(_one("other", functools.partial(_log, str(log), "other")), backend=pool)
            )
            await _until(pool, lambda s: len(s) == 2)
            doomed.cancel()
            await _until(pool, lambda s: len(s) == 1)  # its call left the queue, only
            await asyncio.to_thread(_release, fifo)
            first, second = await blocker, await other
            with pytest.raises(asyncio.CancelledError):
                await doomed
            assert second.status["other"] is ag.State.DONE, second.errors
            # The same worker: nobody's worker was killed for a call that never ran.
            assert first.results["block"] == second.results["other"]
            assert log.read_text().split() == ["block", "other"]
            assert await _on_pool(pool, lambda s: (s.free, len(s), s.held, s.turns)) == (
                1, 0, {}, {},
            )  # fmt: skip

        await asyncio.wait_for(body(), GUARD)
