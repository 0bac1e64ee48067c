"""taskmap 0.0.6's module API on asyncgraph's engine: change one import and keep your code.

::

    import asyncgraph.compat.taskmap as taskmap

    graph = taskmap.create_graph(funcs, dependencies, io_bound=["fetch"])
    graph = taskmap.run_parallel_async(graph, nprocs=2)
    graph.results["fetch"]

How it is built. The taskmap graph is a mutable :class:`Graph` (a NamedTuple with
taskmap's eight fields, whose ``done`` list and ``results`` dict are changed in place, as
taskmap's are). Each runner converts it to a native :class:`asyncgraph.Graph` with
:func:`asyncgraph.create_graph` (which already binds results taskmap's way: positionally,
in dependency order, ``None`` results left out), runs that with :func:`asyncgraph.run_sync`
and copies the outcome back in taskmap's terms: a failed task's result is its exception,
each task below it gets the string ``'Ancestor task X failed; task not run'``, and all of
them count as done. There is no second scheduler and nothing polls: ``sleep`` is accepted
and ignored.

Where each runner puts a task that is not ``io_bound`` (``io_bound`` tasks are IO tasks in
every runner: coroutines on the event loop, plain functions in a thread):

=====================  ==========================================================
``run``                one at a time, on the calling thread (as taskmap's loop did)
``run_async``          coroutines on the event loop, plain functions in threads
``run_parallel``       worker processes (``nprocs``), truly in parallel
``run_parallel_async`` worker processes, also for ``async def`` functions that block
=====================  ==========================================================

The worker processes are started once, by the first parallel run of each ``nprocs``, and
shared by the runs after it (an :class:`asyncgraph.ProcessBackend`, closed once idle for
``IDLE_SECONDS``), as a taskmap user calling the runners in a loop expects them to be fast.

Every function is wrapped to log taskmap's lines (``pid N: starting task X``,
``finished``, ``failed``) on the ``'<name>-worker'`` logger, in the process that runs it;
the runner logs ``queueing`` and failure summaries on ``'<name>-manager'``. The wrapper is
a closure that cloudpickle sends by value, so a worker process never imports asyncgraph.
See ``docs/migrating-from-taskmap.md`` for the choices made where taskmap was ambiguous.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from .._api import Graph as _Native
from .._api import create_graph as _native_create_graph
from .._backends import ProcessBackend
from .._exceptions import GraphError, PicklingError, TaskFailures
from .._graph import BaseGraph
from .._state import State
from .._sync import run_sync as _run_sync
from .._task import is_async_callable

__all__ = [
    "Graph",
    "create_graph",
    "get_all_children",
    "get_ready_tasks",
    "in_progress",
    "mark_as_done",
    "mark_as_done_except",
    "reset_failed_tasks",
    "reset_tasks",
    "run",
    "run_async",
    "run_parallel",
    "run_parallel_async",
]

F = Callable[..., Any]

#: taskmap's log line format, used for the file written with ``logging_config={'write': True}``.
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class Graph(NamedTuple):
    """taskmap's graph: the same eight fields, in the same order.

    The tuple is immutable but its containers are not: runners and the ``mark_*`` and
    ``reset_*`` functions change ``done``, ``results`` and ``in_progress`` in place, as
    taskmap does. ``lock`` is kept for shape only.
    """

    funcs: dict[str, F]
    dependencies: dict[str, list[str]]
    done: list[str]
    results: dict[str, Any]
    in_progress: list[str]
    lock: int
    io_bound: list[str]
    name: str


# -- building -----------------------------------------------------------------------------


def create_graph(
    funcs: Mapping[str, F],
    dependencies: Mapping[str, Iterable[str]],
    io_bound: Iterable[str] | None = None,
    done: Iterable[str] | None = None,
    results: dict[str, Any] | None = None,
    name: str = "taskmap",
    logging_config: Mapping[str, Any] | None = None,
) -> Graph:
    """Create a taskmap graph; raise ``ValueError`` if it cannot run.

    The tasks are the keys of ``dependencies`` (as in taskmap, a function in ``funcs``
    without a key there never runs). Dependency collections may be lists, tuples or sets
    (a set is sorted, so arguments arrive in a stable order). ``ValueError`` is raised for
    a cycle (a task depending on itself included), a dependency that is not a key of
    ``dependencies``, a key without a function in ``funcs``, and a ``done`` name that is
    not a task (taskmap waited for it forever).

    ``logging_config`` may hold ``'level'`` (default ``logging.DEBUG``) and ``'write'``
    (default False: write a log file ``<name><date>.log`` in the current directory). It
    configures the loggers ``'<name>-manager'`` and ``'<name>-worker'`` the first time a
    graph of that name is created; later graphs of the same name reuse that
    configuration, as in taskmap. Nothing is printed unless you configure logging (for
    example ``logging.basicConfig()``): the records propagate to your handlers.
    """
    deps = {task: _as_list(task, d) for task, d in dependencies.items()}
    graph = Graph(
        funcs=funcs if isinstance(funcs, dict) else dict(funcs),
        dependencies=deps,
        in_progress=[],
        done=list(done or []),
        results=results or {},
        lock=0,
        io_bound=list(io_bound or []),
        name=name,
    )
    _check(graph)
    # Built once to find cycles; with a placeholder that accepts any arguments, since in
    # taskmap a function that cannot take its dependencies' results fails when it runs.
    _native(graph, lambda task, fn: _accepts_anything, set())
    _setup_loggers(name, dict(logging_config or {}))
    return graph


def _as_list(task: str, deps: Iterable[str]) -> list[str]:
    if isinstance(deps, str) or not isinstance(deps, Iterable):
        raise ValueError(
            f"dependencies[{task!r}] must be a list or set of task names, not "
            f"{type(deps).__name__} {deps!r}"
        )
    if isinstance(deps, (set, frozenset)):
        return sorted(deps)
    return list(deps)


def _accepts_anything(*args: Any) -> None:
    """Stands in for the tasks' functions when a graph is only being checked."""


