"""The Graph value: task definitions plus each task's state.

A Graph is built by adding tasks (the only mutation it allows); running it and every
rewrite return a *new* Graph and leave their input untouched. Validation (missing
dependencies, cycles) runs when the whole graph is known: by ``validate()``, which every
run calls before starting anything, and eagerly by ``create_graph``. Per-task problems
(duplicate names, bad options, signatures that cannot accept their dependencies) are
reported by ``add`` itself, at the line that defines the task.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, overload

from ._exceptions import (
    CycleError,
    DuplicateTaskError,
    InvalidTaskError,
    MissingDependencyError,
    TaskFailures,
    UnknownTaskError,
)
from ._state import NO_RESULT, PENDING_RECORD, State, StoredResult, TaskRecord
from ._task import Kind, Task, make_task

if TYPE_CHECKING:
    import pandas as pd

    from ._observe import OnEvent, Progress
    from ._pictures import SVG, MermaidText
    from ._report import Summary
    from ._store import Store

__all__ = ["Graph", "create_graph"]

F = Callable[..., Any]


class Graph:
    """A dependency map of functions and coroutines, with each task's state.

    Define tasks with the :meth:`task` decorator or :meth:`add`; run with
    :func:`asyncgraph.run` (or :meth:`run`), which returns a new Graph carrying the
    results, errors and timings.
    """

    __slots__ = ("_bindings", "_children", "_order", "_origin", "_paths", "_records", "_tasks")

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._records: dict[str, TaskRecord] = {}
        # Caches of what depends only on the task definitions, which never change once
        # added: reset by _insert, shared by graphs derived from this one.
        self._order: tuple[str, ...] | None = None  # topological order
        self._children: dict[str, tuple[str, ...]] | None = None
        self._paths: Any = None  # critical paths with unit weights (see _unit_paths)
        self._bindings: dict[str, bytes] | None = None  # see _binding_bytes
        # The store this graph's records were loaded from (see _resume.store_key): a run
        # on that store takes the records as they are instead of loading them again.
        self._origin: str | None = None

    # -- building ---------------------------------------------------------------------

    def add(
        self,
        name: str,
        fn: F,
        *,
        deps: Iterable[str] | Mapping[str, str] | None = None,
        kind: Kind | str | None = None,
        retries: int = 0,
        retry_delay: float = 0.1,
        timeout: float | None = None,
        priority: int = 0,
        resources: Iterable[str] = (),
    ) -> Task:
        """Add a task and return its definition.

        ``deps=None`` names the dependencies by the function's parameters (each without a
        default) and passes results by keyword; a list passes them positionally in that
        order; a dict ``{"param": "task"}`` passes them by keyword.
        """
        task = make_task(
            name,
            fn,
            deps=deps,
            kind=kind,
            retries=retries,
            retry_delay=retry_delay,
            timeout=timeout,
            priority=priority,
            resources=resources,
        )
        self._insert(task)
        return task

    def _insert(self, task: Task, record: TaskRecord = PENDING_RECORD) -> None:
        if task.name in self._tasks:
            raise DuplicateTaskError(task.name)
        self._tasks[task.name] = task
        self._records[task.name] = record
        self._order = None
        self._children = None
        self._paths = None
        self._bindings = None

    @overload
    def task(self, fn: F, /) -> F: ...
    @overload
    def task(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        deps: Iterable[str] | Mapping[str, str] | None = None,
        kind: Kind | str | None = None,
        retries: int = 0,
        retry_delay: float = 0.1,
        timeout: float | None = None,
        priority: int = 0,
        resources: Iterable[str] = (),
    ) -> Callable[[F], F]: ...

    def task(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        deps: Iterable[str] | Mapping[str, str] | None = None,
        kind: Kind | str | None = None,
        retries: int = 0,
        retry_delay: float = 0.1,
        timeout: float | None = None,
        priority: int = 0,
        resources: Iterable[str] = (),
    ) -> F | Callable[[F], F]:
        """Decorator form of :meth:`add`: ``@g.task`` or ``@g.task(kind="cpu", ...)``.

        The task is named after the function unless ``name=`` is given; the decorated
        function is returned unchanged, so it can still be called directly.
        """

        def decorate(f: F) -> F:
            self.add(
                name if name is not None else _name_of(f),
                f,
                deps=deps,
                kind=kind,
                retries=retries,
                retry_delay=retry_delay,
                timeout=timeout,
                priority=priority,
                resources=resources,
            )
            return f

        return decorate(fn) if fn is not None else decorate

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    @property
    def tasks(self) -> Mapping[str, Task]:
        """Task definitions by name (read-only view)."""
        return _ReadOnly(self._tasks)

    @property
    def records(self) -> Mapping[str, TaskRecord]:
        """Each task's record: status, result, error, traceback, attempts, timings."""
        return _ReadOnly(self._records)

    @property
    def status(self) -> dict[str, State]:
        return {n: r.status for n, r in self._records.items()}

    @property
    def results(self) -> Mapping[str, Any]:
        """Results of the tasks that are done, by name.

        A result still in a store (after :func:`asyncgraph.load`) is loaded when it is
        looked up, and kept.
        """
        return _Results(self._records)

    @property
    def errors(self) -> dict[str, BaseException]:
        """The exception of each failed task (and the reason of each cancelled one)."""
        return {n: r.error for n, r in self._records.items() if r.error is not None}

    def dependencies(self, name: str) -> tuple[str, ...]:
        self._check_names([name], "dependencies")
        return self._tasks[name].deps

    def children(self, name: str) -> tuple[str, ...]:
        self._check_names([name], "children")
        return self._child_map().get(name, ())

    def _child_map(self) -> dict[str, tuple[str, ...]]:
        if self._children is None:
            acc: dict[str, list[str]] = {}
            for t in self._tasks.values():
                for d in t.deps:
                    acc.setdefault(d, []).append(t.name)
            self._children = {k: tuple(v) for k, v in acc.items()}
        return self._children

    def descendants(self, names: Iterable[str] | str) -> set[str]:
        """All tasks downstream of ``names`` (not including them)."""
        start = self._check_names(names, "descendants")
        return _reach(start, self._child_map().get)

    def ancestors(self, names: Iterable[str] | str) -> set[str]:
        """All tasks upstream of ``names`` (not including them)."""
        start = self._check_names(names, "ancestors")
        return _reach(start, lambda n: self._tasks[n].deps)

    def _check_names(self, names: Iterable[str] | str, where: str) -> list[str]:
        if isinstance(names, str):
            out = [names]
        elif isinstance(names, Iterable):
            out = list(names)
        else:
            raise TypeError(
                f"{where}: expected a task name or a list of task names, "
                f"not {type(names).__name__} {names!r}"
            )
        wrong = [n for n in out if not isinstance(n, str)]
        if wrong:
            raise TypeError(f"{where}: task names are strings, not {wrong[0]!r}")
        unknown = [n for n in out if n not in self._tasks]
        if unknown:
            raise UnknownTaskError(unknown, where=where)
        return out

    # -- validation -------------------------------------------------------------------

    def validate(self) -> None:
        """Raise if a dependency is missing or the dependencies form a cycle."""
        self.topological_order()

    def topological_order(self) -> tuple[str, ...]:
        """Task names with every dependency before its dependents.

        Ties are broken by definition order, so the order is deterministic.
        """
        if self._order is not None:
            return self._order
        tasks = self._tasks
        for t in tasks.values():
            missing = [d for d in t.deps if d not in tasks]
            if missing:
                raise MissingDependencyError(t.name, missing)
        indegree = {n: len(t.deps) for n, t in tasks.items()}
        children = self._child_map()
        position = {n: i for i, n in enumerate(tasks)}
        heap = [(position[n], n) for n, k in indegree.items() if k == 0]
        heapq.heapify(heap)
        order: list[str] = []
        while heap:
            _, n = heapq.heappop(heap)
            order.append(n)
            for c in children.get(n, ()):
                indegree[c] -= 1
                if indegree[c] == 0:
                    heapq.heappush(heap, (position[c], c))
        if len(order) != len(tasks):
            raise CycleError(self._find_cycle({n for n, k in indegree.items() if k}))
        self._order = tuple(order)
        return self._order

    def _unit_paths(self) -> Any:
        """Longest remaining paths with unit weights, over all tasks (cached)."""
        if self._paths is None:
            from ._scheduler import critical_paths

            self._paths = critical_paths(self._tasks, self.topological_order(), self._child_map())
        return self._paths

    def _binding_bytes(self) -> dict[str, bytes]:
        """How each task binds its dependencies, as bytes for its fingerprint (cached).

        The repr of tuples of str and a bool: the same in every process, and it tells
        every binding apart.
        """
        if self._bindings is None:
            self._bindings = {
                n: repr((t.args, t.kwargs, t.skip_none)).encode() for n, t in self._tasks.items()
            }
        return self._bindings

    def _find_cycle(self, stuck: set[str]) -> list[str]:
        # Every task left with a positive in-degree lies on or below a cycle, and each has
        # a dependency that is also stuck: walk dependencies until a task repeats.
        node = min(stuck, key=list(self._tasks).index)
        seen: dict[str, int] = {}
        path: list[str] = []
        while node not in seen:
            seen[node] = len(path)
            path.append(node)
            node = next(d for d in self._tasks[node].deps if d in stuck)
        cycle = path[seen[node] :]
        # path follows "depends on" edges; report it in dependency order (a needs b ...)
        return [*cycle, cycle[0]]

    # -- deriving new graphs ------------------------------------------------------------

    def _derive(self, records: Mapping[str, TaskRecord]) -> Graph:
        """A new Graph with the same tasks and the given records."""
        new = Graph.__new__(Graph)
        new._tasks = dict(self._tasks)
        new._records = dict(records)
        new._order = self._order
        new._children = self._children
        new._paths = self._paths
        new._bindings = self._bindings
        new._origin = self._origin
        return new

    def _subset(self, names: Iterable[str]) -> Graph:
        keep = set(names)
        new = Graph()
        for n, t in self._tasks.items():
            if n in keep:
                new._tasks[n] = t
                new._records[n] = self._records[n]
        new._origin = self._origin
        return new

    # -- rewrites (pure; see asyncgraph._rewrite) ---------------------------------------

    def reset_failed(self) -> Graph:
        from ._rewrite import reset_failed

        return reset_failed(self)

    def reset(self, names: Iterable[str] | str) -> Graph:
        from ._rewrite import reset

        return reset(self, names)

    def mark_done(
        self, names: Iterable[str] | str, results: Mapping[str, Any] | None = None
    ) -> Graph:
        from ._rewrite import mark_done

        return mark_done(self, names, results)

    def mark_done_except(self, names: Iterable[str] | str) -> Graph:
        from ._rewrite import mark_done_except

        return mark_done_except(self, names)

    def subgraph(self, targets: Iterable[str] | str) -> Graph:
        from ._rewrite import subgraph

        return subgraph(self, targets)

    # -- running ----------------------------------------------------------------------

    async def run(
        self,
        *,
        max_io: int | None = None,
        cpu_workers: int | None = None,
        limits: Mapping[str, int] | None = None,
        fail_fast: bool = False,
        deadline: float | None = None,
        store: str | os.PathLike[str] | Store | None = None,
        progress: Progress = False,
        on_event: OnEvent | None = None,
    ) -> Graph:
        """``await graph.run(...)`` is ``await asyncgraph.run(graph, ...)``."""
        from ._runner import run

        return await run(
            self,
            max_io=max_io,
            cpu_workers=cpu_workers,
            limits=limits,
            fail_fast=fail_fast,
            deadline=deadline,
            store=store,
            progress=progress,
            on_event=on_event,
        )

    def run_sync(
        self,
        *,
        max_io: int | None = None,
        cpu_workers: int | None = None,
        limits: Mapping[str, int] | None = None,
        fail_fast: bool = False,
        deadline: float | None = None,
        store: str | os.PathLike[str] | Store | None = None,
        progress: Progress = False,
        on_event: OnEvent | None = None,
    ) -> Graph:
        """``graph.run_sync(...)`` is ``asyncgraph.run_sync(graph, ...)``."""
        from ._runner import run_sync

        return run_sync(
            self,
            max_io=max_io,
            cpu_workers=cpu_workers,
            limits=limits,
            fail_fast=fail_fast,
            deadline=deadline,
            store=store,
            progress=progress,
            on_event=on_event,
        )

    def raise_for_failures(self) -> Graph:
        """Raise :class:`TaskFailures` (an ExceptionGroup) if any task failed.

        Cancelled tasks count too (their error is a :class:`TaskCancelled` saying why):
        a run cut short by its deadline did not do its job. Skipped tasks are only a
        consequence and are not listed. Returns the graph unchanged when nothing failed,
        so it can be chained.
        """
        group = self._failures((State.FAILED, State.CANCELLED), "")
        if group is not None:
            raise group
        return self

    def _failures(self, states: tuple[State, ...], message: str) -> TaskFailures | None:
        """The errors of tasks in ``states`` as a TaskFailures group, or None."""
        failed = [
            (n, r.error)
            for n, r in self._records.items()
            if r.status in states and isinstance(r.error, Exception)
        ]
        if not failed:
            return None
        for name, exc in failed:
            note = f"task {name!r}"
            if note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
        names = ", ".join(repr(n) for n, _ in failed)
        verb = "failed" if states == (State.FAILED,) else "failed or were cancelled"
        return TaskFailures(
            message or f"{len(failed)} task(s) {verb}: {names}", [e for _, e in failed], self
        )

    # -- reporting ----------------------------------------------------------------------

    def to_frame(self) -> pd.DataFrame:
        """A pandas DataFrame with one row per task (see ``docs/api.md``)."""
        from ._report import to_frame

        return to_frame(self)

    # Observing (see docs/observing.md); each lives in _report or _pictures.

    def summary(self) -> Summary:
        """Counts by status and kind, busy and wall time, and the critical path."""
        from ._report import summary

        return summary(self)

    def timeline(self) -> pd.DataFrame:
        """One row per task that ran: its interval and a lane (see ``docs/observing.md``)."""
        from ._report import timeline

        return timeline(self)

    def plot_timeline(self, ax: Any = None) -> Any:
        """A Gantt chart of :meth:`timeline` (needs matplotlib: the ``plot`` extra)."""
        from ._pictures import plot_timeline

        return plot_timeline(self, ax)

    def to_mermaid(self) -> str:
        """Mermaid flowchart text, tasks coloured by status (IO rounded, CPU boxes)."""
        from ._pictures import to_mermaid

        return to_mermaid(self)

    def to_dot(self) -> str:
        """Graphviz DOT text, tasks coloured by status (IO ellipses, CPU boxes)."""
        from ._pictures import to_dot

        return to_dot(self)

    def visualize(self) -> SVG | MermaidText:
        """An SVG picture via graphviz's ``dot``; without it, Mermaid text and a warning."""
        from ._pictures import visualize

        return visualize(self)

    def _repr_html_(self) -> str:
        from ._pictures import to_html

        return to_html(self)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for r in self._records.values():
            counts[r.status.value] = counts.get(r.status.value, 0) + 1
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return f"<Graph {len(self)} tasks" + (f": {detail}>" if detail else ">")


