"""The executors of a run's own process: coroutines on the loop, plain functions in
threads. Both fill the ``"io"`` lane, so ``max_io`` caps them together.
:class:`CallingThreadExecutor` calls plain functions on the loop's own thread instead
(``InlineBackend``).

:class:`LoopExecutor` is the run's hot path: a coroutine task's coroutine *is* the
asyncio task the run watches (one ``create_task``, no wrapper frame), unless it has a
timeout. :class:`ThreadExecutor` runs a plain function in the run's own daemon threads
(see :mod:`asyncgraph._executors.threads`); a thread cannot be stopped, so on a timeout
or a cancel the run stops waiting for it and it finishes on its own.

State it keeps
    ``LoopExecutor``    its ``clock`` (for the timeouts) and the loop, once it has one;
    ``ThreadExecutor``  its ``limiter`` (``max_io``, or None for anyio's default) and its
                        ``threads`` (started with the first plain function, closed by
                        ``aclose``);
    ``CallingThreadExecutor``  its lane, kinds, capacity and clock: nothing that changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import anyio

from .._clock import SYSTEM_CLOCK, Clock
from .._task import Kind, Task
from .base import Began, with_timeout
from .threads import Threads

__all__ = ["CallingThreadExecutor", "LoopExecutor", "ThreadExecutor"]

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


class CallingThreadExecutor:
    """Plain functions of the kinds it serves, each called on the loop's thread inside
    :meth:`start` (so one at a time, in the scheduler's order, and ``pdb`` works);
    with ``coroutines``, also their coroutine functions, each a task of the loop.

    A plain function cannot be interrupted here: past its ``timeout`` it still runs to
    its end, and then fails with TimeoutError saying so (its result is dropped), as it
    would have failed elsewhere. The loop waits while it runs, so a deadline or a
    cancellation takes effect once it has returned; Ctrl-C on the main thread raises
    KeyboardInterrupt in it, as in a plain script, and the run ends with that.
    """

    def __init__(
        self,
        lane: str,
        kinds: frozenset[Kind],
        *,
        coroutines: bool,
        capacity: int | None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.lane = lane
        self.kinds = kinds
        self.coroutines = coroutines
        self.capacity = capacity
        self.clock = clock

    def serves(self, kind: Kind, is_async: bool) -> bool:
        return kind in self.kinds and (self.coroutines or not is_async)

    def check(self, tasks: Mapping[str, Task], pending: Iterable[str]) -> None:
        return None

    def start(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> asyncio.Future[Any]:
        loop = _running_loop()
        if task.is_async:
            try:
                call = task.fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - raised before its first await
                failed = loop.create_future()
                failed.set_exception(exc)
                return failed
            if task.timeout is not None:
                call = with_timeout(task, call, self.clock)
            return loop.create_task(call, name=task.name)
        future = loop.create_future()
        now = self.clock.time
        begin = now()
        began(task.name, begin)
        try:
            with _interruptible():
                result = task.fn(*args, **kwargs)
        except StopIteration as exc:  # a future refuses it (TypeError)
            future.set_exception(RuntimeError(f"the function raised StopIteration: {exc}"))
            return future
        except BaseException as exc:  # noqa: BLE001 - the attempt's outcome, reported
            future.set_exception(exc)
            return future
        if inspect.isawaitable(result):  # e.g. a lambda returning a coroutine
            waiting = _awaited(result)
            if task.timeout is not None:
                waiting = with_timeout(task, waiting, self.clock)
            return loop.create_task(waiting, name=task.name)
        took = now() - begin
        if task.timeout is not None and took > task.timeout:
            future.set_exception(
                TimeoutError(
                    f"task {task.name!r} ran {took:.3g}s, past its timeout={task.timeout}s: "
                    "a plain function on the calling thread (InlineBackend) cannot be "
                    "interrupted, so it ran to its end; its result is dropped"
                )
            )
        else:
            future.set_result(result)
        return future

    async def aclose(self) -> None:
        return None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt in the plain function running on the main thread,
    as in any script, instead of waiting for it to return (the run's own handler, or
    asyncio's, acts only once the loop runs again); the run then ends with it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # a handler set outside Python: left alone
        yield
        return
    try:
        signal.signal(signal.SIGINT, _interrupt)
    except ValueError:  # an embedded interpreter without signals
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
