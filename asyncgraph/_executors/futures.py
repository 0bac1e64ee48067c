"""CPU tasks on an executor the user gives: any :class:`concurrent.futures.Executor`.

Two ways, by the kind of executor:

* **Shipped** (a process pool, loky, ``MPIPoolExecutor``: anything but a thread pool):
  :class:`ShippedExecutor` pickles each function once before the run (cloudpickle, with
  :class:`~asyncgraph._executors.process.ProcessExecutor`'s check, so lambdas and
  notebook functions travel and a function that cannot is refused before anything
  runs), and submits a callable that the executor's own pickling sends by reference to
  ``cloudpickle.loads`` alone: unpickled in the worker, it is the worker script's
  ``serve_call`` (:mod:`asyncgraph._executors._worker`, sent *by value*), so the
  executor's workers need cloudpickle but not asyncgraph. Results come back as the
  bytes the worker made, unpickled once on this side and handed to the store as they
  are, as from asyncgraph's own pool.
* **In threads** (a :class:`~concurrent.futures.ThreadPoolExecutor`):
  :class:`ThreadedExecutor` calls the function in the executor's thread, with nothing
  pickled (an ``async def`` runs under ``asyncio.run`` there).

What an executor cannot do, and what the run does about it. A future that has started
cannot be stopped (``Future.cancel()`` only stops a queued call): on a timeout, the
deadline, ``fail_fast`` or a cancellation, the run stops waiting at once, records the
task as it does for a thread (timed out, cancelled) and leaves the call to finish in the
executor, whose result is dropped. A stdlib ``ProcessPoolExecutor`` whose worker dies is
*broken*: every call in flight and every later one raises ``BrokenProcessPool``, which the
task gets as :class:`~asyncgraph.WorkerDiedError`; asyncgraph never shuts down nor
replaces an executor it was given, so the rest of that run's CPU tasks fail the same way
(loky's executor replaces its workers itself).

State it keeps
    ``ShippedExecutor``   ProcessExecutor's (``fn_bytes``, ``threads``, ``pickled``) and
                          ``executor``; its ``pool`` is an :class:`ExecutorClient`;
    ``ThreadedExecutor``  ``executor``, ``capacity``, ``clock``: nothing that changes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import cloudpickle

from .._clock import SYSTEM_CLOCK, Clock
from .._exceptions import WorkerDiedError
from .._task import Kind, Task
from . import _worker
from .base import Began, with_timeout
from .process import Mapped, ProcessExecutor, outcome, pickled_args

__all__ = ["ExecutorClient", "ShippedExecutor", "ThreadedExecutor", "broken", "refused"]

_SHIM: bytes | None = None  # _worker.serve_call, pickled by value once


def _shim() -> bytes:
    global _SHIM
    if _SHIM is None:
        cloudpickle.register_pickle_by_value(_worker)
        try:
            _SHIM = cloudpickle.dumps(_worker.serve_call)
        finally:
            cloudpickle.unregister_pickle_by_value(_worker)
    return _SHIM


class _Shipped:
    """What is submitted: pickled by any pickler as ``cloudpickle.loads(<serve_call by
    value>)``, so the worker rebuilds the worker script's function, not this class."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (cloudpickle.loads, (_shim(),))

    def __call__(self, fn_bytes: bytes, args_bytes: bytes) -> tuple[float, Any]:
        return _worker.serve_call(fn_bytes, args_bytes)  # a thread-like executor


_SHIPPED = _Shipped()


def broken(task: str, exc: BaseException) -> WorkerDiedError:
    """The error of a task whose executor lost a worker (``BrokenProcessPool``)."""
    died = WorkerDiedError(task, None)
    died.args = (
        f"the worker process running task {task!r} died, or an earlier death broke the "
        f"executor given to ExecutorBackend ({type(exc).__name__}: {exc}); asyncgraph does "
        "not replace an executor it was given: make a new one (or use ProcessBackend, whose "
        "pool replaces a dead worker)",
    )
    return died


def refused(task: str, exc: RuntimeError) -> RuntimeError:
    """The error of a task whose executor refuses new calls (it was shut down)."""
    return RuntimeError(
        f"task {task!r}: the executor given to ExecutorBackend refused it ({exc}); it was "
        "shut down: keep it open while runs use it"
    )


class ExecutorClient:
    """A :class:`ShippedExecutor`'s pool: attempts submitted to the user's executor."""

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self.executor = executor

    async def call(
        self,
        task: str,
        fn_bytes: bytes,
        args: tuple[Any, ...],
        on_start: Callable[[float], None] | None = None,
    ) -> bytes:
        data = pickled_args(task, args)
        try:
            future = self.executor.submit(_SHIPPED, fn_bytes, data)
        except concurrent.futures.BrokenExecutor as exc:
            raise broken(task, exc) from exc
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise refused(task, exc) from exc
        try:
            began, reply = await asyncio.wrap_future(future)
        except concurrent.futures.BrokenExecutor as exc:
            raise broken(task, exc) from exc
        if on_start is not None:
            on_start(began)
        result: bytes | Mapped = outcome(task, reply)  # serve_call replies in-band: bytes
        assert isinstance(result, bytes)
        return result

    async def aclose(self) -> None:
        return None  # the executor is the user's: never shut down here


class ShippedExecutor(ProcessExecutor):
    """The ``"cpu"`` lane on a user's process-like executor (see the module)."""

    # A user's executor says when the call began only with its result: a timeout
    # counts from the submission.
    reports_start = False

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        capacity: int,
        clock: Clock = SYSTEM_CLOCK,
        pickled: Callable[[str, bytes], None] | None = None,
    ) -> None:
        super().__init__(capacity, clock, pickled)
        self.executor = executor
        _shim()  # here, not in the executor's own pickling thread

    def make_pool(self) -> ExecutorClient:
        return ExecutorClient(self.executor)


class ThreadedExecutor:
    """The ``"cpu"`` lane on a user's thread pool: nothing pickled (see the module)."""

    lane = "cpu"

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        capacity: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.executor = executor
        self.capacity: int | None = capacity
        self.clock = clock

    def serves(self, kind: Kind, is_async: bool) -> bool:
        return kind is Kind.CPU

    def check(self, tasks: Mapping[str, Task], pending: Iterable[str]) -> None:
        return None

    def start(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> asyncio.Future[Any]:
        call = self._call(task, args, kwargs, began)
        if task.timeout is not None:
            call = with_timeout(task, call, self.clock)
        return asyncio.get_running_loop().create_task(call, name=task.name)

    async def _call(self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began) -> Any:
        try:
            future = self.executor.submit(_in_thread, task.fn, args, kwargs)
        except RuntimeError as exc:
            raise refused(task.name, exc) from exc
        when, value = await asyncio.wrap_future(future)
        began(task.name, when)
        return value

    async def aclose(self) -> None:
        return None  # the executor is the user's: never shut down here


def _in_thread(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Any:
    when = time.time()
    try:
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):  # an async function runs under its own loop here

            async def wait() -> Any:
                return await result

            result = asyncio.run(wait())
    except StopIteration as exc:  # a future refuses it (TypeError)
        raise RuntimeError(f"the function raised StopIteration: {exc}") from exc
    return when, result
