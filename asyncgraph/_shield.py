"""Waiting for something to its end, however often the waiter is cancelled meanwhile.

A run's cleanup (stopping the children, the store's last commit), taking the store's lock
and recording a run's start must each finish once begun: the caller has to know what
they did, to undo it or report it. A shielded anyio scope stops anyio's cancellations but
not a plain ``Task.cancel()``::

    task.cancel(); ...; task.cancel()   # <- the second lands during the cleanup

so the awaited thing runs as a task of its own, and the waiter waits for it in a loop,
catching each cancellation (shielded, since further cancellation attempts are not
productive, as anyio's own ``TaskGroup.__aexit__`` puts it). When it has ended:

* its own error, if it raised one, is raised (a bug in a cleanup is not to be lost, and a
  thread's error is not left for asyncio to log as "never retrieved");
* otherwise the last cancellation is raised, if there was one;
* otherwise its result is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ["in_thread_to_the_end", "shielded", "wait_to_the_end"]

_T = TypeVar("_T")

#: The module anyio loads the first time anything of its runs on asyncio (a cancel
#: scope, a thread hop): 20-30 ms of imports, once per process.
ANYIO_ON_ASYNCIO = "anyio._backends._asyncio"


def shielded() -> contextlib.AbstractContextManager[object]:
    """A scope that anyio's cancellations do not reach: ``anyio.CancelScope(shield=True)``
    once anyio runs on this process's asyncio, otherwise nothing.

    Only an anyio cancel scope re-delivers a cancellation into a shielded wait, and a
    process that has one has loaded anyio's asyncio backend (entering the scope loads
    it, before the run it encloses starts). Until then there is nothing to shield from,
    and a run that uses no anyio (no thread hop, no deadline) does not pay its import:
    20-30 ms at the end of the process's first run, which a fresh process running one
    graph (a script, a resume) paid on every start.
    """
    if ANYIO_ON_ASYNCIO in sys.modules:
        return anyio.CancelScope(shield=True)
    return contextlib.nullcontext()


async def wait_to_the_end(awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable`` to its end even if cancelled meanwhile; then re-raise.

    A future or task is waited for as it is (not cancelled: that is its owner's call). To
    wait for a task without taking its outcome, give ``asyncio.wait((task,))``.
    """
    inner = asyncio.ensure_future(awaitable)
    cancelled: asyncio.CancelledError | None = None
    with shielded():
        while not inner.done():
            try:
                await asyncio.wait((inner,))
            except asyncio.CancelledError as exc:
                cancelled = exc
    if cancelled is not None and (inner.cancelled() or inner.exception() is None):
        raise cancelled
    return inner.result()


async def in_thread_to_the_end(fn: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking call in a thread; cancelled meanwhile, wait for it, then re-raise.

    For calls whose effect the caller must know about to undo it (taking the store's
    lock, recording a run's start, the store's reads and writes): a plain
    ``Task.cancel()`` would otherwise land while the thread goes on and completes the
    call behind the caller's back.

    In a thread of the loop's default executor, in a copy of the caller's context (as
    ``anyio.to_thread.run_sync``, which loaded anyio's asyncio backend: 20-30 ms in
    every fresh process that runs on a store, the command line's every run).
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await wait_to_the_end(loop.run_in_executor(None, call))