def _check(graph: Graph) -> None:
    """Raise ValueError for what taskmap refused, and for done names it waited on forever.

    Cycles are found by building the native graph (see :func:`_native`).
    """
    deps = graph.dependencies
    absent = sorted({d for ds in deps.values() for d in ds} - set(deps), key=str)
    if absent:
        raise ValueError(
            f"tasks {absent} are depended upon but are not keys of the dependencies dict; "
            "add them (with [] if they depend on nothing) or fix the names"
        )
    no_func = sorted(set(deps) - set(graph.funcs), key=str)
    if no_func:
        raise ValueError(
            f"tasks {no_func} are keys of the dependencies dict but have no function in "
            "the funcs dict; add their functions or remove them"
        )
    stray = sorted(set(graph.done) - set(deps), key=str)
    if stray:
        raise ValueError(
            f"done lists {stray}, which are not tasks (keys of the dependencies dict); "
            "taskmap would wait for them forever: remove them from done"
        )


def _native(graph: Graph, wrap: Callable[[str, F], F], io: set[str]) -> _Native:
    """The native graph of ``graph``'s tasks, each function passed through ``wrap``."""
    tasks = list(graph.dependencies)
    done = [t for t in tasks if t in set(graph.done)]
    try:
        return _native_create_graph(
            {t: wrap(t, graph.funcs[t]) for t in tasks},
            graph.dependencies,
            io_bound=[t for t in tasks if t in io],
            done=done,
            results={t: graph.results.get(t) for t in done},
        )
    except GraphError as exc:
        # A cycle, a repeated dependency, a name that is not a str: taskmap's callers
        # catch ValueError for every defect of the graph.
        raise ValueError(str(exc)) from exc


# -- queries and rewrites (in place, returning the graph, as in taskmap) --------------------


