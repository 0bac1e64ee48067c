"""The async runner: ``run()`` and ``run_sync()``. It owns every task of a run.

The runner is the "caller" of the synchronous :class:`~asyncgraph._scheduler.Scheduler`:
it starts what ``get_ready()`` hands out, each attempt through the executor of its lane
(:mod:`asyncgraph._executors`), in an asyncio task of the run's own task set
(:mod:`asyncgraph._taskset`, which says why not an anyio task group); every record,
event and store row goes through its ledger (:mod:`asyncgraph._ledger`). Each child's
done-callback applies its outcome and starts what became ready; the run itself awaits
one future that the last outcome resolves. A completion is what moves the run; nothing
ever sleeps and checks.
Every change to the scheduler and to the records happens in those callbacks, on the
loop's thread, one at a time, so there is no locking. No child outlives the run,
however it ends.

Per-run resources (the executors' process pool and threads) are created by the run and
closed by it, under a shield, whatever way the run ends.

State it keeps
    A ``_Run`` is a record of collaborators, each keeping its own state (see their
    modules): ``core`` (the Scheduler), ``ledger`` (records, attempts, events, rows),
    ``executors`` by lane, ``children`` (the task set and its retry timers) and
    ``clock``; of its own, only ``failure`` (the task that ended a fail_fast run) and
    ``fatal`` (a task's KeyboardInterrupt or SystemExit, raised once the run is over).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import random
import signal
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import anyio

from ._clock import MAX_BACKOFF as MAX_BACKOFF  # re-exported for tests
from ._clock import SYSTEM_CLOCK, Clock
from ._clock import backoff as _backoff
from ._events import Emit
from ._exceptions import (
    MissingResultError,
    Terminated,
    UnpicklingError,
    UnstorableResultError,
)
from ._executors import Executor, default_executors
from ._executors.base import Outcome, cancelled_from_inside, failed, route, traceback_of
from ._graph import Graph
from ._ledger import Ledger, NullSink, Sink
from ._observe import OnEvent, Progress, Watch
from ._scheduler import Lane, Scheduler

# Re-exported for the tests that read them here (the coordinator points them at _sink).
from ._sink import _ROW_OVERHEAD as _ROW_OVERHEAD
from ._sink import MAX_ERROR_TEXT as MAX_ERROR_TEXT
from ._sink import StoreSink
from ._sink import load_inputs as _load_inputs
from ._state import State, StoredResult, TaskRecord
from ._taskset import TaskSet

if TYPE_CHECKING:
    from ._store import Store

__all__ = ["run", "run_sync"]

_T = TypeVar("_T")

#: ``cancel_grace=``'s default, in seconds: how long a stopping run waits for a cancelled
#: task to end before abandoning it (a coroutine that catches CancelledError and goes
#: on). Half of ``docker stop``'s 10 s, so the cleanup after it fits before the SIGKILL.
CANCEL_GRACE = 5.0


class _Requeue(NamedTuple):
    """A retry's backoff delay has passed."""

    name: str


