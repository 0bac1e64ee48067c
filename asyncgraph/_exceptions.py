"""The errors asyncgraph raises.

::

    Exception
    +-- GraphError                 the graph definition is invalid (raised while building or
    |   |                          before a run starts; nothing has run)
    |   +-- CycleError             dependencies form a cycle; ``.cycle`` lists it in order
    |   +-- MissingDependencyError a dependency names no task; ``.task``, ``.missing``
    |   +-- DuplicateTaskError     a task name is used twice; ``.task``
    |   +-- SignatureError         a function cannot accept what its dependencies pass
    |   +-- InvalidTaskError       a bad task option: unknown ``kind``, negative ``retries``,
    |                              a function that is not callable (also a ``ValueError``)
    |   +-- UnknownTaskError       a rewrite or query names tasks the graph lacks; ``.names``
    |   +-- PicklingError          ``kind="cpu"`` tasks cannot be sent to a worker process;
    |                              ``.tasks`` lists every one
    +-- TaskError                  base of errors that stand in for a task's own exception
    |   +-- RemoteError            an exception known by its text only (a worker's
    |                              that could not be pickled back, or from a store)
    |   +-- WorkerDiedError        the worker process running the task died
    |   +-- UnpicklingError        a CPU task's function, arguments or result could not
    |                              be unpickled on the other side (never retried)
    |   +-- TaskCancelled          recorded on a task that was cancelled (run cancelled,
    |                              ``fail_fast`` or the run's ``deadline``)
    |   +-- UnstorableResultError  a task's result cannot be written to the store
    |   +-- MissingResultError     a dependency was marked done without a result;
    |                              ``.task``, ``.missing``
    +-- StoreError                 a store cannot be used: not a store, damaged, unreadable
    |   +-- StoreLockedError       another run holds the store; ``.holder`` says which
    |   +-- StoreMismatchError     the store was written by a graph with other task names;
    |                              ``.only_in_store``, ``.only_in_graph``
    +-- ExceptionGroup
        +-- TaskFailures           ``raise_for_failures()`` and ``fail_fast=True``;
                                   ``.graph`` is the graph as it ended

    SystemExit
    +-- Terminated                 SIGTERM stopped ``run_sync`` (after the run's cleanup);
                                   exit status 143 if nothing catches it

Bad arguments (a negative limit, a wrong type) raise the built-in ``ValueError`` or
``TypeError`` with a message naming the parameter, as the standard library does.

Every one of them survives :mod:`pickle`, cloudpickle and :mod:`copy` as it is: same type,
same ``str()``, same attributes (a worker process pickles a CPU task's exception back to
the driver; users send failures to other processes). Their ``__init__`` builds the message
from its arguments, so the default ``(type(e), e.args)`` would call it with the finished
message: a pickled error is rebuilt instead without calling ``__init__`` (``__new__``
with ``e.args``, then its attributes), which also serves subclasses whose ``__init__``
takes other arguments. As for any exception, ``__cause__``, ``__context__`` and
``__traceback__`` are not carried.
"""

from __future__ import annotations

import copyreg
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # The one type-only back-edge of the layers, on purpose: TaskFailures.graph.
    from ._graph import BaseGraph

__all__ = [
    "CycleError",
    "DuplicateTaskError",
    "GraphError",
    "InvalidTaskError",
    "MissingDependencyError",
    "MissingResultError",
    "PicklingError",
    "RemoteError",
    "SignatureError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "TaskCancelled",
    "TaskError",
    "TaskFailures",
    "UnknownTaskError",
    "UnpicklingError",
    "UnstorableResultError",
    "WorkerDiedError",
]


# cls.__new__(cls, *args); pickle protocols >= 2 write it as their NEWOBJ opcode.
_NEWOBJ: Callable[..., object] = copyreg.__newobj__  # type: ignore[attr-defined]


def _reduce(exc: BaseException) -> tuple[object, ...]:
    """``exc.__reduce__()`` rebuilding ``exc`` without its ``__init__``: ``cls.__new__(cls,
    *exc.args)`` (which sets ``args``, and an ``ExceptionGroup``'s ``exceptions``), then
    its attributes (``__notes__`` included). Refers to nothing private by name, so a
    pickle does not depend on where this module lives."""
    state = dict(vars(exc))
    if isinstance(exc, SystemExit):  # set by SystemExit.__init__, which is not called
        state["code"] = exc.code
    return (_NEWOBJ, (type(exc), *exc.args), state)


class GraphError(Exception):
    """The graph definition is invalid; raised before any task runs."""

    def __reduce__(self) -> tuple[object, ...]:
        return _reduce(self)