class _Results(Mapping[str, Any]):
    """``graph.results``: the done tasks' results, loading stored ones on demand."""

    __slots__ = ("_records",)

    def __init__(self, records: dict[str, TaskRecord]) -> None:
        self._records = records

    def __getitem__(self, key: str) -> Any:
        rec = self._records.get(key)
        if rec is None or rec.status is not State.DONE:
            raise KeyError(key)
        value = rec.result
        if type(value) is StoredResult:
            return value.load()
        return value

    def __iter__(self) -> Iterator[str]:
        return (n for n, r in self._records.items() if r.status is State.DONE)

    def __len__(self) -> int:
        return sum(1 for r in self._records.values() if r.status is State.DONE)

    def __repr__(self) -> str:
        # Shows what is in memory; never loads from a store just to print.
        shown = []
        for n, r in self._records.items():
            if r.status is not State.DONE:
                continue
            v = r.result
            if type(v) is StoredResult:
                text = repr(v.load()) if v._loaded else "<in the store>"
            else:
                text = repr(v)
            shown.append(f"{n!r}: {text}")
        return "{" + ", ".join(shown) + "}"


class _ReadOnly(Mapping[str, Any]):
    """A read-only view of a dict (cheaper than MappingProxyType to type precisely)."""

    __slots__ = ("_d",)

    def __init__(self, d: dict[str, Any]) -> None:
        self._d = d

    def __getitem__(self, key: str) -> Any:
        try:
            return self._d[key]
        except KeyError:
            raise UnknownTaskError([key]) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return repr(self._d)