def get_ready_tasks(graph: Graph, reverse: bool = True) -> list[str]:
    """Tasks not done nor in progress whose dependencies are all done; IO-bound first.

    Within each group the order is that of ``graph.dependencies``. ``reverse=False``
    puts the IO-bound tasks last, as in taskmap.
    """
    done = set(graph.done)
    busy = set(graph.in_progress)
    io = set(graph.io_bound)
    ready = [
        t
        for t, deps in graph.dependencies.items()
        if t not in done and t not in busy and done.issuperset(deps)
    ]
    return sorted(ready, key=lambda t: t in io, reverse=reverse)


def get_all_children(graph: Graph, task: str) -> set[str]:
    """Every task downstream of ``task`` (not including it); empty for an unknown name."""
    children: dict[str, list[str]] = {}
    for t, deps in graph.dependencies.items():
        for d in deps:
            children.setdefault(d, []).append(t)
    seen: set[str] = set()
    stack = [task]
    while stack:
        for c in children.get(stack.pop(), ()):
            if c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


def mark_as_done(graph: Graph, task: str | Iterable[str]) -> Graph:
    """Add ``task`` (a name or a list of names) to ``graph.done``; results are unchanged."""
    names = _names(graph, task, "mark_as_done")
    for t in names:
        if t not in graph.done:
            graph.done.append(t)
    return graph


def mark_as_done_except(graph: Graph, task: str | Iterable[str]) -> Graph:
    """Add every task except ``task`` (a name or a list) to ``graph.done``.

    As in taskmap, a listed task that is already done stays done.
    """
    keep = set(_names(graph, task, "mark_as_done_except"))
    for t in graph.dependencies:
        if t not in keep and t not in graph.done:
            graph.done.append(t)
    return graph


def reset_tasks(graph: Graph, tasks: str | Iterable[str]) -> Graph:
    """Make ``tasks`` and all their descendants runnable again (result set to None)."""
    names = _names(graph, tasks, "reset_tasks")
    rerun = set(names).union(*(get_all_children(graph, t) for t in names))
    for t in rerun:
        if t in graph.done:
            graph.results[t] = None
            graph.done.remove(t)
        # taskmap left them here, so get_ready_tasks never offered them again and the
        # next run waited forever.
        while t in graph.in_progress:
            graph.in_progress.remove(t)
    return graph


def reset_failed_tasks(graph: Graph) -> Graph:
    """Reset the tasks whose result is an exception, and their descendants."""
    failed = [t for t in graph.dependencies if isinstance(graph.results.get(t), Exception)]
    return reset_tasks(graph, failed)


def _names(graph: Graph, names: str | Iterable[str], where: str) -> list[str]:
    out = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in out if n not in graph.dependencies]
    if unknown:
        raise ValueError(
            f"{where}: {sorted(unknown, key=str)} are not tasks of this graph (keys of its "
            "dependencies dict); check the names"
        )
    return out


# -- logging ------------------------------------------------------------------------------


def _setup_loggers(name: str, config: dict[str, Any]) -> None:
    manager = logging.getLogger(f"{name}-manager")
    if manager.handlers:
        return  # configured by an earlier graph of this name (taskmap's rule)
    worker = logging.getLogger(f"{name}-worker")
    level = config.get("level", logging.DEBUG)
    for logger in (manager, worker):
        logger.setLevel(level)
        # A library adds no visible handler: without this one, Python's last-resort
        # handler would print failures to stderr when the application configured nothing.
        logger.addHandler(logging.NullHandler())
    if config.get("write", False):
        stamp = dt.datetime.now().strftime("%m-%d-%Y_%H.%M.%S")
        handler = _LogFile(f"{name}{stamp}.log", encoding="utf-8")
        handler.setLevel(level)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        manager.addHandler(handler)
        worker.addHandler(handler)


class _LogFile(logging.FileHandler):
    """The file written for ``logging_config={'write': True}`` (found again by type)."""


class _LogSpec(NamedTuple):
    """What a worker process needs to log as the parent's worker logger does."""

    logger: str
    level: int
    path: str | None


