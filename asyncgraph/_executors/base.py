"""The executor seam: where one attempt of a task runs.

A run hands each task it starts to the executor that serves the task's kind (and, in
the IO kind, whether it is a coroutine function). An executor starts the attempt and
returns an asyncio future (a task, for the loop executor); the run adds its done
callback to it. The future's result is the task's result; its exception is the task's
error, and carries the text of its traceback when the attempt ran elsewhere (a worker
process sets ``__asyncgraph_traceback__``: see :func:`traceback_of`).

Executors sit in *lanes*: the scheduler keeps one ready queue and one capacity per lane,
and hands out the lanes in the order the run lists its executors (IO first, so the loop
starts waiting on the network while the processes compute). Several executors may share
a lane (coroutines and threads share ``"io"``, and ``max_io`` caps both).

No executor is public; the public backends (``asyncgraph._backends``) hand them out.
:class:`InlineExecutor` is the runner's test double: every attempt on the loop's thread,
one at a time, in the scheduler's order.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from .._clock import SYSTEM_CLOCK, Clock
from .._exceptions import RemoteError, TaskCancelled, TaskError
from .._task import Kind, Task

__all__ = [
    "Backend",
    "Began",
    "Executor",
    "InlineExecutor",
    "Outcome",
    "Route",
    "cancelled_from_inside",
    "failed",
    "printable",
    "route",
    "traceback_of",
    "with_timeout",
]

#: ``began(name, when)``: the attempt of ``name`` began in its executor at ``when`` (by
#: the executor's clock: a worker's, for a process).
Began = Callable[[str, float], None]


class Outcome(NamedTuple):
    """One attempt of one task ended: the run's report of what its child's future held
    (the value or the exception, with the traceback's text).

    A NamedTuple, not a frozen dataclass: one is built per task, and a frozen
    dataclass costs five times as much to build.
    """

    name: str
    ok: bool
    value: Any  # the result, or the exception
    traceback: str | None
    finished: float


def printable(exc: BaseException, tb: str) -> BaseException:
    """``exc``, or, if its ``str()`` raises, a RemoteError that says so (as a CPU worker
    reports it), with ``exc`` as its cause: every table, log line and store row formats
    a task's error, and one that cannot be formatted must not stop the run::

        class Odd(Exception):
            def __str__(self): raise RuntimeError("no")
    """
    try:
        str(exc)
    except Exception as inner:  # noqa: BLE001 - whatever str() raises, it is reported
        cls = type(exc)
        wrapped = RemoteError(
            f"{cls.__module__}.{cls.__qualname__}", f"<str() raised {type(inner).__name__}>", tb
        )
        wrapped.__cause__ = exc
        return wrapped
    return exc


def failed(name: str, exc: BaseException, now: float) -> Outcome:
    """The outcome of an attempt whose future ended with ``exc``."""
    if isinstance(exc, Exception):
        tb = traceback_of(exc)
        return Outcome(name, False, printable(exc, tb), tb, now)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return Outcome(name, False, exc, None, now)  # the run ends with these
    # Another BaseException (GeneratorExit, a library's own): a failure.
    wrapped = TaskError(
        f"task {name!r} raised {type(exc).__name__}, which is not an Exception: "
        f"{printable(exc, '')}"
    )
    wrapped.__cause__ = exc
    return Outcome(name, False, wrapped, "".join(traceback.format_exception(exc)), now)


def cancelled_from_inside(name: str, now: float) -> Outcome:
    """The outcome of an attempt that cancelled itself (the run did not cancel it)."""
    reason = TaskCancelled(
        f"task {name!r} was cancelled from inside (it raised CancelledError "
        "without the run being cancelled)"
    )
    return Outcome(name, False, reason, None, now)


class Executor(Protocol):
    """Runs attempts of the tasks it serves; owned and closed by one run.

    Besides these, the run calls each of the following an executor has (none is part
    of the protocol; only the Dask and process executors have any):

    ``begin()``
        The run starts, before its first attempt (the process pool starts its workers).
    ``values_at_end()``
        After ``check``: the executor may leave results elsewhere until ``settle``.
    ``want_values()``
        Someone reads results while the run goes on: leave none elsewhere.
    ``await stopped()``
        The run stops with tasks it had not started; returns those that began
        elsewhere all the same, ``{task: (when it was sent or None, reason to add)}``
        (``Ledger.cancel`` records them).
    ``await settle(records)``
        The run ends with its graph: put the values left elsewhere into ``records``.
    """

    #: The scheduler lane it fills, and how many of that lane's tasks may run at once
    #: (None: no cap). Executors sharing a lane give the same capacity.
    lane: str
    capacity: int | None

    def serves(self, kind: Kind, is_async: bool) -> bool:
        """Whether it runs tasks of this kind (and coroutine functions, or plain ones)."""
        ...

    def check(self, tasks: Mapping[str, Task], pending: Iterable[str]) -> None:
        """Before anything starts: raise if any of the ``pending`` tasks it serves
        cannot run here (all of the bad ones in one error). One pass, no list built:
        a run of 100k tasks calls this for each executor. An executor that serves no
        kind of task the graph has is given no tasks (``()``): it is still called."""
        ...

    def start(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> asyncio.Future[Any]:
        """Start one attempt (on the loop's thread); its future ends with the outcome."""
        ...

    async def aclose(self) -> None:
        """Release what it holds (workers, threads); called once, on every way out."""
        ...


class Backend(Protocol):
    """Where a run's work goes: each run asks it for that run's executors.

    A backend may be shared by many runs (a started process pool) or made for one run;
    the executors it returns are the run's own, and the run closes each of them
    (``aclose``) on every way out. Closing an executor releases what the run holds of
    the backend, never a pool, cluster or executor the backend was given or shares.

    Optional: ``default_cpu_workers`` (an int), how many CPU tasks the backend runs at
    once; a run given no ``cpu_workers`` passes that many instead of the CPU count
    (``RunOptions`` reads it with ``getattr``, so a backend without it is unaffected).
    ``executors`` may raise (a pool not started, a closed one): it is called before the
    run records anything, and the error reaches the caller as it is.
    """

    def executors(
        self,
        *,
        max_io: int | None,
        cpu_workers: int,
        clock: Clock,
        pickled: Callable[[str, bytes], None] | None,
    ) -> list[Executor]:
        """The executors of one run, in lane order (IO first). ``pickled`` is told a
        result's bytes when they were made where the task ran (for the store)."""
        ...


#: kind -> (the executor of its plain functions, the executor of its coroutine
#: functions): indexed with ``route[task.kind][task.is_async]``, no tuple built per task.
Route = Mapping[Kind, tuple[Executor, Executor]]


def route(
    executors: Sequence[Executor],
) -> tuple[Route, list[tuple[str, int | None, tuple[Kind, ...]]]]:
    """Which executor runs what (the first that serves it), and the lanes in order:
    ``(name, capacity, kinds)``, what the scheduler takes.

    Raises ValueError if a kind has no executor, or its plain and coroutine functions
    would go to executors of different lanes (the scheduler keys a task by its kind).
    """
    table: dict[Kind, tuple[Executor, Executor]] = {}
    lanes: dict[str, int | None] = {}
    for ex in executors:
        lanes.setdefault(ex.lane, ex.capacity)
    for kind in Kind:
        pick = [next((e for e in executors if e.serves(kind, a)), None) for a in (False, True)]
        plain, coro = pick
        if plain is None or coro is None:
            raise ValueError(f"no executor runs {kind.value!r} tasks")
        if plain.lane != coro.lane:
            raise ValueError(
                f"{kind.value!r} tasks would go to two lanes, {plain.lane!r} and {coro.lane!r}"
            )
        table[kind] = (plain, coro)
    used = {e.lane for pair in table.values() for e in pair}
    kinds = {lane: tuple(k for k, pair in table.items() if pair[0].lane == lane) for lane in used}
    return table, [(lane, cap, kinds[lane]) for lane, cap in lanes.items() if lane in used]


def traceback_of(exc: BaseException) -> str:
    """The traceback text of an attempt's error: the worker's, if it ran in one."""
    tb = getattr(exc, "__asyncgraph_traceback__", None)
    return tb if isinstance(tb, str) and tb else "".join(traceback.format_exception(exc))


async def with_timeout(
    task: Task, call: Coroutine[Any, Any, Any], clock: Clock = SYSTEM_CLOCK
) -> Any:
    """Await ``call``; past ``task.timeout`` seconds, cancel it and raise TimeoutError."""
    with clock.move_on_after(task.timeout) as scope:
        return await call
    assert scope.cancelled_caught
    raise TimeoutError(f"task {task.name!r} did not finish within timeout={task.timeout}s")


class InlineExecutor:
    """Every attempt on the loop's thread, one at a time, in the scheduler's order.

    A plain function (of any kind) is called inside :meth:`start`, and its future is
    returned already done; a coroutine function runs as a task of the loop. Nothing
    goes to a thread or a process, and nothing is pickled: for the runner's own tests,
    which then see every outcome in a fixed order.
    """

    lane = "inline"
    capacity: int | None = 1

    def __init__(self, capacity: int = 1, clock: Clock = SYSTEM_CLOCK) -> None:
        self.capacity = capacity
        self.clock = clock

    def serves(self, kind: Kind, is_async: bool) -> bool:
        return True

    def check(self, tasks: Mapping[str, Task], pending: Iterable[str]) -> None:
        return None

    def start(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if task.is_async:
            call = task.fn(*args, **kwargs)
            if task.timeout is not None:
                call = with_timeout(task, call, self.clock)
            return loop.create_task(call)
        future = loop.create_future()
        try:
            result = task.fn(*args, **kwargs)
        except StopIteration as exc:  # a future refuses it (TypeError)
            future.set_exception(RuntimeError(f"the function raised StopIteration: {exc}"))
        except BaseException as exc:  # noqa: BLE001 - the attempt's outcome, reported
            future.set_exception(exc)
        else:
            if inspect.isawaitable(result):  # e.g. a lambda returning a coroutine
                return asyncio.ensure_future(result)
            future.set_result(result)
        return future

    async def aclose(self) -> None:
        return None