class CycleError(GraphError):
    """The dependencies form a cycle.

    ``cycle`` lists the tasks in dependency order and repeats the first at the end, as
    :class:`graphlib.CycleError` does: ``["a", "b", "a"]`` means a needs b and b needs a.
    """

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(
            "dependencies form a cycle: "
            + " -> ".join(self.cycle)
            + "; remove one of these dependencies"
        )


class MissingDependencyError(GraphError):
    """A task depends on a name that is not a task of the graph."""

    def __init__(self, task: str, missing: Sequence[str]) -> None:
        self.task = task
        self.missing = sorted(missing)
        names = ", ".join(repr(m) for m in self.missing)
        super().__init__(
            f"task {task!r} depends on {names}, which "
            + ("is not a task" if len(self.missing) == 1 else "are not tasks")
            + " of this graph; add the task or fix the dependency name"
        )


class DuplicateTaskError(GraphError):
    """Two tasks have the same name."""

    def __init__(self, task: str) -> None:
        self.task = task
        super().__init__(
            f"a task named {task!r} is already in the graph; pass name=... to give "
            "the new task another name"
        )


class SignatureError(GraphError):
    """A task's function cannot accept the arguments its dependencies will pass."""

    def __init__(self, task: str, message: str) -> None:
        self.task = task
        super().__init__(f"task {task!r}: {message}")


class InvalidTaskError(GraphError, ValueError):
    """A task option is invalid: unknown kind, negative retries or timeout, not callable."""

    def __init__(self, task: str, message: str) -> None:
        self.task = task
        super().__init__(f"task {task!r}: {message}")