def _log_spec(name: str) -> _LogSpec:
    worker = logging.getLogger(f"{name}-worker")
    path = next((h.baseFilename for h in worker.handlers if isinstance(h, _LogFile)), None)
    return _LogSpec(worker.name, worker.level, path)


def _logged(task: str, fn: F, spec: _LogSpec, *, inline: bool) -> F:
    """``fn`` wrapped to log taskmap's lines wherever it runs.

    Only closures over stdlib modules here: cloudpickle sends closures by value, so a
    worker process unpickles this without importing asyncgraph (~120 ms saved per
    worker). ``inline=True`` makes a plain function a coroutine function that calls it on
    the event loop's thread (``run``: one task at a time, on the caller's thread).
    """
    logger_name, level, path = spec

    def logger() -> logging.Logger:
        lg = logging.getLogger(logger_name)
        if not lg.handlers:
            # A fresh worker process: configure its worker logger as the parent's is,
            # appending to the same file (each record is one write of one line).
            lg.setLevel(level)
            lg.addHandler(logging.NullHandler())
            if path is not None:
                fh = logging.FileHandler(path, encoding="utf-8")
                fh.setLevel(level)
                fh.setFormatter(logging.Formatter(LOG_FORMAT))
                lg.addHandler(fh)
        return lg

    if is_async_callable(fn) or inline:
        is_async = is_async_callable(fn)

        async def call_async(*args: Any) -> Any:
            lg = logger()
            lg.info("pid %s: starting task %s", os.getpid(), task)
            try:
                result = await fn(*args) if is_async else fn(*args)
                if inspect.isawaitable(result):  # e.g. a lambda returning a coroutine
                    result = await result
            except Exception:
                lg.exception("pid %s: failed task %s", os.getpid(), task)
                raise
            lg.info("pid %s: finished task %s", os.getpid(), task)
            return result

        return call_async

    def call(*args: Any) -> Any:
        lg = logger()
        lg.info("pid %s: starting task %s", os.getpid(), task)
        try:
            result = fn(*args)
        except Exception:
            lg.exception("pid %s: failed task %s", os.getpid(), task)
            raise
        lg.info("pid %s: finished task %s", os.getpid(), task)
        return result

    return call


def in_progress(path_to_log: str | os.PathLike[str]) -> dict[str, set[str]]:
    """From a log file: tasks started but not finished, and queued but not started."""
    queued: set[str] = set()
    started: set[str] = set()
    finished: set[str] = set()
    with open(path_to_log, encoding="utf-8") as f:
        for line in f:
            words = line.strip().split(" ")
            if "starting" in words:
                started.add(words[-1])
            elif "finished" in words:
                finished.add(words[-1])
            elif "queueing" in words:
                queued.add(words[-1])
    return {"in_progress": started - finished, "queued": queued - started}


# -- running ------------------------------------------------------------------------------


def run(graph: Graph, raise_errors: bool = False) -> Graph:
    """Run the graph's tasks one at a time on the calling thread; fill it in and return it.

    Coroutine functions are awaited (taskmap's ``run`` stored the coroutine object).
    ``raise_errors=True`` stops at the first failure and raises that task's exception,
    after recording it and its descendants in the graph.
    """
    return _execute(graph, "run", raise_errors=raise_errors, in_place=True)


def run_async(
    graph: Graph, sleep: float = 0.2, coro: object = None, raise_errors: bool = False
) -> Graph:
    """Run every task in this process, concurrently; fill the graph in and return it.

    Coroutines run on an event loop, plain functions in threads. Like taskmap's, this is
    a plain function that blocks until the graph is done (it also works inside a running
    loop, where it runs on its own loop in a helper thread); in async code, prefer
    ``await asyncgraph.run(...)``. ``sleep`` and ``coro`` are accepted for compatibility
    and ignored: nothing polls. ``raise_errors=True`` raises the first task's exception
    (taskmap raised a RuntimeError saying to check the logs).
    """
    return _execute(graph, "run_async", raise_errors=raise_errors, in_place=True)


