"""The executors of a run's own process: coroutines on the loop, plain functions in
threads. Both fill the ``"io"`` lane, so ``max_io`` caps them together.

:class:`LoopExecutor` is the run's hot path: a coroutine task's coroutine *is* the
asyncio task the run watches (one ``create_task``, no wrapper frame), unless it has a
timeout. :class:`ThreadExecutor` runs a plain function in the run's own daemon threads
(see :mod:`asyncgraph._executors.threads`); a thread cannot be stopped, so on a timeout
or a cancel the run stops waiting for it and it finishes on its own.

State it keeps
    ``LoopExecutor``    its ``clock`` (for the timeouts) and the loop, once it has one;
    ``ThreadExecutor``  its ``limiter`` (``max_io``, or None for anyio's default) and its
                        ``threads`` (started with the first plain function, closed by
                        ``aclose``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import anyio

from .._clock import SYSTEM_CLOCK, Clock
from .._task import Kind, Task
from .base import Began, with_timeout
from .threads import Threads

__all__ = ["LoopExecutor", "ThreadExecutor"]

_running_loop = asyncio.get_running_loop


class LoopExecutor:
    """Coroutine functions of kind IO, each attempt an asyncio task of the loop."""

    lane = "io"

    def __init__(self, max_io: int | None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.capacity: int | None = max_io
        self.clock = clock
        self.loop: asyncio.AbstractEventLoop | None = None

    def serves(self, kind: Kind, is_async: bool) -> bool:
        return kind is Kind.IO and is_async

    def check(self, tasks: Mapping[str, Task], pending: Iterable[str]) -> None:
        return None

    def start(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> asyncio.Future[Any]:
        loop = self.loop
        if loop is None:  # the first attempt: an executor serves one run, on one loop
            loop = self.loop = _running_loop()
        try:
            call = task.fn(*args, **kwargs)
            if task.timeout is None:
                # The hot path: a coroutine is its own child, with no wrapper frame.
                return loop.create_task(call, name=task.name)
            return loop.create_task(with_timeout(task, call, self.clock), name=task.name)
        except Exception as exc:  # noqa: BLE001 - raised before its first await
            # Reported through the run's done-callback on the next loop iteration, not
            # re-entrantly from inside the run's dispatch.
            failed = loop.create_future()
            failed.set_exception(exc)
            return failed

    async def aclose(self) -> None:
        return None


class ThreadExecutor:
    """Plain functions of kind IO, each call in one of the run's daemon threads."""

    lane = "io"

    def __init__(self, max_io: int | None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.capacity: int | None = max_io
        self.clock = clock
        # max_io caps threads too; without it, anyio's default limiter (40 threads).
        self.limiter = anyio.CapacityLimiter(max_io) if max_io else None
        self.threads: Threads | None = None  # started with the first plain function

    def serves(self, kind: Kind, is_async: bool) -> bool:
        return kind is Kind.IO and not is_async

    def check(self, tasks: Mapping[str, Task], pending: Iterable[str]) -> None:
        return None

    def start(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> asyncio.Future[Any]:
        call = self._call(task, args, kwargs)
        if task.timeout is not None:
            call = with_timeout(task, call, self.clock)
        return _running_loop().create_task(call, name=task.name)

    async def _call(self, task: Task, args: list[Any], kwargs: dict[str, Any]) -> Any:
        threads = self.threads
        if threads is None:
            threads = self.threads = Threads(self.limiter)
        result = await threads.run(functools.partial(task.fn, *args, **kwargs))
        if inspect.isawaitable(result):  # e.g. a lambda returning a coroutine
            result = await result
        return result

    async def aclose(self) -> None:
        if self.threads is not None:
            self.threads.close()
