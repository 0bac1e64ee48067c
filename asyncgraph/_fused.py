"""The run's fused path: a plain run's done-callback and start, each in one frame (issue 15).

A run spends most of its own time per no-op task in the calls between its parts: the
done-callback, the ledger's done record, the scheduler's countdown and hand-out, the
ledger's attempt, the task's binding and the executor's start, six to eight Python
calls where a hand-written runner makes two. For the runs where each of those parts
does its simplest thing, this module builds the two functions the run uses instead
(:func:`fused`):

* ``done(child)``, the done-callback of every child: for a task that returned, what
  ``_Run._child_done``, ``Ledger.done``, ``Scheduler.done_ready``, ``Ledger.started``,
  ``Task.bind`` and ``LoopExecutor.start`` do, inline; a child that failed or was
  cancelled goes to the run's long way (``_Run._child_ended_badly``) at once;
* ``start(ready)``, what ``_Run._start`` does for the tasks the scheduler hands out
  (the first dispatch, a retry put back in line).

In a plain run (every task starts inline, see below) ``done`` and ``start`` start
each task themselves, without calling ``launch``: a Python call a task less, and the
arguments bound in a loop rather than a list comprehension (a frame of its own in
3.11).

Where it applies: no fan-out, no named limits, no store, and every task in one lane
without a cap (the loop's, with ``max_io=None``: :meth:`Scheduler.direct`). A task is
started inline when it is a coroutine function of kind IO without ``timeout``,
``kwargs`` or ``skip_none`` and the loop's executor is a :class:`LoopExecutor`; any
other task of such a run goes through its executor's ``start`` with ``Task.bind``, as
in the long way. Events are sent as the long way sends them (``emit`` is checked for
None at each one), so a watched run takes this path too.

Both functions work on the run's own structures (the ledger's ``records``, ``tries``
and ``started_at``; the scheduler's waiting counts, running set and lane; the task
set's children), exactly as the long way leaves them, so everything else (a failure, a
retry and its backoff, ``OpenRun.cancel(name)``, a deadline, fail_fast, the run's stop)
is done by the long way from the state it expects. ``tests/test_fused.py`` holds the
two against it: the same records, events, start order and outcomes on random graphs.

State it keeps
    Nothing of its own: the closures hold references to the run's structures (and the
    loop's ``create_task``), which the run owns and the long way changes too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ._events import Event, EventKind
from ._exceptions import MissingResultError
from ._executors.base import Began, Outcome
from ._executors.local import LoopExecutor
from ._ledger import Ledger
from ._scheduler import Scheduler
from ._state import NO_RESULT, RecordBody, State, TaskRecord
from ._task import Kind, Task
from ._taskset import TaskSet

__all__ = ["Host", "fused"]

_new = tuple.__new__
_DONE, _STARTED = EventKind.DONE, EventKind.STARTED
_DONE_STATE = State.DONE
_IO = Kind.IO

Child = asyncio.Future[Any]
Start = Callable[[Task, list[Any], dict[str, Any], Began], Child]


class Host(Protocol):
    """What the fused path reads of its run (``_Run``)."""

    core: Scheduler
    ledger: Ledger
    children: TaskSet
    failure: str | None

    @property
    def now(self) -> Callable[[], float]: ...

    @property
    def _starts(self) -> Mapping[Kind, tuple[Start, Start]]: ...

    @property
    def _began(self) -> Began: ...

    def _child_ended_badly(self, name: str, child: Child) -> None: ...


def fused(
    run: Host, plain: bool
) -> tuple[Callable[[Child], None], Callable[[list[Task]], None]] | None:
    """The run's ``done`` callback and ``start`` (see the module's docstring), or None
    if the fused path does not apply to this run. Called on the run's loop, once the
    scheduler is prepared and before the first dispatch. The caller has checked that
    the run has no fan-out, no store and no named limits."""
    core = run.core
    direct = core.direct()
    if direct is None:
        return None
    tasks, waiting, scheduled, below_of, order_keys, lane, in_order = direct
    ledger = run.ledger
    records = ledger.records
    tries = ledger.tries
    started_at = ledger.started_at
    emit = ledger.hot  # queued, started, done (None when a bar reads counts instead)
    taskset = run.children
    running = taskset.running
    inbox = taskset.inbox
    end = taskset.end
    now = run.now
    starts = run._starts
    began = run._began
    badly = run._child_ended_badly
    loop_ex = starts[_IO][1]
    inline_ok = getattr(loop_ex, "__self__", None).__class__ is LoopExecutor
    every = plain and inline_ok  # every task starts inline: no check per task
    loop = asyncio.get_running_loop()
    create_task = loop.create_task

    def launch(task: Task, name: str) -> None:
        """Start one attempt of ``task`` (its attempt and event are recorded)."""
        child: Child
        if every or (
            inline_ok
            and task.kind is _IO
            and task.is_async
            and task.timeout is None
            and not task.kwargs
            and not task.skip_none
        ):
            # Task.bind and LoopExecutor.start, inline: the coroutine is the child.
            a = task.args
            try:
                if not a:
                    call = task.fn()
                elif len(a) == 1:
                    r = records[a[0]].result
                    if r is NO_RESULT:
                        raise task._missing(records)
                    call = task.fn(r)
                else:  # a loop, not a list comprehension (a frame in 3.11)
                    args = []
                    for d in a:
                        r = records[d].result
                        if r is NO_RESULT:
                            raise task._missing(records)
                        args.append(r)
                    call = task.fn(*args)
                child = create_task(call, name=name)
            except Exception as exc:  # noqa: BLE001 - before its first await: reported
                # through the done-callback on the next loop iteration, as the long way
                child = loop.create_future()
                child.set_exception(exc)
        else:
            try:
                args, kwargs = task.bind(records) if task.deps else ([], {})
            except MissingResultError as exc:  # a dependency marked done without one
                child = loop.create_future()
                child.set_exception(exc)
            else:
                child = starts[task.kind][task.is_async](task, args, kwargs, began)
        running[child] = name
        child.add_done_callback(done)

    def start(ready: list[Task]) -> None:
        """``_Run._start``: attempts of the tasks the scheduler handed out begin."""
        at = now()
        for task in ready:
            name = task.name
            n = tries.get(name)
            if n is None:
                tries[name] = n = 1
                started_at[name] = at
            else:
                tries[name] = n = n + 1
            if emit is not None:
                emit(_new(Event, (_STARTED, name, n, at, None)))
            if every and not task.args:  # a root of a plain run: launch, inline
                kid: Child
                try:
                    kid = create_task(task.fn(), name=name)
                except Exception as exc:  # noqa: BLE001 - as in launch
                    kid = loop.create_future()
                    kid.set_exception(exc)
                running[kid] = name
                kid.add_done_callback(done)
            else:
                launch(task, name)

    def done(child: Child) -> None:
        name = running.pop(child)
        try:
            value = child.result()  # one call where success is the rule (try is free)
        except BaseException:  # noqa: BLE001 - cancelled or failed: the long way
            badly(name, child)
            return
        if taskset.stopping:
            inbox.append(Outcome(name, True, value, None, now()))
            return
        try:
            at = now()
            n = tries[name]
            # Ledger.done: the record (see RecordBody), then its event.
            rec: Any = RecordBody()
            rec.status = _DONE_STATE
            rec.result = value
            rec.error = None
            rec.traceback = None
            rec.attempts = records[name].attempts + n
            rec.started = started_at[name]
            rec.finished = at
            rec.__class__ = TaskRecord
            records[name] = rec
            if emit is not None:
                emit(_new(Event, (_DONE, name, n, at, None)))
            if run.failure is not None:  # a fail_fast run is ending: start nothing
                core.done(name)
                end(None)
                return
            # Scheduler.done_ready (see Scheduler.direct), then the starts.
            scheduled.remove(name)
            lane.used -= 1
            del waiting[name]
            below = below_of.get(name)
            if below:
                first: str | None = None
                more: list[str] | None = None
                for c in below:
                    left = waiting.get(c)
                    if left is not None:
                        waiting[c] = left = left - 1
                        if not left:
                            if first is None:
                                first = c
                            elif more is None:
                                more = [first, c]
                            else:
                                more.append(c)
                if first is not None:
                    if more is None:
                        more = [first]
                    elif not in_order:
                        more.sort(key=order_keys().__getitem__)
                    lane.used += len(more)
                    for c in more:
                        scheduled.add(c)
                        tries[c] = 1
                        started_at[c] = at
                        if emit is not None:
                            emit(_new(Event, (_STARTED, c, 1, at, None)))
                        task = tasks[c]
                        if not every:
                            launch(task, c)
                            continue
                        # launch(task, c) inline for a plain run (one call a task less):
                        # the same binding and create_task as its first branch.
                        a = task.args
                        kid: Child
                        try:
                            if len(a) == 1:
                                r = records[a[0]].result
                                if r is NO_RESULT:
                                    raise task._missing(records)
                                kid = create_task(task.fn(r), name=c)
                            else:  # a loop, not a list comprehension (a frame in 3.11)
                                args = []
                                for d in a:
                                    r = records[d].result
                                    if r is NO_RESULT:
                                        raise task._missing(records)
                                    args.append(r)
                                kid = create_task(task.fn(*args), name=c)
                        except Exception as exc:  # noqa: BLE001 - as in launch
                            kid = loop.create_future()
                            kid.set_exception(exc)
                        running[kid] = c
                        kid.add_done_callback(done)
                    return
            if not waiting:
                end(None)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting run
            end(error)

    return done, start
