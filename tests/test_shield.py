"""``_shield``: the one "wait to the end however often cancelled" helper.

Each test drives the waiter with events and plain ``Task.cancel()`` calls (what asyncio
and run_sync's signal handler do), never with wall time.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import anyio
import pytest

from asyncgraph._shield import in_thread_to_the_end, wait_to_the_end


class Cleanup:
    """A cleanup that goes on until told to finish; it records that it ran to its end."""

    def __init__(self, error: BaseException | None = None, value: Any = None) -> None:
        self.began = asyncio.Event()
        self.go_on = asyncio.Event()
        self.ended = False
        self.error = error
        self.value = value

    async def __call__(self) -> Any:
        self.began.set()
        await self.go_on.wait()
        self.ended = True
        if self.error is not None:
            raise self.error
        return self.value


async def test_not_cancelled_it_returns_the_result() -> None:
    cleanup = Cleanup(value=42)
    cleanup.go_on.set()
    assert await wait_to_the_end(cleanup()) == 42
    assert cleanup.ended


async def test_cancelled_once_it_waits_for_the_end_then_re_raises() -> None:
    cleanup = Cleanup(value=1)
    waiter = asyncio.create_task(wait_to_the_end(cleanup()))
    await cleanup.began.wait()
    waiter.cancel("once")
    await asyncio.sleep(0)  # the cancellation lands; the cleanup goes on
    assert not waiter.done() and not cleanup.ended
    cleanup.go_on.set()
    with pytest.raises(asyncio.CancelledError) as caught:
        await waiter
    assert cleanup.ended
    assert caught.value.args == ("once",)


async def test_cancelled_twice_the_last_cancellation_is_raised() -> None:
    cleanup = Cleanup()
    waiter = asyncio.create_task(wait_to_the_end(cleanup()))
    await cleanup.began.wait()
    waiter.cancel("first")
    await asyncio.sleep(0)
    waiter.cancel("second")  # lands while the cleanup still runs
    await asyncio.sleep(0)
    assert not waiter.done()
    cleanup.go_on.set()
    with pytest.raises(asyncio.CancelledError) as caught:
        await waiter
    assert cleanup.ended
    assert caught.value.args == ("second",)


async def test_cancelled_before_the_cleanup_began_it_still_runs_to_its_end() -> None:
    cleanup = Cleanup()
    cleanup.go_on.set()
    waiter = asyncio.create_task(wait_to_the_end(cleanup()))
    await asyncio.sleep(0)  # the waiter has started and handed the cleanup to a task
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert cleanup.ended


async def test_the_cleanups_own_error_is_not_lost_even_when_cancelled() -> None:
    cleanup = Cleanup(error=OSError("disk full"))
    waiter = asyncio.create_task(wait_to_the_end(cleanup()))
    await cleanup.began.wait()
    waiter.cancel()
    await asyncio.sleep(0)
    cleanup.go_on.set()
    with pytest.raises(OSError, match="disk full"):
        await waiter


async def test_the_cleanups_own_error_uncancelled() -> None:
    cleanup = Cleanup(error=KeyError("bug"))
    cleanup.go_on.set()
    with pytest.raises(KeyError, match="bug"):
        await wait_to_the_end(cleanup())


async def test_an_anyio_cancel_scope_does_not_stop_the_cleanup() -> None:
    cleanup = Cleanup()

    async def cancel_when_it_began(scope: anyio.CancelScope) -> None:
        await cleanup.began.wait()
        scope.cancel()
        await asyncio.sleep(0)
        cleanup.go_on.set()

    with anyio.CancelScope() as scope:
        helper = asyncio.create_task(cancel_when_it_began(scope))
        await wait_to_the_end(cleanup())
    await helper
    assert cleanup.ended


async def test_a_task_is_waited_for_as_it_is_and_not_cancelled() -> None:
    cleanup = Cleanup(value="kept")
    task = asyncio.create_task(cleanup())
    waiter = asyncio.create_task(wait_to_the_end(task))
    await cleanup.began.wait()
    waiter.cancel()
    await asyncio.sleep(0)
    assert not task.cancelled()
    cleanup.go_on.set()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert task.result() == "kept"


async def test_waiting_out_a_cancelled_task_without_taking_its_outcome() -> None:
    """``asyncio.wait((task,))``: how an open run waits out the run it cancelled."""
    cleanup = Cleanup()
    task = asyncio.create_task(cleanup())
    await cleanup.began.wait()
    task.cancel()
    await wait_to_the_end(asyncio.wait((task,)))  # returns: the task's cancellation is not ours
    assert task.cancelled()


async def test_in_a_thread_cancelled_meanwhile_the_call_completes_first() -> None:
    release = threading.Event()
    entered = threading.Event()
    effects: list[str] = []

    def take() -> str:
        entered.set()
        release.wait()
        effects.append("taken")
        return "lock"

    waiter = asyncio.create_task(in_thread_to_the_end(take))
    await anyio.to_thread.run_sync(entered.wait)
    waiter.cancel()
    waiter.cancel()
    await asyncio.sleep(0)
    assert not waiter.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert effects == ["taken"]  # the caller knows to undo it


async def test_in_a_thread_the_result_and_the_error() -> None:
    assert await in_thread_to_the_end(lambda: 7) == 7

    def fails() -> None:
        raise ValueError("in the thread")

    with pytest.raises(ValueError, match="in the thread"):
        await in_thread_to_the_end(fails)
