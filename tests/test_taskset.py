"""The run's task set on its own: children, timers, the finished future, stop()."""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest

from asyncgraph._taskset import TaskSet

GUARD = 30  # seconds: a hang guard only, never an assertion


async def test_stop_cancels_every_child_and_timer_and_waits_for_them():
    ts = TaskSet(cancel_grace=60)
    ended: list[str] = []
    entered = asyncio.Event()

    async def child(name: str) -> None:
        try:
            entered.set()
            await anyio.sleep_forever()
        finally:
            ended.append(name)

    for name in ("x", "y"):
        ts.running[asyncio.ensure_future(child(name))] = name
    fired: list[str] = []
    ts.timers["z"] = asyncio.get_running_loop().call_later(3600, fired.append, "z")
    await entered.wait()
    with anyio.fail_after(GUARD):
        await ts.stop()
    assert sorted(ended) == ["x", "y"]  # each ended before stop() returned
    assert ts.stopping and not ts.timers and not ts.abandoned
    assert all(child.cancelled() for child in ts.running)


async def test_a_child_that_will_not_end_is_abandoned_after_the_grace(caplog):
    ts = TaskSet(cancel_grace=0.05)
    release = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await release.wait()
                return
            except asyncio.CancelledError:
                continue  # swallows every cancellation

    child = asyncio.ensure_future(stubborn())
    ts.running[child] = "stubborn"
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="asyncgraph"):
        with anyio.fail_after(GUARD):
            await ts.stop()
    assert ts.abandoned == {"stubborn"}
    assert "did not end within cancel_grace=0.05s" in caplog.text
    release.set()
    await child


async def test_stop_with_nothing_running_returns_at_once():
    ts = TaskSet(cancel_grace=5)
    await ts.stop()
    assert ts.stopping


async def test_finished_resolves_once():
    ts = TaskSet(cancel_grace=5)
    ts.end()  # before open(): nobody waits yet, nothing to resolve
    ts.open()
    ts.end()
    ts.end(RuntimeError("late"))  # ignored: it is over already
    await ts.wait()
    ts2 = TaskSet(cancel_grace=5)
    ts2.open()
    ts2.end(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        await ts2.wait()


async def test_a_stop_while_the_caller_is_cancelled_still_waits_for_the_children():
    r"""
    The run is cancelled from outside while it stops its children:
        task.cancel(); ...; task.cancel()   # <- the second lands in stop()
    stop() is shielded: the children end before the cancellation goes on.
    """
    ts = TaskSet(cancel_grace=60)
    gate = asyncio.Event()
    ended: list[str] = []

    async def slow_to_end() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await gate.wait()
            ended.append("slow")

    ts.running[asyncio.ensure_future(slow_to_end())] = "slow"
    await asyncio.sleep(0)

    async def stopper() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()  # an anyio cancellation: the shield in stop() holds it
            await ts.stop()

    stopping = asyncio.ensure_future(stopper())
    await asyncio.sleep(0)
    assert not stopping.done()
    gate.set()
    with anyio.fail_after(GUARD):
        await stopping
    assert ended == ["slow"]
