"""The threads that run a run's plain functions: daemon threads, owned by the run.

Why not ``anyio.to_thread.run_sync``? Its worker threads inherit the daemon flag of the
thread that starts them, so under ``run_sync`` in a script (the loop in the main thread)
they are *not* daemon threads, and a thread the run abandoned (a timeout, the deadline,
a cancel) keeps the process alive after ``run_sync`` returned: ``threading._shutdown``
joins every non-daemon thread before the interpreter exits::

    g.add("slow", lambda: time.sleep(3600), timeout=1)
    ag.run_sync(g)   # returns after 1 s: 'slow' failed with TimeoutError
    # <- end of the script: the process still waits for the sleep to end

Here they are daemon threads, so the process exits when the program is done, and an
abandoned thread is stopped where it is, as a killed process would be. A thread the run
did not abandon has ended before the run returns, so nothing else changes.

A thread runs one call at a time and reports it to the loop with
``call_soon_threadsafe``; idle threads are reused within the run and told to stop when it
ends. The caller holds the limiter token (anyio's default thread limiter of 40, or the
run's ``max_io`` one) for the time it waits, as ``anyio.to_thread.run_sync`` does with
``abandon_on_cancel=True``: a cancelled wait gives its token back at once.

State it keeps (``Threads``, one per run)
    ``limiter``  the token pool a call holds while it waits (None: anyio's default);
    ``loop``     the run's loop, which the threads report to;
    ``idle``     the threads waiting for their next call;
    ``closed``   set when the run ends: idle threads stop, busy ones stop after their call.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

import anyio

__all__ = ["Threads"]

_Call = tuple[Callable[[], Any], "asyncio.Future[Any]", contextvars.Context]


class _Thread(threading.Thread):
    def __init__(self, pool: Threads) -> None:
        super().__init__(name="asyncgraph task thread", daemon=True)
        self.pool = pool
        self.calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()

    def run(self) -> None:
        loop = self.pool.loop
        while (call := self.calls.get()) is not None:
            fn, future, context = call
            result = error = None
            if not future.cancelled():  # cancelled before it started: skip it
                try:
                    result = context.run(fn)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting task
                    error = exc
            try:
                loop.call_soon_threadsafe(self.pool._report, self, future, result, error)
            except RuntimeError:  # the loop is closed: the run is long over
                return
            del call, fn, future, context, result, error


class Threads:
    """Daemon threads for one run's plain functions (see the module's docstring)."""

    def __init__(self, limiter: anyio.CapacityLimiter | None) -> None:
        self.limiter = limiter
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Thread] = []
        self.closed = False

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` in a thread and wait for it; cancelled, stop waiting (abandon it)."""
        limiter = self.limiter or anyio.to_thread.current_default_thread_limiter()
        async with limiter:
            future: asyncio.Future[Any] = self.loop.create_future()
            if self.idle:
                thread = self.idle.pop()
            else:
                thread = _Thread(self)
                thread.start()
            thread.calls.put((fn, future, contextvars.copy_context()))
            return await future

    def _report(
        self, thread: _Thread, future: asyncio.Future[Any], result: Any, error: Any
    ) -> None:
        if not future.done():  # not cancelled meanwhile (abandoned)
            if error is None:
                future.set_result(result)
            elif isinstance(error, StopIteration):  # a future refuses it (TypeError)
                wrapped = RuntimeError(f"the function raised StopIteration: {error}")
                wrapped.__cause__ = error
                future.set_exception(wrapped)
            else:
                future.set_exception(error)
        if self.closed:
            thread.calls.put(None)
        else:
            self.idle.append(thread)

    def close(self) -> None:
        """Stop the idle threads; a busy (abandoned) one stops after its call."""
        self.closed = True
        for thread in self.idle:
            thread.calls.put(None)
        self.idle.clear()