def run_parallel(
    graph: Graph,
    nprocs: int | None = None,
    sleep: float = 0.2,
    raise_errors: bool = False,
    *,
    ncores: int | None = None,
) -> Graph:
    """Run tasks that are not ``io_bound`` in ``nprocs`` worker processes, in parallel.

    ``nprocs`` (or its alias ``ncores``) defaults to the CPU count minus one. Returns a
    new graph and leaves the given one unchanged, as taskmap does. ``sleep`` is accepted
    for compatibility and ignored: nothing polls. ``raise_errors=True`` stops at the first
    failure and raises that task's exception.
    """
    procs = _nprocs(nprocs, ncores, default=(os.cpu_count() or 2) - 1)
    return _execute(graph, "parallel", procs, raise_errors=raise_errors, in_place=False)


def run_parallel_async(
    graph: Graph,
    nprocs: int | None = None,
    sleep: float = 0.2,
    raise_errors: bool = False,
    *,
    ncores: int | None = None,
) -> Graph:
    """IO-bound coroutines on the event loop, every other task in worker processes.

    ``async def`` functions that are not ``io_bound`` (those that block) run in the
    workers too, so they never stall the loop. ``nprocs`` (alias ``ncores``) defaults to
    half the CPU count; ``nprocs=1`` is :func:`run_async`, as in taskmap. Like taskmap's,
    this blocks until done and returns a new graph. ``sleep`` is ignored: nothing polls.
    """
    procs = _nprocs(nprocs, ncores, default=(os.cpu_count() or 2) // 2)
    if procs == 1 and (nprocs, ncores) != (None, None):  # an explicit 1, not the default
        return run_async(graph, raise_errors=raise_errors)
    return _execute(graph, "parallel", procs, raise_errors=raise_errors, in_place=False)


def _nprocs(nprocs: int | None, ncores: int | None, *, default: int) -> int:
    if nprocs is not None and ncores is not None and nprocs != ncores:
        raise TypeError(f"pass nprocs or its alias ncores, not both ({nprocs} and {ncores})")
    value = nprocs if nprocs is not None else ncores
    if value is None:
        return max(1, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"nprocs must be an int, not {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"nprocs must be at least 1 (worker processes), not {value!r}")
    return value


def _execute(
    graph: Graph, mode: str, nprocs: int = 1, *, raise_errors: bool, in_place: bool
) -> Graph:
    """Run ``graph`` on the native engine and fill in ``graph`` or a copy of it.

    ``mode`` says where tasks that are not io_bound run: ``"run"`` (in order, on the
    loop's thread), ``"run_async"`` (in this process, concurrently) or ``"parallel"``
    (worker processes).
    """
    if not isinstance(raise_errors, bool):
        raise TypeError(f"raise_errors must be True or False, not {raise_errors!r}")
    _check(graph)
    target = graph if in_place else _copy(graph)
    # Nothing is in progress between runs. taskmap never emptied this list, so a rerun
    # after reset_failed_tasks waited forever for tasks it would not start.
    target.in_progress.clear()
    to_run = [t for t in graph.dependencies if t not in set(graph.done)]
    if not to_run:
        return target
    spec = _log_spec(graph.name)
    inline = mode == "run"
    io = set(graph.dependencies) if mode != "parallel" else set(graph.io_bound)
    native = _native(graph, lambda t, fn: _logged(t, fn, spec, inline=inline), io)
    manager = logging.getLogger(f"{graph.name}-manager")
    for t in to_run:
        manager.info("pid %s: queueing task %s", os.getpid(), t)
    pool = _POOLS.acquire(nprocs) if mode == "parallel" else None
    try:
        out = _run_sync(
            native,
            max_io=1 if mode == "run" else None,
            cpu_workers=nprocs,
            fail_fast=raise_errors,
            backend=pool,
        )
    except TaskFailures as exc:  # raise_errors=True: record what happened, then raise
        _fill(target, exc.graph, to_run, manager)
        first = min(
            (r.finished or 0.0, t) for t, r in exc.graph.records.items() if r.status is State.FAILED
        )[1]
        error = exc.graph.records[first].error
        assert error is not None
        raise error from None
    except PicklingError as exc:
        exc.add_note(
            "asyncgraph.compat.taskmap: list the task in io_bound to run it in this "
            "process, or use run()/run_async()"
        )
        raise
    finally:
        if pool is not None:
            _POOLS.release(nprocs)
    _fill(target, out, to_run, manager)
    return target


#: How long the parallel runners' workers wait for the next run before they stop.
IDLE_SECONDS = 2.0


class _Pools:
    """The worker pools the parallel runners share, one per ``nprocs``: started by the
    first run that needs it, reused by the runs after it, and closed once no run has
    used it for ``IDLE_SECONDS`` (as loky's reusable executor stops idle workers), so a
    taskmap script that calls the runners in a loop starts its workers once, and none
    stay behind for long once it is done. taskmap started them once per run; here that
    cost each run 100 ms and more before its first task.

    State it keeps: ``pools`` (nprocs -> the ProcessBackend), ``busy`` (runs using
    each now) and ``uses`` (a count per nprocs, so a timer knows if it was used since).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pools: dict[int, ProcessBackend] = {}
        self.busy: dict[int, int] = {}
        self.uses: dict[int, int] = {}

    def acquire(self, nprocs: int) -> ProcessBackend:
        with self.lock:
            pool = self.pools.get(nprocs)
            if pool is None or not pool.started:
                pool = self.pools[nprocs] = ProcessBackend(workers=nprocs).__enter__()
            self.busy[nprocs] = self.busy.get(nprocs, 0) + 1
            self.uses[nprocs] = self.uses.get(nprocs, 0) + 1
            return pool

    def release(self, nprocs: int) -> None:
        with self.lock:
            self.busy[nprocs] -= 1
            timer = threading.Timer(IDLE_SECONDS, self._idle, (nprocs, self.uses[nprocs]))
        timer.daemon = True  # never keeps the interpreter from exiting
        timer.start()

    def _idle(self, nprocs: int, uses: int) -> None:
        with self.lock:
            if self.busy.get(nprocs) or self.uses.get(nprocs) != uses:
                return  # used since: that run's own timer decides
            pool = self.pools.pop(nprocs, None)
        if pool is not None:
            pool.close()


_POOLS = _Pools()


def _copy(graph: Graph) -> Graph:
    return Graph(
        funcs=dict(graph.funcs),
        dependencies={t: list(d) for t, d in graph.dependencies.items()},
        done=list(graph.done),
        results=dict(graph.results),
        in_progress=[],
        lock=0,
        io_bound=list(graph.io_bound),
        name=graph.name,
    )


def _fill(target: Graph, out: BaseGraph, ran: list[str], manager: logging.Logger) -> None:
    """Copy a run's outcome into ``target`` in taskmap's terms.

    Tasks join ``done`` in the order they finished. A failure writes its message into
    every skipped descendant, so a task below two failures carries the message of the
    later one, as in taskmap, where each failure overwrote its descendants' results.
    """
    records = out.records
    order = {t: i for i, t in enumerate(out.topological_order())}
    ended = sorted(
        (t for t in ran if records[t].status in (State.DONE, State.FAILED)),
        key=lambda t: (records[t].finished or 0.0, order[t]),
    )
    for t in ended:
        rec = records[t]
        if t not in target.done:
            target.done.append(t)
        if rec.status is State.DONE:
            target.results[t] = rec.result
            continue
        target.results[t] = rec.error
        manager.error("pid %s: failed task %s: %r", os.getpid(), t, rec.error)
        below = sorted(
            (c for c in out.descendants(t) if records[c].status is State.SKIPPED),
            key=order.__getitem__,
        )
        if below:
            manager.info(
                "pid %s: marking children %s of failed task %s", os.getpid(), set(below), t
            )
        for c in below:
            target.results[c] = f"Ancestor task {t} failed; task not run"
            if c not in target.done:
                target.done.append(c)