class UnknownTaskError(GraphError, KeyError):
    """A rewrite or a query names tasks that are not in the graph."""

    def __init__(self, names: Sequence[str], *, where: str = "") -> None:
        self.names = sorted(names)
        listed = ", ".join(repr(n) for n in self.names)
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}unknown task name(s): {listed}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class PicklingError(GraphError):
    """``kind="cpu"`` tasks that cannot be sent to a worker process: a function that
    cannot be pickled, or one that refers by name to a module a worker cannot import.

    Raised before anything runs, naming every such task: ``tasks`` lists them all (in
    the graph's order), ``task`` is the first, and ``problems`` maps each to what is
    wrong with it and what to do. ``PicklingError(task, reason)`` is the one-task form
    for a function that cannot be pickled for ``reason``.
    """

    def __init__(self, task: str, reason: str) -> None:
        self._setup(
            {
                task: f"its function cannot be pickled: {reason}; use kind='io' or make "
                "the function picklable"
            }
        )

    @classmethod
    def for_tasks(cls, problems: Mapping[str, str]) -> PicklingError:
        """One error for several tasks; ``problems`` maps each to a clause (what is
        wrong, what to do) that completes "task 't' runs in a worker process but ..."."""
        self = cls.__new__(cls)
        self._setup(problems)
        return self

    def _setup(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        self.tasks = tuple(self.problems)
        self.task = self.tasks[0]
        if len(self.tasks) == 1:
            message = (
                f"task {self.task!r} runs in a worker process (kind='cpu') but "
                f"{self.problems[self.task]}"
            )
        else:
            message = f"{len(self.tasks)} tasks run in worker processes (kind='cpu') but " + (
                "cannot be sent to them:"
                + "".join(f"\n  task {t!r}: {p}" for t, p in self.problems.items())
            )
        GraphError.__init__(self, message)


class TaskError(Exception):
    """Base of the errors recorded in place of a task's own exception."""

    def __reduce__(self) -> tuple[object, ...]:
        return _reduce(self)


class RemoteError(TaskError):
    """An exception known only by its text: a worker's exception that could not be
    pickled back, or a failure loaded from a store.

    Carries what could be recovered: ``type_name`` (qualified), ``message`` and the
    formatted ``traceback`` text from the worker.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        super().__init__(f"{type_name}: {message}")


class WorkerDiedError(TaskError):
    """The worker process running a task died (``os._exit``, a signal, out of memory)."""

    def __init__(self, task: str, exitcode: int | None) -> None:
        self.task = task
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            import signal

            try:
                how = f"was killed by signal {signal.Signals(-exitcode).name}"
            except ValueError:
                how = f"was killed by signal {-exitcode}"
        elif exitcode is None:
            how = "died"
        else:
            how = f"exited with status {exitcode}"
        super().__init__(
            f"the worker process running task {task!r} {how} before returning a result"
            " (os._exit, a signal or running out of memory); a new worker takes its place"
        )


class UnpicklingError(TaskError):
    """A ``kind="cpu"`` task's function or arguments could not be loaded in its worker
    process (``what`` is ``"function"`` or ``"arguments"``), or its result could not be
    loaded back in the driver (``what == "result"``): a module or class the other side
    cannot import, a ``__setstate__`` that raises there. Never retried: it would fail
    the same way again. ``task`` names the task.
    """

    def __init__(self, task: str, what: str, reason: str) -> None:
        self.task = task
        self.what = what
        self.reason = reason
        if what == "result":
            text = (
                f"the result of task {task!r} was computed in its worker process but "
                f"cannot be unpickled in the driver: {reason}; return a value this "
                "process can rebuild (plain data, or classes from modules it imports), "
                "or use kind='io'; not retried"
            )
        else:
            text = (
                f"the {what} of task {task!r} cannot be unpickled in its worker process: "
                f"{reason}; make the modules it needs importable from sys.path (or call "
                "cloudpickle.register_pickle_by_value(module) to send one by value), or "
                "use kind='io'; not retried"
            )
        super().__init__(text)


class TaskCancelled(TaskError):  # noqa: N818 - reads as the state it records
    """Recorded as the error of a task that was cancelled, with the reason."""


class UnstorableResultError(TaskError):
    """A task returned a result that cannot be serialized into the store.

    The task is recorded as failed (its result was not kept, so nothing may build on
    it) and the run goes on.
    """


class MissingResultError(TaskError):
    """A task's dependency was marked done without a result, so there is nothing to pass.

    Recorded as the task's error (it is not retried; its descendants are skipped).
    ``task`` is the task that needed the results, ``missing`` the dependencies marked
    done without one (by ``mark_done`` or ``create_graph(done=...)`` without
    ``results``, or by ``mark_done_except``).
    """

    def __init__(self, task: str, missing: Sequence[str]) -> None:
        self.task = task
        self.missing = tuple(missing)
        names = ", ".join(repr(m) for m in self.missing)
        plural = len(self.missing) > 1
        first = self.missing[0] if self.missing else "name"
        given = ", ".join(f"{m!r}: value" for m in self.missing)
        nones = ", ".join(f"{m!r}: None" for m in self.missing)
        super().__init__(
            f"task {task!r} needs the result{'s' if plural else ''} of {names}, which "
            f"{'were' if plural else 'was'} marked done without a result (mark_done or "
            "create_graph(done=...) without results, or mark_done_except), so there is "
            f"nothing to pass; give the result: mark_done(g, {list(self.missing)!r}, "
            f"results={{{given}}}) (create_graph(..., results={{{given}}})), pass "
            f"results={{{nones}}} if None is what {task!r} should get, or reset(g, "
            f"[{first!r}]) to run it (on the command line: --mark-done {first}=JSON, "
            f"{first}=null for None)"
        )


class StoreError(Exception):
    """The store cannot be used: not an asyncgraph store, damaged, or unreadable.

    Raised before anything is written: the store is left as it was.
    """

    def __reduce__(self) -> tuple[object, ...]:
        return _reduce(self)


class StoreLockedError(StoreError):
    """Another run is using the store; ``holder`` describes it (run id, pid, host)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class StoreMismatchError(StoreError):
    """The store holds tasks this graph does not have (another graph's store?)."""

    def __init__(
        self, message: str, only_in_store: Sequence[str], only_in_graph: Sequence[str]
    ) -> None:
        super().__init__(message)
        self.only_in_store = tuple(only_in_store)
        self.only_in_graph = tuple(only_in_graph)


class Terminated(SystemExit):
    """SIGTERM stopped ``run_sync`` (``docker stop``, systemd, ``kill``).

    Raised once the run has cleaned up, as Ctrl-C's ``KeyboardInterrupt`` is: running
    tasks were recorded ``cancelled`` (in the store too) and the worker processes
    stopped. A ``SystemExit`` whose ``code`` is 143 (128 + SIGTERM), so a program that
    does not catch it ends with the status a process supervisor expects of a process
    stopped by SIGTERM, after its ``finally`` blocks and ``atexit`` handlers ran.
    """

    def __init__(self, signum: int = 15) -> None:
        super().__init__(128 + signum)
        self.signal = signum

    def __str__(self) -> str:
        return f"the run was cancelled by signal {self.signal} (SIGTERM)"

    def __reduce__(self) -> tuple[object, ...]:
        return _reduce(self)


class TaskFailures(ExceptionGroup[Exception]):
    """The failures of a run, one exception per failed task.

    ``graph`` is the graph as the run left it. Each exception carries a ``task_name``
    note (``e.__notes__``) naming its task.
    """

    graph: BaseGraph

    def __new__(
        cls, message: str, exceptions: Sequence[Exception], graph: BaseGraph | None = None
    ) -> TaskFailures:
        self = super().__new__(cls, message, exceptions)
        if graph is not None:
            self.graph = graph
        return self

    def __init__(
        self, message: str, exceptions: Sequence[Exception], graph: BaseGraph | None = None
    ) -> None:
        super().__init__(message, exceptions)

    def __reduce__(self) -> tuple[object, ...]:
        return _reduce(self)