class _Run:
    """One run of one graph: the caller of the Scheduler. Everything on the loop's thread.

    State it keeps
        core       the Scheduler: what may start, what is running
        ledger     records, attempts, the one path for events and store rows
        executors  the executors, in lane order (loop, threads, processes), and
                   ``route``: which one runs each kind of task
        children   the run's own task set: its asyncio tasks (no child outlives the
                   run) and its retry timers, by task name
        clock      wall time, timers and time limits; ``uniform``: the backoff jitter
        failure    the task that ended a fail_fast run; ``fatal``: a task's
                   KeyboardInterrupt/SystemExit, raised when the run is over
    """

    def __init__(
        self,
        graph: Graph,
        *,
        max_io: int | None,
        cpu_workers: int,
        limits: Mapping[str, int],
        fail_fast: bool,
        deadline: float | None,
        cancel_grace: float = CANCEL_GRACE,
        emit: Emit | None = None,
        weights: Mapping[str, float] | None = None,
        executors: Sequence[Executor] | None = None,
        sink: Sink | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        order = graph.topological_order()  # raises CycleError / MissingDependencyError
        # Fill the structural caches on the caller's graph, so its next run reuses them,
        # then work on a snapshot (the caches come along): a task added to the caller's
        # graph while this run goes on must not appear in its result without a record.
        graph._unit_paths()
        graph = graph._derive(graph._records)
        self.tasks = graph._tasks  # the dict itself: the read-only view costs a call
        self.fail_fast = fail_fast
        self.deadline = deadline
        self.cancel_grace = cancel_grace
        self.clock = clock
        self.now = clock.time
        self.uniform = (rng or random.Random()).uniform  # the backoff's jitter
        self.ledger = ledger = Ledger(graph, emit, sink or NullSink(), clock.time)
        self.executors = executors or default_executors(max_io, cpu_workers, clock)
        self.route, lanes = route(self.executors)
        self.core = Scheduler(
            self.tasks,
            order,
            limits=limits,
            children=graph._child_map(),
            unit_paths=graph._unit_paths(),
            weights=weights,
            lanes=[Lane(*lane) for lane in lanes],
        )
        self.core.prepare({n: r.status for n, r in ledger.records.items()})
        ledger.skip(self.core.initially_skipped)
        # Check that every task can go where it runs before anything starts (a CPU
        # task's function pickles, and names no module a worker could not import).
        pending = self.core.pending()
        used = {id(ex) for pair in self.route.values() for ex in pair}
        for ex in self.executors:
            if id(ex) in used:
                ex.check(self.tasks, pending)
        self.children = TaskSet(cancel_grace)
        # Bound once: the dispatch hands these to every child, and a bound method
        # made per dispatch is an allocation per task on a chain.
        self._began = ledger.began
        self._on_done = self._child_done
        self.failure: str | None = None  # the task that ended a fail_fast run
        self.fatal: BaseException | None = None  # a task's KeyboardInterrupt/SystemExit

    # OpenRun (in _observe) reads these two; the coordinator points it at the ledger.
    @property
    def graph(self) -> Graph:
        return self.ledger.graph

    @property
    def records(self) -> dict[str, TaskRecord]:
        return self.ledger.records

    # -- the children ------------------------------------------------------------------
    #
    # Each task runs in an asyncio task owned by this run (``self.children``, see
    # _taskset for why not an anyio task group); it reports back through
    # ``_child_done``, a done-callback, which applies the outcome at once (``_post``).

    def _post(self, message: Outcome | _Requeue) -> None:
        """Apply a child's report at once and start what it made ready.

        Called from done-callbacks and timers, so on the loop's thread and never
        concurrently with anything else here: no locking, and no extra trip through the
        loop to wake a coordinator (a chain of tasks costs what a hand-written runner
        costs). Once the run is stopping, reports only queue up for ``_close``.
        """
        if self.children.stopping:
            self.children.inbox.append(message)
            return
        try:
            self._apply(message)
            self._continue()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting run
            # A bug here, or a task's KeyboardInterrupt: a callback must not swallow it
            # (the loop would only log it and the run would wait forever).
            self.children.end(exc)

    def _continue(self) -> None:
        """After an outcome: start what became ready, or end the run if nothing is left
        (or a fail_fast failure ends it)."""
        if self.failure is None and self.core.is_active():
            self._dispatch()
        else:
            self.children.end(None)

    def _child_done(self, child: asyncio.Future[Any]) -> None:
        children = self.children
        name = children.running.pop(child)
        if child.cancelled():
            if children.stopping:
                return  # the run cancelled it; _close() records it
            # The task cancelled itself:
            #     async def t(): raise asyncio.CancelledError
            # nobody else will report it, so it fails (a retry may still follow).
            self._post(cancelled_from_inside(name, self.now()))
            return
        exc = child.exception()
        if exc is None:
            if children.stopping:
                children.inbox.append(Outcome(name, True, child.result(), None, self.now()))
                return
            # The common case, fused (no Outcome, no _post/_apply hop): it runs once per
            # task, and each Python call here is a measurable share of a no-op task.
            try:
                if not self.ledger.done(name, child.result(), self.now()):
                    self._post(self._refused(name))
                    return
                self.core.done(name)
                self._continue()
            except BaseException as error:  # noqa: BLE001 - handed to the awaiting run
                children.end(error)
        else:
            self._post(failed(name, exc, self.now()))

    def _refused(self, name: str) -> Outcome:
        """The outcome of a task whose result the store cannot keep: it fails."""
        exc = self.ledger.refused(name)
        return Outcome(name, False, exc, traceback_of(exc), self.now())

    # -- the loop ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        ready = self.core.get_ready()
        if not ready:
            return
        ledger = self.ledger
        ledger.started(ready, self.now())
        records = ledger.records
        children = self.children.running
        route = self.route
        began = self._began
        done = self._on_done
        for task in ready:
            child: asyncio.Future[Any]
            if task.deps:
                try:
                    args, kwargs = task.bind(records)
                except MissingResultError as exc:  # a dependency marked done without one
                    child = asyncio.get_running_loop().create_future()
                    child.set_exception(exc)
                    children[child] = task.name
                    child.add_done_callback(done)
                    continue
            else:
                args, kwargs = [], {}
            child = route[task.kind][task.is_async].start(task, args, kwargs, began)
            children[child] = task.name
            child.add_done_callback(done)

    def _apply(self, msg: Outcome | _Requeue) -> None:
        if isinstance(msg, _Requeue):
            self.core.requeue(msg.name)
            return
        name = msg.name
        ledger = self.ledger
        if msg.ok:
            if ledger.done(name, msg.value, msg.finished):
                self.core.done(name)
                return
            msg = self._refused(name)
        task = self.tasks[name]
        tries = ledger.tries[name]
        if (
            tries <= task.retries
            and self.failure is None
            and not self.children.stopping
            # these would fail again
            and not isinstance(
                msg.value, (UnstorableResultError, MissingResultError, UnpicklingError)
            )
        ):
            self.core.retry(name)
            ledger.retrying(name, msg.value, msg.traceback, msg.finished)
            delay = _backoff(task, tries, self.uniform)
            self.children.timers[name] = self.clock.call_later(delay, self._requeue, name)
            return
        ledger.ended(name, State.FAILED, msg.value, msg.traceback, msg.finished)
        ledger.skipped(self.core.failed(name), msg.finished)
        if isinstance(msg.value, (KeyboardInterrupt, SystemExit)):
            raise msg.value
        if self.fail_fast and self.failure is None:
            self.failure = name

    def _requeue(self, name: str) -> None:
        # A retry's backoff timer fired (call_later: one wake-up, no polling).
        del self.children.timers[name]
        self._post(_Requeue(name))

    async def _loop(self) -> None:
        # Wait until the last report (or a fail_fast failure) resolves ``finished``; all
        # the work happens in _post, driven by the children's completions.
        self._dispatch()
        if self.core.is_active():
            await self.children.wait()

    def _close(self, reason: str) -> None:
        """Record every task that has not ended as cancelled, with ``reason``."""
        # Children that ended while the run was being stopped count as they ended: a
        # result is kept, a failure recorded as one (its descendants skipped), no retry.
        inbox = self.children.inbox
        while inbox:
            msg = inbox.popleft()
            if isinstance(msg, Outcome) and msg.name in self.core.running:
                try:
                    self._apply(msg)
                except (KeyboardInterrupt, SystemExit) as exc:
                    self.fatal = exc
        running, rest = self.core.cancel()
        self.ledger.cancel(running, rest, reason, self.children.abandoned, self.cancel_grace)

    async def _cleanup(self, reason: str) -> None:
        await self.children.stop()
        if self.core.is_active():
            self._close(reason)
        for ex in self.executors:
            await ex.aclose()
        await self.ledger.close()

    async def run(self) -> Graph:
        reason = "the run was cancelled"
        ledger = self.ledger
        core = self.core
        try:
            self.children.open()
            await ledger.open(core.pending(), self.children.end)
            ledger.write_skipped(core.initially_skipped)
            ledger.announce(core.pending(), core.initially_skipped)
            if core.is_active():
                if self.deadline is None:
                    await self._loop()
                else:
                    with self.clock.move_on_after(self.deadline):
                        await self._loop()
                    reason = f"the run's deadline of {self.deadline}s passed"
            if self.failure is not None:
                reason = f"task {self.failure!r} failed and fail_fast=True"
        except asyncio.CancelledError as exc:
            # run_sync's signal handler says which signal it was (see _Signals).
            if exc.args and exc.args[0] in _STOPPED_BY.values():
                reason = f"the run was stopped by {exc.args[0]}"
            raise
        finally:
            # However the run ends (done, fail_fast, deadline, or cancelled from outside:
            #     task = asyncio.create_task(ag.run(g)); task.cancel()
            # ) no child outlives it: cancel them, record them cancelled, stop the
            # workers, and let a cancellation continue.
            await _to_the_end(self._cleanup(reason))
        if self.fatal is not None:
            raise self.fatal
        result = ledger.snapshot()
        if self.failure is not None:
            group = result._failures(
                (State.FAILED,),
                f"task {self.failure!r} failed (fail_fast=True); the rest was cancelled",
            )
            assert group is not None
            raise group
        return result


async def _in_thread_to_the_end(fn: Callable[[], _T]) -> _T:
    """Run a blocking call in a thread; cancelled meanwhile, wait for it, then re-raise.

    For calls whose effect the caller must know about to undo it (taking the store's
    lock, recording a run's start): a plain ``Task.cancel()`` would otherwise land while
    the thread goes on and completes the call behind the caller's back.
    """
    call = asyncio.ensure_future(anyio.to_thread.run_sync(fn))
    cancelled: asyncio.CancelledError | None = None
    with anyio.CancelScope(shield=True):
        while not call.done():
            try:
                await asyncio.wait((call,))
            except asyncio.CancelledError as exc:
                cancelled = exc
    if cancelled is not None:
        raise cancelled
    return call.result()


async def _to_the_end(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to its end even if we are cancelled meanwhile, then re-raise.

    A shielded scope stops anyio's cancellations but not a plain ``Task.cancel()``:
        task.cancel(); ...; task.cancel()   # <- the second lands during the cleanup
    so the cleanup runs as its own task, and we wait for it however often we are
    cancelled; the last cancellation is raised when it is done.
    """
    task = asyncio.ensure_future(cleanup)
    cancelled: asyncio.CancelledError | None = None
    with anyio.CancelScope(shield=True):
        while not task.done():
            try:
                await asyncio.wait((task,))
            except asyncio.CancelledError as exc:
                cancelled = exc
    task.result()  # a bug in the cleanup is not to be lost either
    if cancelled is not None:
        raise cancelled


def _check_int(name: str, value: Any, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")


class _Options(NamedTuple):
    max_io: int | None
    cpu_workers: int
    limits: Mapping[str, int]
    fail_fast: bool
    deadline: float | None
    cancel_grace: float = CANCEL_GRACE

    def make(self, graph: Graph, **extra: Any) -> _Run:
        return _Run(
            graph,
            max_io=self.max_io,
            cpu_workers=self.cpu_workers,
            limits=self.limits,
            fail_fast=self.fail_fast,
            deadline=self.deadline,
            cancel_grace=self.cancel_grace,
            **extra,
        )


def _check_options(
    graph: Graph,
    max_io: int | None = None,
    cpu_workers: int | None = None,
    limits: Mapping[str, int] | None = None,
    fail_fast: bool = False,
    deadline: float | None = None,
    store: Any = None,
    cancel_grace: float = CANCEL_GRACE,
) -> _Options:
    if not isinstance(graph, Graph):
        raise TypeError(f"run() needs an asyncgraph.Graph, not {type(graph).__name__}")
    _check_int("max_io", max_io)
    _check_int("cpu_workers", cpu_workers)
    if limits is not None:
        if not isinstance(limits, Mapping):
            raise TypeError(f"limits must be a dict of name -> int, not {type(limits).__name__}")
        for key, value in limits.items():
            if not isinstance(key, str):
                raise TypeError(f"limits keys are resource names (str), not {key!r}")
            _check_int(f"limits[{key!r}]", value, allow_none=False)
    if not isinstance(fail_fast, bool):
        raise TypeError(f"fail_fast must be True or False, not {fail_fast!r}")
    if deadline is not None:
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
            raise TypeError(f"deadline must be a number of seconds, not {type(deadline).__name__}")
        if not deadline > 0 or math.isinf(deadline):
            raise ValueError(f"deadline must be a number of seconds > 0, not {deadline!r}")
    if isinstance(cancel_grace, bool) or not isinstance(cancel_grace, (int, float)):
        raise TypeError(
            f"cancel_grace must be a number of seconds, not {type(cancel_grace).__name__}"
        )
    if not cancel_grace > 0:
        raise ValueError(f"cancel_grace must be a number of seconds > 0, not {cancel_grace!r}")
    if store is not None and not isinstance(store, (str, os.PathLike)):
        from ._store import Store

        if not isinstance(store, Store):
            raise TypeError(
                "store must be a file path or a Store object (see asyncgraph.Store), "
                f"not {type(store).__name__} {store!r}"
            )
    return _Options(
        max_io,
        cpu_workers or os.cpu_count() or 1,
        limits or {},
        fail_fast,
        deadline,
        float(cancel_grace),
    )


def _body(
    graph: Graph,
    options: _Options,
    store: Any,
    emit: Emit | None,
    on_run: Callable[[_Run], None] | None = None,
) -> Callable[[], Coroutine[Any, Any, Graph]]:
    """The run itself, as a coroutine function (what ``Watch.observe`` awaits).

    ``on_run`` is given the ``_Run`` once it exists (an open run reads its records).
    """
    if store is not None:
        return functools.partial(_run_on_store, graph, options, store, emit, on_run)
    the_run = options.make(graph, emit=emit)
    if on_run is not None:
        on_run(the_run)
    if graph._origin is not None and any(
        type(r.result) is StoredResult for r in the_run.records.values()
    ):
        # A graph loaded from a store, run without one: its tasks take values, so the
        # results they need are read from that store first.
        async def load_then_run() -> Graph:
            await _load_inputs(the_run.records, the_run.tasks, the_run.core.pending())
            return await the_run.run()

        return load_then_run
    return the_run.run


async def _run_on_store(
    graph: Graph,
    options: _Options,
    store: Any,
    emit: Emit | None,
    on_run: Callable[[_Run], None] | None = None,
) -> Graph:
    """A run that records itself in ``store`` and reuses what is done there."""
    from ._resume import check_origin, durations, for_run
    from ._store import SQLiteStore, open_store

    graph.topological_order()  # a cycle is reported before the store is touched
    the_store = await anyio.to_thread.run_sync(open_store, store)
    check_origin(graph, the_store)  # and a graph of another store, before it is held
    held = False

    def take() -> None:
        nonlocal held
        the_store.acquire()
        held = True  # set in the thread: a cancelled caller still knows to let go
        if isinstance(the_store, SQLiteStore):
            the_store._held_by_run = True  # its close() is refused until the run ends

    try:
        await _in_thread_to_the_end(take)
        loaded = await anyio.to_thread.run_sync(for_run, graph, the_store)
        weights = _weights(durations(loaded.stored), loaded.graph)
        sink = StoreSink(the_store, loaded)
        the_run = options.make(loaded.graph, weights=weights, emit=emit, sink=sink)
        if on_run is not None:
            on_run(the_run)
        return await the_run.run()
    finally:
        if held:
            the_store.release()  # the lock goes, and the run's connection
        if the_store is not store:
            # Ours: close it too, so SQLite folds its WAL file back into the store. The
            # run's StoredResults read it again if they are ever loaded. (The caller's
            # own object is the caller's to close.)
            close = getattr(the_store, "close", None)
            if close is not None:
                close()


def _weights(known: Mapping[str, float], graph: Graph) -> dict[str, float] | None:
    """Critical-path weights from past durations; a task never timed gets the median."""
    if not known:
        return None
    ordered = sorted(known.values())
    typical = ordered[len(ordered) // 2] or 1e-6
    return {n: known.get(n, typical) or 1e-6 for n in graph.tasks}


async def run(
    graph: Graph,
    *,
    max_io: int | None = None,
    cpu_workers: int | None = None,
    limits: Mapping[str, int] | None = None,
    fail_fast: bool = False,
    deadline: float | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    progress: Progress = False,
    on_event: OnEvent | None = None,
    cancel_grace: float = CANCEL_GRACE,
) -> Graph:
    """Run every pending task of ``graph`` and return a new Graph with their states.

    ``max_io`` caps concurrent IO tasks (default: no cap for coroutines; plain functions
    share anyio's thread pool of 40); ``cpu_workers`` is the number of worker processes
    (default: the CPU count); ``limits={"db": 4}`` caps tasks declaring
    ``resources=("db",)``. A failed task's descendants are skipped and the rest goes on,
    unless ``fail_fast=True``, which cancels the rest and raises :class:`TaskFailures`.
    ``deadline`` (seconds) cancels whatever has not finished by then.

    ``progress=True`` draws a progress bar and ``on_event`` is called with each
    :class:`Event` (see docs/observing.md).

    ``store`` (a file path, or a :class:`Store`) makes the run durable: every outcome is
    recorded there, and tasks already done there with an unchanged fingerprint are
    reused instead of run (see :func:`load` and ``docs/store.md``).
    """
    options = _check_options(
        graph, max_io, cpu_workers, limits, fail_fast, deadline, store, cancel_grace
    )
    watch = Watch(progress, on_event)
    return await watch.observe(
        _body(graph, options, store, watch.emit), options.deadline, options.cancel_grace
    )


def run_sync(
    graph: Graph,
    *,
    max_io: int | None = None,
    cpu_workers: int | None = None,
    limits: Mapping[str, int] | None = None,
    fail_fast: bool = False,
    deadline: float | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    progress: Progress = False,
    on_event: OnEvent | None = None,
    cancel_grace: float = CANCEL_GRACE,
) -> Graph:
    """:func:`run` for scripts: runs on a new event loop (uvloop when installed).

    Inside a running loop (a Jupyter cell, a coroutine under ``asyncio.run``) it runs on
    its own loop in a helper thread and blocks until done. Ctrl-C cancels the run,
    records running tasks as cancelled, stops the workers and raises KeyboardInterrupt;
    SIGTERM does the same and raises :class:`Terminated` (a ``SystemExit`` with code
    143). Each signal is handled so only while the run runs, in the main thread, and
    only if the program left it to Python's default.
    """
    options = _check_options(
        graph, max_io, cpu_workers, limits, fail_fast, deadline, store, cancel_grace
    )
    watch = Watch(progress, on_event)
    body = functools.partial(
        watch.observe,
        _body(graph, options, store, watch.emit),
        options.deadline,
        options.cancel_grace,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_a_loop = False
    else:
        in_a_loop = True
    # Outside the except block, so the run's own errors carry no "no running event
    # loop" context in their tracebacks.
    if in_a_loop:
        return _run_in_helper_thread(body, options.cancel_grace)
    signals = _Signals()
    signals.install()
    try:
        return _run_on_new_loop(body, options.cancel_grace, signals)
    finally:
        signals.restore()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _is_asyncio_sigint_handler(handler: Any) -> bool:
    """asyncio.Runner's own (``asyncio.run``): it only cancels the main task, which a
    ``run_sync`` in helper-thread mode blocks, so Ctrl-C would wait for the run's end."""
    return isinstance(handler, functools.partial) and getattr(
        handler.func, "__func__", None
    ) is getattr(asyncio.Runner, "_on_sigint", object())


#: The reasons recorded on the tasks a signal cancelled (the cancellation's message).
_STOPPED_BY: dict[int, str] = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


def _left_as_python_has_it(signum: int, handler: Any) -> bool:
    if signum == signal.SIGINT:
        return handler is signal.default_int_handler or _is_asyncio_sigint_handler(handler)
    return bool(handler == signal.SIG_DFL)


class _Signals:
    """SIGINT and SIGTERM while a ``run_sync`` runs: each asks the run to stop.

    Installed in the main thread only (where Python runs signal handlers), and each only
    if the program left it as Python has it: SIGINT raising KeyboardInterrupt (or
    ``asyncio.run``'s handler, see ``_is_asyncio_sigint_handler``), SIGTERM ending the
    process. A program that set its own handler keeps it. ``await ag.run()`` installs
    nothing: the loop and its signals are the application's.

    The handler cancels the run's main task on its loop (``call_soon_threadsafe``: the
    loop may run in the helper thread); the run cleans up as for any cancellation, and
    ``run_sync`` raises KeyboardInterrupt or :class:`Terminated` afterwards. No lock:
    the handler writes ``signum`` and then reads ``task``; ``attach`` (on the loop's
    thread) writes ``task`` and then reads ``signum``, so one of them sees the other.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Future[Any] | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                if _left_as_python_has_it(signum, signal.getsignal(signum)):
                    self.previous[signum] = signal.signal(signum, self.handle)
            except ValueError:  # an embedded interpreter without signals (gh-91880)
                continue

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            if signal.getsignal(signum) == self.handle:  # not replaced meanwhile
                signal.signal(signum, handler)
        self.previous.clear()

    def attach(self, loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
        """The run's main task (called on its loop's thread, before the loop runs)."""
        self.loop = loop
        self.task = task
        if self.signum is not None:  # a signal came before the run started
            task.cancel(self.why())

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum != signal.SIGTERM:  # SIGTERM wins: the supervisor's word
            self.signum = signum
        self.request_stop()

    def request_stop(self) -> None:
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to stop
                loop.call_soon_threadsafe(task.cancel, self.why())

    def why(self) -> str | None:
        """The cancellation's message: the run records it as the reason."""
        return None if self.signum is None else _STOPPED_BY.get(self.signum)

    def exception(self) -> BaseException | None:
        """What run_sync raises after a signal stopped it (or None)."""
        if self.signum == signal.SIGTERM:
            return Terminated(signal.SIGTERM)
        if self.signum is not None:
            return KeyboardInterrupt()
        return None


def _run_on_new_loop(
    fn: Callable[[], Coroutine[Any, Any, Graph]], grace: float, signals: _Signals
) -> Graph:
    """``asyncio.Runner(...).run(fn())``, with signals that stop the run (see _Signals)
    and a close that cannot hang (see _shut_down)."""
    loop = _loop_factory()()
    result: Graph | None = None
    error: BaseException | None = None
    task: asyncio.Task[Graph] | None = None
    try:
        task = loop.create_task(fn())
        signals.attach(loop, task)
        try:
            result = loop.run_until_complete(task)
        except asyncio.CancelledError as exc:
            if signals.signum is None:
                raise
            error = exc
        except BaseException as exc:
            if signals.signum is None:
                raise
            error = exc  # it ended by itself as the signal came: the signal wins
    finally:
        try:
            _shut_down(loop, grace, task)
        finally:
            loop.close()
    stopped = signals.exception()
    if stopped is not None:
        # A signal asked the run to stop: whatever it returned or raised meanwhile,
        # the program is told it was interrupted, after the cleanup.
        if isinstance(error, asyncio.CancelledError):
            error = None  # the cancellation is how the signal stopped it: no news
        raise stopped from error
    assert result is not None
    return result


def _shut_down(
    loop: asyncio.AbstractEventLoop, grace: float, main: asyncio.Task[Graph] | None
) -> None:
    """What ``asyncio.Runner.close`` does, each step but one bounded by ``grace`` seconds.

    Cancel the tasks left on the loop, then shut down the async generators and the
    default executor. The run's own task (``main``) is left only if a KeyboardInterrupt
    or SystemExit escaped the loop; it is waited for to its end, since its cleanup (the
    store's last commit) is bounded already. Any other task left here is one the run
    abandoned because it caught its cancellation (see ``_Run._stop_children``):
    asyncio.Runner would wait for it forever. After ``grace`` it is left pending and the
    loop is closed anyway.
    """
    timeout = None if math.isinf(grace) else grace
    left = asyncio.all_tasks(loop)
    for task in left:
        task.cancel()
    if main is not None and not main.done():
        loop.run_until_complete(asyncio.wait({main}))
    if left:
        loop.run_until_complete(asyncio.wait(left, timeout=timeout))
        for task in left:
            if task is main:  # its error is already on its way to the caller
                continue
            if task.done() and not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception during run_sync() shutdown",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
    for step in (loop.shutdown_asyncgens, loop.shutdown_default_executor):
        loop.run_until_complete(asyncio.wait({loop.create_task(step())}, timeout=timeout))


def _run_in_helper_thread(fn: Callable[[], Coroutine[Any, Any, Graph]], grace: float) -> Graph:
    # We are inside a running loop (a notebook cell calling run_sync, or a coroutine
    # under asyncio.run):
    #     ag.run_sync(g)   # <- asyncio.run() would raise "cannot be called from a
    #                      #    running event loop"
    # so run on a fresh loop in a helper thread and block this one until it ends. The
    # signals are caught here, in the main thread, and passed on to the helper's loop:
    # the calling loop cannot act on them while we block it (asyncio.run's own SIGINT
    # handler would only cancel a task that is stuck in this call).
    outcome: dict[str, Any] = {}
    signals = _Signals()

    def target() -> None:
        try:
            outcome["value"] = _run_on_new_loop(fn, grace, signals)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="asyncgraph-run_sync", daemon=True)
    signals.install()
    try:
        thread.start()
        try:
            thread.join()
        except KeyboardInterrupt:
            # A KeyboardInterrupt that did not come through our handler (the program's
            # own SIGINT handler raised it, or we are not in the main thread): stop the
            # run there, wait for its cleanup, then re-raise.
            if signals.signum is None:
                signals.signum = signal.SIGINT
            signals.request_stop()
            thread.join()
            raise
    finally:
        signals.restore()
    if "error" in outcome:
        raise outcome["error"]
    value: Graph = outcome["value"]
    return value
