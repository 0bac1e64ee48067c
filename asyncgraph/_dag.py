"""The structure of a graph: its tasks and what depends on what. No records, no I/O.

A :class:`Dag` holds the tasks by name, in the order they were added, and answers the
structural questions: each task's children, a topological order (or the cycle that
prevents one), what lies up- or downstream of some tasks, and the longest weighted
chains (the critical path of a report, the queue keys of a scheduler).

Graphs derived from one another (a run's result, every rewrite) share one Dag, so what
it computes is computed once for all of them. Sharing is safe because a shared Dag is
*frozen*: :meth:`Dag.add` on a frozen Dag adds to a copy and returns the copy, so a
graph never sees a task added to another. A module that caches something computed from
a Dag (per Dag, in a ``WeakKeyDictionary``) calls :meth:`Dag.freeze` first, which makes
the same promise to it.

State it keeps
    ``_tasks``     name -> Task, in definition order (the only thing ``add`` changes);
    ``_frozen``    set once the Dag is shared or cached on: from then on it never changes;
    ``_order``     the topological order, once computed;
    ``_children``  each task's dependents, once computed (tasks without any are absent);
    ``_fan``       True once a mapped task (a template) or an element was added;
    ``_families``  each template's elements, in order, once computed (fan-out only).
The caches are dropped by an ``add`` in place (which only an unfrozen Dag allows).

Fan-out (see :mod:`._fan`): an element ``score[k]`` depends on what its template
depends on, and the template stands for the whole family, so the structure has one
more kind of edge: element -> its template (``score[k]`` is upstream of ``score``).
``child_map``, ``ancestors``, ``descendants`` and the topological order count it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping

from ._exceptions import CycleError, DuplicateTaskError, MissingDependencyError, UnknownTaskError
from ._task import Task, short_repr, task_name

__all__ = ["Dag"]


class Dag:
    """Tasks by name and the dependencies between them (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_children",
        "_families",
        "_fan",
        "_frozen",
        "_order",
        "_static",
        "_tasks",
    )

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        self._tasks: dict[str, Task] = {}
        self._frozen = False
        self._order: tuple[str, ...] | None = None
        self._children: dict[str, tuple[str, ...]] | None = None
        self._fan = False
        self._families: dict[str, tuple[str, ...]] | None = None
        self._static: Dag | None = None
        for task in tasks:
            self.add(task)

    # -- building ---------------------------------------------------------------------

    def add(self, task: Task) -> Dag:
        """Add ``task``; return the Dag that holds it.

        That is this Dag, or a copy of it when this one is frozen (shared with another
        graph, or cached on): the caller keeps the returned Dag. Raises
        :class:`DuplicateTaskError` if the name is taken, before anything changes.
        """
        # Every task of a graph built by add() passes here: kept to a few operations.
        name = task.name
        tasks = self._tasks
        if name in tasks:
            raise DuplicateTaskError(name)
        if self._frozen:
            dag = self._copy()
            dag._tasks[name] = task
            if task.over is not None or task.family is not None:
                dag._fan = True
            return dag
        tasks[name] = task
        self._order = self._children = None
        if task.over is not None or task.family is not None:
            self._fan = True
            self._families = None
        return self

    def _copy(self) -> Dag:
        new = Dag.__new__(Dag)
        new._tasks = dict(self._tasks)
        new._frozen = False
        new._order = None
        new._children = None
        new._fan = self._fan
        new._families = None
        new._static = None
        return new

    def freeze(self) -> Dag:
        """Promise that this Dag never changes again (a later ``add`` copies); return it.

        Called before sharing it with another graph, and by anything that caches what it
        computed from it.
        """
        self._frozen = True
        return self

    @property
    def frozen(self) -> bool:
        return self._frozen

    def subset(self, names: Iterable[str]) -> Dag:
        """A new Dag of the tasks named, in this Dag's order (dependencies not checked)."""
        keep = set(names)
        new = Dag()
        new._tasks = {n: t for n, t in self._tasks.items() if n in keep}
        new._fan = self._fan
        return new

    # -- fan-out ----------------------------------------------------------------------

    @property
    def fans(self) -> bool:
        """True if some task is mapped (a template) or is an element."""
        return self._fan

    def families(self) -> Mapping[str, tuple[str, ...]]:
        """Each template's elements in this Dag, in family order (templates that have
        none are absent); empty without fan-out."""
        if self._families is None:
            acc: dict[str, list[tuple[int, str]]] = {}
            if self._fan:
                for t in self._tasks.values():
                    if t.family is not None:
                        acc.setdefault(t.family, []).append((getattr(t, "index", 0), t.name))
            self._families = {f: tuple(n for _, n in sorted(v)) for f, v in acc.items()}
        return self._families

    def static(self) -> Dag:
        """This Dag without its elements (itself when it has none): what a run
        schedules before it expands anything. Frozen, and cached on a frozen Dag."""
        if not self._fan:
            return self
        if self._static is None or not self._frozen:
            tasks = self._tasks
            elements = {m for t, members in self.families().items() if t in tasks for m in members}
            if not elements:
                return self
            static = self.subset(n for n in self._tasks if n not in elements).freeze()
            if not self._frozen:
                return static
            self._static = static
        return self._static

    def with_elements(self, drop: Iterable[str], add: Iterable[Task]) -> Dag:
        """A new Dag: this one without the elements ``drop``, with ``add`` after it."""
        gone = set(drop)
        new = Dag.__new__(Dag)
        new._tasks = {n: t for n, t in self._tasks.items() if n not in gone}
        new._frozen = False
        new._order = None
        new._children = None
        new._fan = True
        new._families = None
        new._static = None
        for t in add:
            if t.name in new._tasks:
                raise DuplicateTaskError(t.name)
            new._tasks[t.name] = t
        return new

    # -- reading ----------------------------------------------------------------------

    @property
    def tasks(self) -> Mapping[str, Task]:
        """The tasks by name, in definition order (the Dag's own dict: do not change it)."""
        return self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else "open"
        return f"<Dag of {len(self._tasks)} tasks ({state})>"

    def check_names(self, names: Iterable[str | Task] | str | Task, where: str) -> list[str]:
        """``names`` as a list, or TypeError / :class:`UnknownTaskError` naming ``where``.

        One name or an iterable of names; every unknown name is listed at once. A
        :class:`Task` stands for its name.
        """
        if isinstance(names, (str, Task)):
            out = [task_name(names)]
        elif isinstance(names, Iterable):
            out = [task_name(n) for n in names]
        else:
            raise TypeError(
                f"{where}: expected a task name or a list of task names, not {short_repr(names)}"
            )
        wrong = [n for n in out if not isinstance(n, str)]
        if wrong:
            bad = short_repr(wrong[0]).partition(" ")[2]
            raise TypeError(f"{where}: task names are strings, not {bad}")
        unknown = [n for n in out if n not in self._tasks]
        if unknown:
            raise UnknownTaskError(unknown, where=where)
        return out

    def child_map(self) -> Mapping[str, tuple[str, ...]]:
        """Each task's dependents, in definition order; tasks without any are absent."""
        if self._children is None:
            acc: dict[str, list[str]] = {}
            for t in self._tasks.values():
                for d in t.deps:
                    acc.setdefault(d, []).append(t.name)
            if self._fan:  # an element is upstream of its template (the family)
                for template, members in self.families().items():
                    if template in self._tasks:
                        for m in members:
                            acc.setdefault(m, []).append(template)
            self._children = {k: tuple(v) for k, v in acc.items()}
        return self._children

    def children(self, name: str) -> tuple[str, ...]:
        return self.child_map().get(name, ())

    def descendants(self, names: Iterable[str]) -> set[str]:
        """All tasks downstream of ``names`` (not including them)."""
        return _reach(names, self.child_map().get)

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """All tasks upstream of ``names`` (not including them)."""
        tasks = self._tasks
        if self._fan:
            families = self.families()
            return _reach(names, lambda n: (*tasks[n].deps, *families.get(n, ())))
        return _reach(names, lambda n: tasks[n].deps)

    def upstream(self, name: str) -> tuple[str, ...]:
        """What ``name`` waits for: its dependencies, and a template's elements too."""
        deps = self._tasks[name].deps
        if self._fan:
            members = self.families().get(name)
            if members:
                return (*deps, *members)
        return deps

    # -- order ------------------------------------------------------------------------

    def topological_order(self) -> tuple[str, ...]:
        """Task names with every dependency before its dependents (computed once).

        Ties are broken by definition order, so the order is deterministic. Raises
        :class:`MissingDependencyError` (the first task, in definition order, naming a
        task that does not exist) or :class:`CycleError` (one cycle, in dependency order).
        """
        if self._order is not None:
            return self._order
        tasks = self._tasks
        if not self._fan:
            # Most graphs are defined dependencies first: then the definition order is a
            # topological order, and the smallest one by position, which is what the
            # heap below gives. One pass proves it, and gathers the children on the way
            # (as the heap's path does, so a run finds them made); any other graph takes
            # the heap.
            seen: set[str] = set()
            add = seen.add
            acc: dict[str, list[str]] = {}
            for n, t in tasks.items():
                for d in t.deps:
                    if d not in seen:
                        break
                    kids = acc.get(d)
                    if kids is None:
                        acc[d] = [n]
                    else:
                        kids.append(n)
                else:
                    add(n)
                    continue
                break
            else:
                if self._children is None:
                    self._children = {k: tuple(v) for k, v in acc.items()}
                self._order = tuple(tasks)
                return self._order
        for t in tasks.values():
            missing = [d for d in t.deps if d not in tasks]
            if missing:
                raise MissingDependencyError(t.name, missing)
        indegree = {n: len(t.deps) for n, t in tasks.items()}
        if self._fan:
            for template, members in self.families().items():
                if template in indegree:
                    indegree[template] += len(members)
        children = self.child_map()
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
            stuck = {n for n, k in indegree.items() if k}
            raise CycleError(self._find_cycle(min(stuck, key=position.__getitem__), stuck))
        self._order = tuple(order)
        return self._order

    def _find_cycle(self, node: str, stuck: set[str]) -> list[str]:
        # Every task left with a positive in-degree lies on or below a cycle, and each has
        # a dependency that is also stuck: walk dependencies until a task repeats.
        seen: dict[str, int] = {}
        path: list[str] = []
        while node not in seen:
            seen[node] = len(path)
            path.append(node)
            node = next(d for d in self.upstream(node) if d in stuck)
        cycle = path[seen[node] :]
        # path follows "depends on" edges; report it in dependency order (a needs b ...)
        return [*cycle, cycle[0]]

    def longest_paths(
        self, weights: Mapping[str, float], *, downstream: bool = False
    ) -> tuple[dict[str, float], dict[str, str]]:
        """The longest weighted chain through each task of ``weights``: lengths and links.

        Only the tasks in ``weights`` are on chains (any other task breaks a chain). By
        default a chain *ends* at the task and the link is the task before it (a
        dependency); with ``downstream=True`` it *starts* there and the link is the next
        one (a child). A task whose chain is itself alone has no link. Ties keep the
        first candidate: dependencies in binding order, children in definition order.
        Both dicts are filled in the direction of the walk (topological order, or its
        reverse with ``downstream``), so the first of equal maxima is well defined.
        """
        order = self.topological_order()
        children = self.child_map()
        length: dict[str, float] = {}
        link: dict[str, str] = {}
        for n in reversed(order) if downstream else order:
            w = weights.get(n)
            if w is None:
                continue
            best = 0.0
            via: str | None = None
            for m in children.get(n, ()) if downstream else self.upstream(n):
                p = length.get(m)
                if p is not None and p > best:
                    best, via = p, m
            length[n] = best + w
            if via is not None:
                link[n] = via
        return length, link


def _reach(start: Iterable[str], step: Callable[[str], Iterable[str] | None]) -> set[str]:
    seen: set[str] = set()
    stack = list(start)
    while stack:
        for nxt in step(stack.pop()) or ():
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen
