"""The Graph value: task definitions (a :class:`~asyncgraph._dag.Dag`) plus each task's
record, on the ground floor: it imports nothing that runs, rewrites or reports on it.

A graph is built by adding tasks (the only mutation it allows); running it and every
rewrite return a *new* graph and leave their input untouched. Validation (missing
dependencies, cycles) runs when the whole graph is known: by ``validate()``, which every
run calls before starting anything, and eagerly by ``create_graph``. Per-task problems
(duplicate names, bad options, signatures that cannot accept their dependencies) are
reported by ``add`` itself, at the line that defines the task.

:class:`BaseGraph` is the value; the public :class:`asyncgraph.Graph` (in ``_api``)
subclasses it with the verbs (run, rewrites, reports, pictures), as httpx's ``Client``
subclasses ``BaseClient``. Everything here that derives a graph returns ``type(self)``,
so a graph the library hands back is always the public class.

State it keeps
    ``_dag``      the structure, shared with every graph derived from this one (frozen
                  once shared, so an ``add`` here copies it first);
    ``_records``  name -> TaskRecord, this graph's own dict, in definition order;
    ``_origin``   the store these records were loaded from (see ``_store.resume.store_key``),
                  or None: a run on that store takes the records as they are;
    ``_name``     the graph's name (``Graph(name="nightly")``) or None, kept by every
                  graph derived from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar, overload

from ._dag import Dag
from ._exceptions import TaskFailures, UnknownTaskError
from ._state import PENDING_RECORD, ResultRef, State, TaskRecord
from ._task import Kind, Task, fast_task, make_task

__all__ = ["BaseGraph", "G", "check_graph", "check_graph_name"]

F = Callable[..., Any]
#: The decorated function's own type: ``@g.task`` hands it back as it came (issue 16).
_TF = TypeVar("_TF", bound=Callable[..., Any])
_G = TypeVar("_G", bound="BaseGraph")
#: A graph of any BaseGraph class: what the engines take and give back (``run(g: G) -> G``).
G = TypeVar("G", bound="BaseGraph")


class _Keep:
    """The default of ``_derive(origin=...)``: keep the origin as it is."""

    __slots__ = ()


_KEEP = _Keep()


class BaseGraph:
    """A dependency map of functions and coroutines, with each task's state.

    The value without its verbs: build (:meth:`add`, :meth:`task`) and read. The public
    :class:`asyncgraph.Graph` adds running, rewriting and reporting.

    Package-internal (used by other asyncgraph modules, not part of the public API):
    ``_dag`` (the structure), ``_origin`` (read only: it is written through
    :meth:`_derive`), :meth:`_derive`, :meth:`_subset`, :meth:`_record_copy`,
    :meth:`_failures`, :meth:`_insert` and :meth:`_with_dag` (fan-out).
    """

    __slots__ = ("_dag", "_name", "_origin", "_records")

    def __init__(self, name: str | None = None) -> None:
        self._name = check_graph_name(name)
        self._dag = Dag()
        self._records: dict[str, TaskRecord] = {}
        # The store this graph's records were loaded from (see _store.resume.store_key): a run
        # on that store takes the records as they are instead of loading them again.
        self._origin: str | None = None

    @property
    def name(self) -> str | None:
        """The graph's name (``Graph(name="nightly")``), or None: shown in its repr, its
        HTML table, the progress bar, and the store's history of its runs."""
        return self._name

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
        after: Iterable[str | Task] | str | Task | None = None,
        over: str | Task | None = None,
        key: Callable[[Any], Any] | None = None,
    ) -> Task:
        """Add a task and return its definition.

        ``deps=None`` names the dependencies by the function's parameters (each without a
        default) and passes results by keyword; a list passes them positionally in that
        order; a dict ``{"param": "task"}`` passes them by keyword. ``after`` lists
        order-only dependencies: the task starts after they are done, without their
        results (it is skipped if one of them fails). A :class:`Task` (what ``add``
        returns) may stand for its name in ``deps`` and ``after``, and so may a function
        that ``@g.task`` decorated in this graph (what the decorator returns).

        ``over="users"`` maps the task over that dependency's result: when ``users`` is
        done, each item of its list (or each value of its dict) becomes an element of
        its own, a task named ``name[0]``, ``name[1]``, ... (or ``name[<key>]`` with
        ``key=``, a function of one item returning a str or int), that gets the one
        item where ``users``'s result would go. ``name`` itself stands for the family:
        its result is the list of the elements' results (a dict when mapping a dict).
        Over another mapped task the mapping is element-wise. ``over`` may be a
        :class:`Task` or a decorated function, as in ``deps``.
        """
        if after is None and over is None and key is None:
            task = fast_task(
                name, fn, deps, kind, retries, retry_delay, timeout, priority, resources, False
            )
            if task is not None:  # else the full way, which says what is wrong
                self._dag = self._dag.add(task)
                self._records[name] = PENDING_RECORD
                return task
        if deps is not None and not isinstance(deps, (str, Mapping)):
            deps = self._tasks_of_functions(deps)
        order_only = _one_or_many(after)
        if order_only is not None:
            order_only = self._tasks_of_functions(order_only)
        if over is not None and not isinstance(over, str):
            over = self._tasks_of_functions([over])[0]  # a Task, or a decorated function
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
            after=order_only,
            over=over,
            key=key,
        )
        self._dag = self._dag.add(task)
        self._records[name] = PENDING_RECORD
        return task

    def _tasks_of_functions(self, names: Any) -> Any:
        """``names`` with each function that is one task's function in this graph (as
        ``@g.task`` returns it) replaced by that task; anything else as it is. Only when
        an item is not a str or Task, so a plain list of names costs one pass."""
        if type(names) is list:  # the common case, by far: a list of names
            for n in names:
                if type(n) is not str:
                    break
            else:
                return names
        if not isinstance(names, Iterable) or isinstance(names, (str, set, frozenset)):
            return names  # a set has no order: make_task refuses it for deps, saying why
        items = list(names)
        if all(isinstance(n, (str, Task)) for n in items):
            return items
        by_fn: dict[int, list[Task]] = {}
        for t in self._dag.tasks.values():
            by_fn.setdefault(id(t.fn), []).append(t)
        out = []
        for n in items:
            found = by_fn.get(id(n)) if callable(n) and not isinstance(n, Task) else None
            out.append(found[0] if found is not None and len(found) == 1 else n)
        return out

    def _insert(self, task: Task, record: TaskRecord = PENDING_RECORD) -> None:
        """Add a built task with a record (package-internal: ``create_graph``)."""
        self._dag = self._dag.add(task)
        self._records[task.name] = record

    @overload
    def task(self, fn: _TF, /) -> _TF: ...
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
        after: Iterable[str | Task] | str | Task | None = None,
        over: str | Task | None = None,
        key: Callable[[Any], Any] | None = None,
    ) -> Callable[[_TF], _TF]: ...

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
        after: Iterable[str | Task] | str | Task | None = None,
        over: str | Task | None = None,
        key: Callable[[Any], Any] | None = None,
    ) -> F | Callable[[F], F]:
        """Decorator form of :meth:`add`: ``@g.task`` or ``@g.task(kind="cpu", ...)``.

        The task is named after the function unless ``name=`` is given; the decorated
        function is returned unchanged, so it can still be called directly.
        """

        def decorate(f: F) -> F:
            n = name if name is not None else _name_of(f)
            if after is None and over is None and key is None and type(self).add is _ADD:
                task = fast_task(
                    n, f, deps, kind, retries, retry_delay, timeout, priority, resources, False
                )
                if task is not None:  # else add's full way, which says what is wrong
                    self._dag = self._dag.add(task)
                    self._records[n] = PENDING_RECORD
                    return f
            self.add(
                n,
                f,
                deps=deps,
                kind=kind,
                retries=retries,
                retry_delay=retry_delay,
                timeout=timeout,
                priority=priority,
                resources=resources,
                after=after,
                over=over,
                key=key,
            )
            return f

        return decorate(fn) if fn is not None else decorate

    # -- stream stages (issue 14; see asyncgraph._stream) --------------------------------

    def add_stream(
        self,
        name: str,
        fn: F,
        *,
        inputs: Iterable[str] | None = None,
        deps: Mapping[str, str] | None = None,
        kind: Kind | str | None = None,
        retries: int = 0,
        retry_delay: float = 0.1,
        timeout: float | None = None,
        priority: int = 0,
        resources: Iterable[str] = (),
        batch_size: int | None = None,
        batch_timeout: float | None = None,
    ) -> Task:
        """Add a stream stage and return its definition (see :meth:`stream`)."""
        from ._stream.define import make_stream_task

        task = make_stream_task(
            name,
            fn,
            inputs=inputs,
            deps=deps,
            kind=kind,
            retries=retries,
            retry_delay=retry_delay,
            timeout=timeout,
            priority=priority,
            resources=resources,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
        )
        self._dag = self._dag.add(task)
        self._records[name] = PENDING_RECORD
        return task

    @overload
    def stream(self, fn: F, /) -> F: ...
    @overload
    def stream(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        inputs: Iterable[str] | None = None,
        deps: Mapping[str, str] | None = None,
        kind: Kind | str | None = None,
        retries: int = 0,
        retry_delay: float = 0.1,
        timeout: float | None = None,
        priority: int = 0,
        resources: Iterable[str] = (),
        batch_size: int | None = None,
        batch_timeout: float | None = None,
    ) -> Callable[[F], F]: ...

    def stream(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        inputs: Iterable[str] | None = None,
        deps: Mapping[str, str] | None = None,
        kind: Kind | str | None = None,
        retries: int = 0,
        retry_delay: float = 0.1,
        timeout: float | None = None,
        priority: int = 0,
        resources: Iterable[str] = (),
        batch_size: int | None = None,
        batch_timeout: float | None = None,
    ) -> F | Callable[[F], F]:
        """Decorator adding a stream stage: ``@g.stream`` or ``@g.stream(kind="cpu", ...)``.

        The function's first parameter receives DataFrame batches: from the stream's
        source if it is named ``source``, else from the stream stage it names (or from
        each of ``inputs=[...]``: a union). Its other parameters name plain tasks (or
        ``deps={"param": "task"}`` maps them), which run once before the stream. It
        returns a DataFrame (an empty one passes nothing on; a sink may return None).
        ``batch_size``
        re-batches its input to at most that many rows per call (larger batches split,
        smaller ones merged); ``batch_timeout`` sends a partial merge after that many
        seconds. Run with :func:`asyncgraph.run_stream` or :func:`asyncgraph.open_stream`.
        """

        def decorate(f: F) -> F:
            self.add_stream(
                name if name is not None else _name_of(f),
                f,
                inputs=inputs,
                deps=deps,
                kind=kind,
                retries=retries,
                retry_delay=retry_delay,
                timeout=timeout,
                priority=priority,
                resources=resources,
                batch_size=batch_size,
                batch_timeout=batch_timeout,
            )
            return f

        return decorate(fn) if fn is not None else decorate

    # -- reading ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._dag)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dag)

    def __contains__(self, name: object) -> bool:
        return name in self._dag

    @property
    def tasks(self) -> Mapping[str, Task]:
        """Task definitions by name (read-only view)."""
        return _Tasks(self)

    @property
    def records(self) -> Mapping[str, TaskRecord]:
        """Each task's record: status, result, error, traceback, attempts, timings."""
        return _ReadOnly(self._records)

    @property
    def status(self) -> dict[str, State]:
        """Each task's :class:`State`, by name, in definition order."""
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
        """The tasks ``name`` depends on, in binding order."""
        dag = self._dag
        (name,) = dag.check_names([name], "dependencies")
        return dag.tasks[name].deps

    def children(self, name: str) -> tuple[str, ...]:
        """The tasks that depend directly on ``name``."""
        dag = self._dag
        (name,) = dag.check_names([name], "children")
        return dag.children(name)

    def sources(self) -> tuple[str, ...]:
        """The tasks without dependencies (where a run starts), in definition order."""
        return tuple(n for n, t in self._dag.tasks.items() if not t.deps)

    def terminals(self) -> tuple[str, ...]:
        """The tasks nothing depends on (where a run ends), in definition order."""
        children = self._dag.child_map()
        return tuple(n for n in self._dag if n not in children)

    def descendants(self, names: Iterable[str | Task] | str | Task) -> set[str]:
        """All tasks downstream of ``names`` (not including them)."""
        dag = self._dag
        return dag.descendants(dag.check_names(names, "descendants"))

    def ancestors(self, names: Iterable[str | Task] | str | Task) -> set[str]:
        """All tasks upstream of ``names`` (not including them)."""
        dag = self._dag
        return dag.ancestors(dag.check_names(names, "ancestors"))

    # -- validation -------------------------------------------------------------------

    def validate(self) -> None:
        """Raise if a dependency is missing or the dependencies form a cycle."""
        self._dag.topological_order()

    def topological_order(self) -> tuple[str, ...]:
        """Task names with every dependency before its dependents.

        Ties are broken by definition order, so the order is deterministic.
        """
        return self._dag.topological_order()

    # -- deriving new graphs (package-internal) -----------------------------------------

    def _derive(
        self: _G,
        records: Mapping[str, TaskRecord] | None = None,
        *,
        origin: str | _Keep | None = _KEEP,
    ) -> _G:
        """A new graph of the same class and tasks with the given records, or a copy of
        this one's (package-internal).

        The two share the Dag (frozen now, so a task added to either goes to a copy); the
        records are copied. ``origin`` replaces the origin; by default it is kept.
        """
        new = object.__new__(type(self))
        new._dag = self._dag.freeze()
        new._records = dict(self._records if records is None else records)
        new._origin = self._origin if isinstance(origin, _Keep) else origin
        new._name = self._name
        return new

    def _with_dag(self: _G, dag: Dag, records: Mapping[str, TaskRecord]) -> _G:
        """A new graph of the same class and origin with another Dag (the same tasks
        with other elements: fan-out) and these records, one per task of ``dag``
        (package-internal)."""
        new = object.__new__(type(self))
        new._dag = dag.freeze()
        new._records = {n: records[n] for n in dag}
        new._origin = self._origin
        new._name = self._name
        return new

    def _subset(self: _G, names: Iterable[str]) -> _G:
        """A new graph of the same class with only ``names`` and their records
        (package-internal; dependencies are not checked), in definition order."""
        new = object.__new__(type(self))
        new._dag = dag = self._dag.subset(names)
        records = self._records
        new._records = {n: records[n] for n in dag}
        new._origin = self._origin
        new._name = self._name
        return new

    # -- failures -----------------------------------------------------------------------

    def raise_for_failures(self: _G) -> _G:
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

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for r in self._records.values():
            counts[r.status.value] = counts.get(r.status.value, 0) + 1
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        named = "" if self._name is None else f" {self._name!r}"
        return f"<Graph{named} {len(self)} tasks" + (f": {detail}>" if detail else ">")

    def _record_copy(self) -> dict[str, TaskRecord]:
        """The records as a dict of the caller's own (package-internal: a run's ledger
        works on one)."""
        return dict(self._records)


def check_graph_name(name: Any) -> str | None:
    """``name`` if it can name a graph (a non-empty str, or None); else TypeError or
    ValueError saying what to pass. A name is stored and printed: one line of text."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"Graph(name=...): a name is a str, not {type(name).__name__}")
    if not name.strip() or any(c in name for c in "\r\n\0"):
        raise ValueError(
            f"Graph(name=...): {name!r} cannot name a graph: give one line of text "
            "(not empty, no newline or NUL), e.g. Graph(name='nightly')"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"Graph(name=...): {name!r} has a lone surrogate, which UTF-8 cannot encode "
            "(the store keeps the name as UTF-8 text): name the graph without it"
        ) from None
    return name


def check_graph(graph: Any, caller: str = "run") -> None:
    """TypeError unless ``graph`` is a Graph, naming the function called (``caller``) and
    what was passed instead: the class itself, a taskmap graph, any other object. Every
    engine and rewrite checks its graph with this, before anything else."""
    if isinstance(graph, BaseGraph):
        return
    if isinstance(graph, type):
        raise TypeError(
            f"{caller}() needs an asyncgraph.Graph, not the class {graph.__qualname__} "
            "itself: pass a graph, e.g. g = ag.Graph(); g.add(...)"
        )
    cls = type(graph)
    where = "" if cls.__module__ == "builtins" else f"{cls.__module__}."
    hint = ""
    if cls.__module__ == "asyncgraph.compat.taskmap":
        hint = " (a taskmap graph: run it with asyncgraph.compat.taskmap's run functions)"
    raise TypeError(f"{caller}() needs an asyncgraph.Graph, not {where}{cls.__qualname__}{hint}")


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
        if isinstance(value, ResultRef):
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
            if isinstance(v, ResultRef):
                text = repr(v.load()) if v.loaded else "<in the store>"
            else:
                text = repr(v)
            shown.append(f"{n!r}: {text}")
        return "{" + ", ".join(shown) + "}"


class _ReadOnly(Mapping[str, Any]):
    """A read-only view of a dict (cheaper than MappingProxyType to type precisely)."""

    __slots__ = ("_d",)

    def __init__(self, d: Mapping[str, Any]) -> None:
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


class _Tasks(Mapping[str, Task]):
    """``graph.tasks``: a read-only view that follows the graph, whose Dag an ``add`` may
    replace by a copy (so a view taken before an ``add`` still sees the new task)."""

    __slots__ = ("_graph",)

    def __init__(self, graph: BaseGraph) -> None:
        self._graph = graph

    def __getitem__(self, key: str) -> Task:
        try:
            return self._graph._dag.tasks[key]
        except KeyError:
            raise UnknownTaskError([key]) from None

    def __contains__(self, key: object) -> bool:
        return key in self._graph._dag

    def __iter__(self) -> Iterator[str]:
        return iter(self._graph._dag)

    def __len__(self) -> int:
        return len(self._graph._dag)

    def __repr__(self) -> str:
        return repr(self._graph._dag.tasks)


#: ``BaseGraph.add``: the decorator builds a task itself (the fast path) unless a
#: subclass has its own ``add``, which it then calls, as before.
_ADD = BaseGraph.add


def _one_or_many(after: Any) -> Any:
    """``after="load"`` (or one Task) is a list of one: order-only deps pass no results,
    so a single name is not ambiguous as it would be for ``deps``."""
    if isinstance(after, (str, Task)) or (callable(after) and not isinstance(after, Iterable)):
        return [after]  # one name, Task, or decorated function
    return after


def _name_of(fn: F) -> str:
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>":
        raise TypeError(f"cannot name a task after {fn!r}; pass name=... to @graph.task(...)")
    return name