def _reach(start: Iterable[str], step: Callable[[str], Iterable[str] | None]) -> set[str]:
    seen: set[str] = set()
    stack = list(start)
    while stack:
        for nxt in step(stack.pop()) or ():
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _name_of(fn: F) -> str:
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>":
        raise TypeError(f"cannot name a task after {fn!r}; pass name=... to @graph.task(...)")
    return name


def create_graph(
    funcs: Mapping[str, F],
    dependencies: Mapping[str, Iterable[str]],
    io_bound: Iterable[str] | None = None,
    done: Iterable[str] | None = None,
    results: Mapping[str, Any] | None = None,
) -> Graph:
    """Build a Graph in taskmap's dict style.

    ``dependencies[name]`` lists the tasks whose results are passed positionally, in that
    order; a ``None`` result is not passed. Tasks in ``io_bound`` are IO tasks (coroutines
    on the loop, plain functions in threads); the others run in the process pool.
    ``done`` tasks do not run; ``results`` gives their results to their dependents. A
    done task left out of ``results`` has no result (``NO_RESULT``): a task that depends
    on it fails with :class:`MissingResultError`; give ``results={name: None}`` to pass
    nothing on purpose (taskmap's rule). Everything is checked here, before anything runs.
    """
    if not isinstance(funcs, Mapping):
        raise TypeError(f"funcs must be a dict of name -> function, not {type(funcs).__name__}")
    if not isinstance(dependencies, Mapping):
        raise TypeError(
            f"dependencies must be a dict of name -> list of names, "
            f"not {type(dependencies).__name__}"
        )
    io = _name_set(io_bound, "io_bound")
    done_set = _name_set(done, "done")
    given = _results_dict(results, "create_graph")
    unknown = (set(dependencies) | io | done_set | set(given)) - set(funcs)
    if unknown:
        raise UnknownTaskError(
            sorted(unknown), where="create_graph: names without a function in funcs"
        )
    g = Graph()
    for name, fn in funcs.items():
        deps = dependencies.get(name, ())
        if isinstance(deps, str) or not isinstance(deps, Iterable):
            raise InvalidTaskError(
                name,
                f"dependencies[{name!r}] must be a list or set of task names, "
                f"not {type(deps).__name__} {deps!r}",
            )
        task = make_task(
            name,
            fn,
            deps=sorted(deps) if isinstance(deps, (set, frozenset)) else list(deps),
            kind=Kind.IO if name in io else Kind.CPU,
            skip_none=True,
        )
        record = (
            TaskRecord(status=State.DONE, result=given.get(name, NO_RESULT))
            if name in done_set
            else PENDING_RECORD
        )
        g._insert(task, record)
    g.validate()
    return g


def _results_dict(results: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    if results is None:
        return {}
    if not isinstance(results, Mapping):
        raise TypeError(
            f"{where}: results must be a dict of task name -> result, not {type(results).__name__}"
        )
    return dict(results)


def _name_set(names: Iterable[str] | None, what: str) -> set[str]:
    if names is None:
        return set()
    if isinstance(names, str):
        raise TypeError(f"{what} must be a list of task names, not a single string {names!r}")
    return set(names)
