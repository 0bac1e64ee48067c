"""The synchronous scheduling core: no I/O, no event loop, testable on its own.

It has :mod:`graphlib`'s shape. The caller (the async runner) builds it with its lanes
and limits, calls :meth:`prepare` once with the tasks' statuses, then asks
:meth:`get_ready` for the tasks it may start now, starts them, and reports each outcome
with :meth:`done`, :meth:`failed` or :meth:`retry`, then asks again; it stops when
:meth:`is_active` is false. Misuse (a report about a task that is not running, asking
before ``prepare``, preparing twice) raises ValueError with a sentence, as graphlib does.

State it keeps
    ``_waiting[name]``  number of dependencies not yet done, for each task still to run;
    ``_lanes[kind]``    the lane of each kind (kinds may share one): a heap of ready
                        ``(key, name)`` and the capacity used; ``_lane_order`` the lanes
                        in the order they are filled (the executors' order);
    ``_blocked[r, l]``  ready tasks of lane ``l`` parked because named limit ``r`` is
                        exhausted;
    ``_running``        tasks handed out and not yet reported back;
    ``expanding``       templates (mapped tasks) that came up in line: the caller
                        expands them (:meth:`expand`) or, once expanded and their
                        family is done, collects them (:meth:`collect`);
    ``_expanded``       the templates expanded in this run.

Fan-out (see :mod:`asyncgraph._fan`): a template never runs. When it comes up in line
it is handed to the caller in ``expanding`` instead (no capacity taken); the caller
registers its elements with :meth:`expand`, and the template then waits for them as a
task waits for its dependencies; when the last is done it comes up again and the caller
collects it (:meth:`collect`), which makes its dependents ready. The first expansion
copies the shared child lists, keys and tasks, so a run without fan-out pays nothing.

Selection policy
    1. Lanes in order, IO first: :meth:`get_ready` hands out every task of the first lane
       it can before any of the next (IO before CPU), so the loop starts waiting on the
       network while the processes compute.
    2. The user's ``priority``, higher first: it outranks the critical path (Dask's
       rule), so a task given a priority can win over a long chain.
    3. Among equal priorities, the longest remaining path to a terminal task first (the
       critical path): a task with a long chain behind it is started before a leaf.
       Path lengths are sums of weights: 1 per task unless the caller knows durations.
       Not for an IO coroutine task in a lane without a cap (a *free* task, see
       :func:`flat_keys`): it never waits for capacity, since such a lane hands out
       everything it holds at once, so its path would order nothing that waits; its
       key leaves the path out (as a path of 0: after the lane's other tasks of the
       same priority, threads, which anyio's limiter does make wait).
    4. Then definition order (the position in the topological order).

Capacity: each lane has its own (IO: ``max_io``, CPU: ``cpu_slots``), and a task
declaring ``resources=("db",)`` also takes one unit of ``limits["db"]``. A task that is
first in line but whose named limit is exhausted is parked on that limit and does not
hold up tasks behind it. When a unit of a limit frees, the best parked task *of each
lane* goes back into line: one lane may be full while the other's is not, so
waking only the overall best could leave a free unit unused. For the same reason, a task
parked on one limit passes its turn on the others to the next task parked there.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from collections.abc import Callable, Collection, Container, Mapping, Sequence
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

from ._dag import Dag
from ._exceptions import GraphError
from ._state import State
from ._task import Kind, Task

__all__ = [
    "Direct",
    "Lane",
    "Scheduler",
    "Survey",
    "critical_paths",
    "flat_keys",
    "fresh_start",
    "survey",
    "unit_paths",
]

#: A task's queue key: ``(-priority, -path, position[, element index])``, or that order
#: packed into one int (``critical_paths(..., packed=True)``). One kind per Scheduler.
_Key = Any
_RUNNABLE = (State.PENDING, State.RUNNING)
#: What :meth:`Scheduler.done_ready` returns when nothing became ready: one shared empty
#: list (an allocation per completion otherwise); callers never change what it returns.
_NOTHING: list[Task] = []


def critical_paths(
    tasks: Mapping[str, Task],
    order: Sequence[str],
    children: Mapping[str, Sequence[str]],
    among: Mapping[str, object] | None = None,
    weights: Mapping[str, float] | None = None,
    *,
    packed: bool = False,
) -> tuple[dict[str, float], dict[str, _Key]]:
    """Longest remaining path of each task (``among`` only, if given) and its queue key.

    Computed from the terminals up, with plain loops: this runs for every run that cannot
    reuse the graph's cached copy, and generators would cost more than the work.

    ``packed`` (unit weights over every task: no ``among``, no ``weights``): each key is
    one int that orders as the tuple does, ``(-priority * (n + 2) - path) * (n + 1) +
    position`` for ``n`` tasks (a path counts at most ``n`` tasks, a position is below
    ``n``), and each path an int: no tuple and no float made per task, which is most of
    the pass's time on a graph run once, and about 90 bytes a task of the cache. Not for
    a graph with fan-out, whose elements extend their template's key as a tuple
    (:meth:`Scheduler.expand`).
    """
    if packed:
        if among is not None or weights:
            raise ValueError("critical_paths(packed=True) is for unit weights over every task")
        return _packed_paths(tasks, order, children)
    w = weights or {}
    path: dict[str, float] = {}
    keys: dict[str, _Key] = {}
    for i in range(len(order) - 1, -1, -1):
        n = order[i]
        if among is not None and n not in among:
            continue
        below = 0.0
        for c in children.get(n, ()):
            p = path.get(c)
            if p is not None and p > below:
                below = p
        p = w.get(n, 1.0) + below
        path[n] = p
        keys[n] = (-tasks[n].priority, -p, i)
    return path, keys


def _packed_paths(
    tasks: Mapping[str, Task], order: Sequence[str], children: Mapping[str, Sequence[str]]
) -> tuple[dict[str, float], dict[str, _Key]]:
    """``critical_paths(..., packed=True)``: see there."""
    n = len(order)
    m2 = n + 1  # above every position
    m1 = m2 + 1  # above every path
    path: dict[str, float] = {}
    keys: dict[str, _Key] = {}
    get = children.get
    path_of = path.__getitem__
    i = n
    for name in reversed(order):
        i -= 1
        kids = get(name)
        p = 1 + max(map(path_of, kids)) if kids else 1
        path[name] = p
        priority = tasks[name].priority
        keys[name] = (-priority * m1 - p) * m2 + i if priority else i - p * m2
    return path, keys


def flat_keys(
    tasks: Mapping[str, Task], order: Sequence[str], *, packed: bool, prioritized: bool
) -> dict[str, _Key]:
    """The queue keys when every task is free (an IO coroutine in a lane without a cap):
    ``(-priority, 0, position)``, with no path, so no pass from the terminals up.

    ``packed`` (no template: see :func:`critical_paths`): one int per task that orders
    as that tuple, ``position - priority * n``; without any priority (``prioritized``
    false) that is the position, one ``dict(zip(...))`` in C.
    """
    n = len(order)
    if packed:
        if not prioritized:
            return dict(zip(order, range(n), strict=True))
        return {name: i - tasks[name].priority * n for i, name in enumerate(order)}
    return {name: (-tasks[name].priority, 0, i) for i, name in enumerate(order)}


def _free_keys(
    keys: Mapping[str, _Key],
    tasks: Mapping[str, Task],
    order: Sequence[str],
    free: Container[Kind],
) -> dict[str, _Key]:
    """``keys`` (of :func:`critical_paths`) with each free task's path left out: a
    coroutine task of a kind in ``free`` (whose lane has no cap) takes the key of a
    path of 0, packed or not as ``keys`` are. A copy: ``keys`` may be a Dag's cache."""
    out = dict(keys)
    if not out:
        return out
    packed = type(next(iter(out.values()))) is int
    scale = (len(order) + 2) * (len(order) + 1)  # _packed_paths' m1 * m2
    for i, name in enumerate(order):
        if name in out:
            t = tasks[name]
            if t.is_async and t.kind in free:
                out[name] = i - t.priority * scale if packed else (-t.priority, 0, i)
    return out


#: The unit-weight critical paths of each (frozen) Dag, computed once: every run of a
#: graph and of the graphs derived from it shares the Dag, hence this.
_UNIT_PATHS: WeakKeyDictionary[Dag, tuple[dict[str, float], dict[str, _Key]]] = WeakKeyDictionary()


def unit_paths(dag: Dag) -> tuple[dict[str, float], dict[str, _Key]]:
    """:func:`critical_paths` of every task of ``dag`` with unit weights, cached per Dag
    (freezing it: a Dag that is added to afterwards is a copy, with its own entry); the
    keys packed into ints unless the Dag has fan-out (see :func:`critical_paths`)."""
    dag = dag.freeze()
    paths = _UNIT_PATHS.get(dag)
    if paths is None:
        paths = critical_paths(
            dag.tasks, dag.topological_order(), dag.child_map(), packed=not dag.fans
        )
        _UNIT_PATHS[dag] = paths
    return paths


class Survey(NamedTuple):
    """What a run needs to know of every task of its graph, found in one pass per Dag
    (:func:`survey`): the scheduler's checks and the run's choices read it instead of
    each passing over 100k tasks of a graph run once."""

    #: The (kind, is_async) pairs the tasks have: which executors the run uses.
    kinds: frozenset[tuple[Kind, bool]]
    #: The resource names the tasks declare (each needs a limit).
    resources: frozenset[str]
    #: Every task a coroutine function of kind IO without a timeout, keyword arguments or
    #: skip_none: the fused path starts each inline (see :mod:`asyncgraph._fused`).
    plain: bool
    #: Each task's number of dependencies, in topological order (for :func:`fresh_start`).
    indegree: tuple[int, ...]
    #: The tasks with none, in topological order.
    roots: tuple[str, ...]
    #: Some task has a priority other than 0.
    prioritized: bool = True
    #: Some task is a template (mapped: fan-out), whose keys must stay tuples.
    templated: bool = True
    #: The topological order is the definition order (None: not looked at).
    defined: bool | None = None


_SURVEYS: WeakKeyDictionary[Dag, Survey] = WeakKeyDictionary()
_KIND_ASYNC = operator.attrgetter("kind", "is_async")
_PLAIN_FIELDS = operator.attrgetter("timeout", "kwargs", "skip_none")
_RESOURCES = operator.attrgetter("resources")
_DEPS = operator.attrgetter("deps")
_ONLY_IO_COROUTINES = frozenset({(Kind.IO, True)})
_PRIORITY = operator.attrgetter("priority")
_OVER = operator.attrgetter("over")
_NONE_ONLY = frozenset({None})


def survey(dag: Dag) -> Survey:
    """The :class:`Survey` of ``dag``, cached per Dag (freezing it).

    The usual graph (every task a plain IO coroutine: no priority, resource or template)
    is recognised by one Python loop, whose attribute reads the interpreter specializes
    (an ``attrgetter`` in ``map`` goes through the generic lookup: measured about a
    sixth of the instructions of the passes below, and 5 % of a 10k no-op run of a
    graph run once); any other graph, from its first unusual task on, takes one pass in
    C per field (``map`` over the tasks with an ``attrgetter``).
    """
    dag = dag.freeze()
    found = _SURVEYS.get(dag)
    if found is not None:
        return found
    tasks = dag.tasks
    order = dag.topological_order()
    ts = tasks.values()
    io = Kind.IO
    degrees: list[int] = []
    count = degrees.append
    for t in ts:
        if (
            t.kind is not io
            or not t.is_async
            or t.timeout is not None
            or t.kwargs
            or t.skip_none
            or t.resources
            or t.priority
            or t.over is not None
        ):
            break
        count(len(t.deps))
    else:
        if ts and (len(order) == len(degrees)):
            defined = order == tuple(tasks)  # defined dependencies first: one order
            if defined:
                indegree = tuple(degrees)
            else:
                indegree = tuple(map(len, map(_DEPS, map(tasks.__getitem__, order))))
            roots = tuple(itertools.compress(order, map(operator.not_, indegree)))
            found = _SURVEYS[dag] = Survey(
                _ONLY_IO_COROUTINES, frozenset(), True, indegree, roots, False, False, defined
            )
            return found
    kinds = frozenset(map(_KIND_ASYNC, ts))
    resources = frozenset(itertools.chain.from_iterable(map(_RESOURCES, ts)))
    plain = kinds == _ONLY_IO_COROUTINES and not any(
        timeout is not None or kwargs or skip_none
        for timeout, kwargs, skip_none in frozenset(map(_PLAIN_FIELDS, ts))
    )
    indegree = tuple(map(len, map(_DEPS, map(tasks.__getitem__, order))))
    roots = tuple(itertools.compress(order, map(operator.not_, indegree)))
    prioritized = any(map(_PRIORITY, ts))
    templated = frozenset(map(_OVER, ts)) != _NONE_ONLY
    found = _SURVEYS[dag] = Survey(kinds, resources, plain, indegree, roots, prioritized, templated)
    return found


def fresh_start(dag: Dag) -> tuple[dict[str, int], tuple[str, ...]]:
    """Every task's number of dependencies, in topological order, and the tasks with
    none: what :meth:`Scheduler.prepare` computes when every task is pending, for
    :meth:`Scheduler.prepare_fresh`, which takes the dict over.

    The dict is made for each run (one ``dict(zip(...))`` in C from the Dag's
    :func:`survey`): a cached dict would have to be copied for each run, and the two at
    once cost 50 bytes a task of a run's peak memory; the survey's tuple costs 8.
    """
    found = survey(dag)
    return dict(zip(dag.topological_order(), found.indegree, strict=True)), found.roots


_UnitPaths = tuple[dict[str, float], dict[str, _Key]]


class _NoKeys(dict[str, None]):
    """The queue key of every task in the lazy mode: None (see ``Scheduler.lazy_keys``)."""

    def __missing__(self, name: str) -> None:
        return None


_NO_KEYS = _NoKeys()


class Lane(NamedTuple):
    """One lane the scheduler fills: its name, how many of its tasks may run at once
    (None: no cap), and the kinds of task that go to it."""

    name: str
    capacity: int | None
    kinds: tuple[Kind, ...]


class _Lane:
    """The ready queue and capacity of one lane (``used``: its tasks running)."""

    __slots__ = ("capacity", "heap", "name", "used")

    def __init__(self, name: str, capacity: int | None) -> None:
        self.name = name
        self.capacity = capacity
        self.used = 0
        self.heap: list[tuple[_Key, str]] = []


class Direct(NamedTuple):
    """The scheduler's own live structures, for the run's fused path (see
    :meth:`Scheduler.direct`): not copies."""

    tasks: Mapping[str, Task]
    waiting: dict[str, int]
    running: set[str]
    children: Mapping[str, Sequence[str]]
    keys: Callable[[], Mapping[str, _Key]]
    lane: _Lane
    #: Every child list is in key order already: every task free, no priority, and the
    #: topological order the definition order (child lists are in definition order).
    in_order: bool = False


class Scheduler:
    def __init__(
        self,
        tasks: Mapping[str, Task],
        order: Sequence[str],
        status: Mapping[str, State] | None = None,
        *,
        max_io: int | None = None,
        cpu_slots: int = 1,
        limits: Mapping[str, int] | None = None,
        weights: Mapping[str, float] | None = None,
        children: Mapping[str, Sequence[str]] | None = None,
        unit_paths: _UnitPaths | Callable[[], _UnitPaths] | None = None,
        lanes: Sequence[Lane] | None = None,
        survey: Survey | None = None,
        lazy_keys: bool = False,
    ) -> None:
        """Set up the lanes and limits for ``tasks`` (``order``: a topological order).

        ``lanes`` come in the order they are filled (IO first); without them, an
        ``"io"`` lane of ``max_io`` and a ``"cpu"`` lane of ``cpu_slots``. Lanes and
        limits are fixed here, once. ``children`` (every task's dependents) and
        ``unit_paths`` (the result of :func:`critical_paths` over the whole graph with
        unit weights, or a function that returns it) may be passed in by a caller that
        caches them; ``unit_paths`` is used only when every task is to run and no
        ``weights`` are given, since otherwise the paths differ. ``survey`` (the
        :func:`survey` of the Dag these tasks are) spares the checks a pass over the
        tasks. With ``status``, :meth:`prepare` is called too.

        ``lazy_keys`` (from a caller that knows no task is a template): when no named
        limit is set and every task goes to one lane without a cap, :meth:`direct`
        hands out the live structures; and when every task is to run as well, the
        queue keys are computed only when two ready tasks must be ordered
        (:meth:`order_keys`): such a lane hands out all it holds at once, so its queue
        needs no order until then, and a graph that never has two tasks ready together
        (a chain) never pays for its critical paths.
        """
        self._tasks = tasks
        self._order = order
        self._weights = weights
        self._unit_paths = unit_paths
        self._lazy_keys = lazy_keys
        self._limits = dict(limits or {})
        if survey is not None:
            pairs: Collection[tuple[Kind, bool]] = survey.kinds
            unlimited = [r for r in survey.resources if r not in self._limits]
            if unlimited:  # the long way names the first task that declares one
                survey = None
        if survey is None:
            pairs = set(map(_KIND_ASYNC, tasks.values()))
            for t in tasks.values():
                for r in t.resources:
                    if r not in self._limits:
                        raise GraphError(
                            f"task {t.name!r} declares resource {r!r} but no limit is set "
                            f"for it; pass limits={{{r!r}: N}} (limits set: "
                            f"{sorted(self._limits)})"
                        )
        kinds_used = {k for k, _ in pairs}
        if lanes is None:
            lanes = (Lane("io", max_io, (Kind.IO,)), Lane("cpu", cpu_slots, (Kind.CPU,)))
        self._lane_order = [_Lane(lane.name, lane.capacity) for lane in lanes]
        # Kind -> its lane object (kinds may share one): the hot paths index by kind.
        self._lanes: dict[Kind, _Lane] = {}
        for spec, lane in zip(lanes, self._lane_order, strict=True):
            for kind in spec.kinds:
                if kind in self._lanes:
                    raise ValueError(f"kind {kind.value!r} is given two lanes")
                self._lanes[kind] = lane
        if any(kind not in self._lanes for kind in kinds_used):
            for t in tasks.values():
                if t.kind not in self._lanes:
                    raise ValueError(
                        f"task {t.name!r} is of kind {t.kind.value!r}, which no lane takes "
                        f"(lanes: {[lane.name for lane in lanes]})"
                    )
        self._kinds_used = kinds_used
        # Free tasks (see the selection policy): the IO coroutines, when their lane
        # has no cap. Their keys leave the path out; when every task is free, no path
        # is computed at all (flat_keys).
        # Only IO: a CPU coroutine in a lane without a cap (a cluster's) still queues
        # where it goes, in the order handed out.
        self._free: frozenset[Kind] = frozenset(
            k
            for k, is_async in pairs
            if is_async and k is Kind.IO and self._lanes[k].capacity is None
        )
        self._all_free = bool(pairs) and all(is_async and k in self._free for k, is_async in pairs)
        self._defined = None if survey is None else survey.defined
        if survey is not None:
            self._prioritized = survey.prioritized
            self._packable = not survey.templated
        else:
            ts = tasks.values()
            self._prioritized = any(t.priority for t in ts)
            self._packable = bool(ts) and all(t.over is None for t in ts)
        # The first hand-out after a start without keys (lazy) finds the roots in key
        # order when every task is free and none has a priority: no sort (see _take_all).
        self._roots_sorted = False
        self._res_used = dict.fromkeys(self._limits, 0)
        self._blocked: dict[tuple[str, str], list[tuple[_Key, str]]] = {
            (r, lane.name): [] for r in self._limits for lane in self._lane_order
        }
        self._running: set[str] = set()
        self._retrying: set[str] = set()
        self._woken = False
        if children is None:
            acc: dict[str, list[str]] = {}
            for t in tasks.values():
                for d in t.deps:
                    acc.setdefault(d, []).append(t.name)
            children = acc
        # The whole graph's child lists are fine here: done() and _skip_below() pass over
        # children that are not waiting, and the path pass over those without a path.
        self._children = children
        self._waiting: dict[str, int] = {}
        self._keys: dict[str, _Key] = {}
        self._prepared = False
        # The one lane without a cap of a scheduler given lazy_keys (see direct()),
        # once prepared; with every task to run, the keys too wait (``_lazy``) until
        # order_keys() is first asked, which computes them (``_key_source``).
        self._direct: _Lane | None = None
        self._lazy = False
        self._key_source: Callable[[], dict[str, _Key]] | None = None
        self._real_keys: Mapping[str, _Key] = {}
        self.expanding: list[str] = []
        self._expanded: set[str] = set()
        self._own = False  # tasks, children and keys copied (on the first expand)
        self.initially_skipped: tuple[str, ...] = ()
        if status is not None:
            self.prepare(status)

    def prepare(self, status: Mapping[str, State]) -> None:
        """Start from ``status``: every task whose status is PENDING or RUNNING is to run.

        RUNNING counts as pending: it is what a task that never finished looks like.
        A pending task with a failed, skipped or cancelled dependency is skipped at once
        (see :attr:`initially_skipped`); one with a pending dependency waits for it.
        """
        if self._prepared:
            raise ValueError("prepare() was called already: a Scheduler serves one run")
        tasks = self._tasks
        order = self._order
        if len(status) != len(order) or any(n not in status for n in order):
            missing = [n for n in order if n not in status]
            extra = [n for n in status if n not in tasks]
            raise ValueError(
                "prepare() needs the status of every task and of no other: "
                + (f"missing {missing[:5]}" if missing else f"unknown {extra[:5]}")
            )
        for n, st in status.items():
            if type(st) is not State:
                raise ValueError(
                    f"prepare(): the status of {n!r} must be an asyncgraph.State, not "
                    f"{type(st).__name__} {st!r}"
                )
        self._prepared = True
        waiting: dict[str, int] = {}
        skipped: list[str] = []
        for n in order:  # dependencies first, so a skip propagates in one pass
            if status[n] not in _RUNNABLE:
                continue
            left = 0
            for d in tasks[n].deps:
                if d in waiting:
                    left += 1
                elif status[d] is not State.DONE:  # failed, skipped, cancelled, or
                    break  # a runnable dependency that was itself skipped just now
            else:
                waiting[n] = left
                continue
            skipped.append(n)
        self._waiting = waiting
        self.initially_skipped = tuple(skipped)

        if len(waiting) == len(order) and self._go_direct(lazy=True):
            lane = self._direct
            assert lane is not None
            lane.heap.extend((None, n) for n, left in waiting.items() if left == 0)
            self._roots_sorted = self._all_free and not self._prioritized
            return
        self._go_direct(lazy=False)
        self._keys = keys = self._keys_of(None if len(waiting) == len(order) else waiting)
        lanes = self._lanes
        for n, left in waiting.items():
            if left == 0:
                lanes[tasks[n].kind].heap.append((keys[n], n))
        for lane in self._lane_order:
            heapq.heapify(lane.heap)

    def _unit(self) -> _UnitPaths:
        unit_paths = self._unit_paths
        assert unit_paths is not None
        return unit_paths() if callable(unit_paths) else unit_paths

    def _all_keys(self) -> dict[str, _Key]:
        """The queue keys when every task is to run."""
        return self._keys_of(None)

    def _keys_of(self, among: Mapping[str, object] | None) -> dict[str, _Key]:
        """The queue keys of the tasks ``among`` (None: every task), by the selection
        policy: no path for a free task, and none computed when every task is free."""
        tasks = self._tasks
        order = self._order
        if self._all_free:
            return flat_keys(tasks, order, packed=self._packable, prioritized=self._prioritized)
        weights = self._weights
        if among is None and self._unit_paths is not None and weights is None:
            keys = self._unit()[1]
        else:
            keys = critical_paths(tasks, order, self._children, among, weights)[1]
        if self._free:
            return _free_keys(keys, tasks, order, self._free)
        return keys

    def _go_direct(self, lazy: bool) -> bool:
        """Note the one lane without a cap (see ``lazy_keys`` and :meth:`direct`) if
        this scheduler has one: given lazy_keys, no named limit, every task in that
        lane. With ``lazy`` (every task is to run: the caller checked) its keys wait
        too: the queue's entries are ``(None, name)`` (``_keys`` gives None for every
        task) and the real keys come from :meth:`order_keys` when first asked for.
        True if the keys wait."""
        if not self._lazy_keys or self._limits:
            return False
        lanes = {id(self._lanes[k]): self._lanes[k] for k in self._kinds_used}
        if len(lanes) != 1:
            return False
        (lane,) = lanes.values()
        if lane.capacity is not None:
            return False
        self._direct = lane
        if lazy:
            self._lazy = True
            self._keys = _NO_KEYS
            self._key_source = self._all_keys
        return lazy

    def order_keys(self) -> Mapping[str, _Key]:
        """Every task's queue key (computed now if they waited, see ``lazy_keys``)."""
        source = self._key_source
        if source is not None:  # the first ask
            self._key_source = None
            self._real_keys = source()
        return self._real_keys if self._lazy else self._keys

    def prepare_fresh(self, start: tuple[dict[str, int], tuple[str, ...]]) -> None:
        """:meth:`prepare` for a run in which every task is pending, from ``start``
        (:func:`fresh_start` of the Dag these tasks and this order come from, whose
        in-degrees it takes over) instead of a pass over the records. Nothing is
        skipped."""
        if self._prepared:
            raise ValueError("prepare() was called already: a Scheduler serves one run")
        waiting, roots = start
        if len(waiting) != len(self._order):
            raise ValueError("prepare_fresh(): the start is not of this graph (fresh_start)")
        self._prepared = True
        self._waiting = waiting
        self.initially_skipped = ()
        if self._go_direct(lazy=True):
            lane = self._direct
            assert lane is not None
            lane.heap.extend(zip(itertools.repeat(None), roots))
            self._roots_sorted = self._all_free and not self._prioritized
            return
        self._keys = keys = self._all_keys()
        tasks = self._tasks
        lanes = self._lanes
        for n in roots:
            lanes[tasks[n].kind].heap.append((keys[n], n))
        for lane in self._lane_order:
            heapq.heapify(lane.heap)

    # -- queries ---------------------------------------------------------------------

    def is_active(self) -> bool:
        """True while some task is still to run, running or waiting to retry."""
        return bool(self._waiting)

    def left(self) -> int:
        """How many tasks are still to run, running or waiting to retry."""
        return len(self._waiting)

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)

    def pending(self) -> list[str]:
        """Tasks still to run that are not running now (including those awaiting retry)."""
        running = self._running
        if not running:
            return list(self._waiting)
        return [n for n in self._waiting if n not in running]

    def direct(self) -> Direct | None:
        """The live structures behind :meth:`done_ready`, for a caller that applies it
        inline (the run's fused path, :mod:`asyncgraph._fused`), or None unless this
        scheduler was given ``lazy_keys`` (no template) and has no named limit and
        every task in one lane without a cap.

        In such a lane :meth:`get_ready` hands out every queued task at once, so its
        queue is empty between two calls, and ``done_ready(n)`` is exactly: ``running``
        loses ``n``, ``lane.used`` one, ``waiting`` its entry; each child of ``n``
        still in ``waiting`` counts down, and the children that reach 0 are handed out
        in key order (``order_keys()``, asked only when there are two or more and
        ``in_order`` is false: otherwise the order they come in is that order), each
        added to ``running`` and to ``lane.used``. The caller does just that, and goes
        through the methods for everything else (failures, retries, cancels), which
        then find the state they expect.
        """
        lane = self._direct
        if lane is None:
            return None
        in_order = self._all_free and not self._prioritized and self._defined_order()
        return Direct(
            self._tasks,
            self._waiting,
            self._running,
            self._children,
            self.order_keys,
            lane,
            in_order,
        )

    def _defined_order(self) -> bool:
        """The topological order is the tasks' definition order (a tuple compare of
        the same strings: identity, in C)."""
        if self._defined is not None:  # the survey looked
            return self._defined
        order = self._order
        return len(order) == len(self._tasks) and tuple(order) == tuple(self._tasks)

    # -- the protocol ----------------------------------------------------------------

    def get_ready(self) -> list[Task]:
        """Tasks to start now, lane by lane (IO first); their capacity is taken until
        they are reported back."""
        out: list[Task] = []
        lanes = self._lane_order
        for lane in lanes:
            if lane.heap:
                break
        else:
            # Checked here, off the hot path: before prepare() every lane is empty.
            if not self._prepared:
                raise ValueError("prepare() must be called first")
            return out
        if not self._limits:  # no task takes a named limit: one pass, nothing parks
            tasks = self._tasks
            running = self._running
            heappop = heapq.heappop
            for lane in lanes:
                heap = lane.heap
                cap = lane.capacity
                if cap is None and heap:
                    self._take_all(lane, out)
                    continue
                while heap and (cap is None or lane.used < cap):
                    name = heappop(heap)[1]
                    task = tasks[name]
                    if task.over is not None:  # a template: see _fill
                        self.expanding.append(name)
                        break
                    lane.used += 1
                    running.add(name)
                    out.append(task)
            return out
        # Parking a CPU task can wake an IO task parked on another limit, so scan the
        # lanes again until a pass changes nothing (at most a few passes).
        self._woken = True
        while self._woken:
            self._woken = False
            for lane in lanes:
                if lane.heap:
                    self._fill(lane, out)
        return out

    def _take_all(self, lane: _Lane, out: list[Task]) -> None:
        """Hand out the whole queue of a lane without a cap (and no named limits), in
        key order: one sort (in C, and linear on roots that come in key order, as a wide
        graph's do) instead of a ``heappop`` each, which compares tuples ``log n`` times
        for each of a 100k-task graph's roots. The order is the pops' (keys are
        unique); a template stops it there, as in :meth:`_fill`, and what is behind it
        stays queued (a sorted list is a heap)."""
        heap = lane.heap
        if self._roots_sorted:  # the roots, in key order (see __init__): no sort
            self._roots_sorted = False
        elif self._lazy:  # the entries carry no key (see lazy_keys)
            if len(heap) > 1:
                keys = self.order_keys()
                heap[:] = [(keys[n], n) for _, n in heap]
                heap.sort()
        else:
            heap.sort()
        tasks = self._tasks
        running = self._running
        first = len(out)
        taken = 0
        for _, name in heap:
            taken += 1
            task = tasks[name]
            if task.over is not None:  # a template: expanded or collected, never run
                self.expanding.append(name)
                break
            running.add(name)
            out.append(task)
        del heap[:taken]
        lane.used += len(out) - first

    def _fill(self, lane: _Lane, out: list[Task]) -> None:
        heap = lane.heap
        cap = lane.capacity
        tasks = self._tasks
        running = self._running
        while heap and (cap is None or lane.used < cap):
            key, name = heapq.heappop(heap)
            task = tasks[name]
            if task.over is not None:  # a template: expanded or collected, never run
                self.expanding.append(name)
                # Fill no further: its elements, expanded now, may rank before what is
                # next in line (they take its key: priority, path).
                break
            if task.resources:
                res_used = self._res_used
                full = [r for r in task.resources if res_used[r] >= self._limits[r]]
                if full:
                    heapq.heappush(self._blocked[full[0], lane.name], (key, name))
                    for r in task.resources:  # pass its turn on the limits it skipped
                        if res_used[r] < self._limits[r]:
                            self._wake(r, lane)
                    continue
                for r in task.resources:
                    res_used[r] += 1
            lane.used += 1
            running.add(name)
            out.append(task)

    def _wake(self, resource: str, lane: _Lane) -> None:
        parked = self._blocked[resource, lane.name]
        if parked:
            heapq.heappush(lane.heap, heapq.heappop(parked))
            self._woken = True

    def done(self, name: str) -> None:
        """``name`` finished: free its capacity and make ready what waited only on it."""
        try:
            self._running.remove(name)
        except KeyError:
            raise ValueError(_not_running("done", name)) from None
        task = self._tasks[name]
        self._lanes[task.kind].used -= 1
        if task.resources:
            self._release_resources(task)
        waiting = self._waiting
        del waiting[name]
        children = self._children.get(name)
        if children:
            tasks = self._tasks
            lanes = self._lanes
            keys = self._keys
            for c in children:
                left = waiting.get(c)
                if left is not None:
                    waiting[c] = left = left - 1
                    if left == 0:
                        heapq.heappush(lanes[tasks[c].kind].heap, (keys[c], c))

    def done_ready(self, name: str) -> list[Task]:
        """:meth:`done`, then :meth:`get_ready`, in one call: the run's completion path
        (a no-op task costs a few microseconds, and each call is a share of it). The
        list returned is the caller's to read, not to change (it may be shared)."""
        self.done(name)
        if self._limits:
            return self.get_ready()
        # get_ready() without named limits (see there), inline: this runs once per task.
        for lane in self._lane_order:
            if lane.heap:
                break
        else:
            return _NOTHING  # the common case in a wide layer: no list made
        out: list[Task] = []
        tasks = self._tasks
        running = self._running
        heappop = heapq.heappop
        for lane in self._lane_order:
            heap = lane.heap
            cap = lane.capacity
            if cap is None and heap:
                self._take_all(lane, out)
                continue
            while heap and (cap is None or lane.used < cap):
                c = heappop(heap)[1]
                ctask = tasks[c]
                if ctask.over is not None:  # a template: see _fill
                    self.expanding.append(c)
                    break
                lane.used += 1
                running.add(c)
                out.append(ctask)
        return out

    # -- fan-out -----------------------------------------------------------------------

    def expand(self, template: str, elements: Sequence[Task], done: Container[str]) -> None:
        """Register ``template``'s elements: each waits for its dependencies that are
        still to run, and the template for its elements not in ``done``.

        ``template`` must be waiting (handed out in ``expanding``, or a template over
        one being expanded now). Elements take the template's queue key, then their
        position. A template with no element left to run comes up in ``expanding``
        again at once, to be collected.
        """
        waiting = self._waiting
        if template not in waiting or template in self._expanded:
            raise ValueError(f"expand({template!r}): the template is not waiting to be expanded")
        if self._lazy_keys:
            raise ValueError(
                f"expand({template!r}): this scheduler was given lazy_keys (no templates)"
            )
        if not self._own:
            self._own = True
            self._tasks = dict(self._tasks)
            self._children = dict(self._children)
            self._keys = dict(self._keys)
        self._expanded.add(template)
        tasks = self._tasks
        children = self._children
        keys = self._keys
        assert isinstance(tasks, dict)
        assert isinstance(children, dict)
        # It stops waiting for its own dependencies (an element-wise template's are
        # its elements' now): none of them may count it down any more.
        for d in tasks[template].deps:
            ch = children.get(d)
            if ch and template in ch:
                children[d] = [c for c in ch if c != template]
        key = keys[template]
        lanes = self._lanes
        left_in_family = 0
        up = (template,)  # shared: a list replaces it if an element-wise child comes
        ready: list[tuple[_Key, str]] = []
        for j, e in enumerate(elements):
            n = e.name
            tasks[n] = e
            keys[n] = k = (*key, j)
            children[n] = up
            if n in done:
                continue
            left_in_family += 1
            left = 0
            for d in e.deps:
                if d in waiting:
                    left += 1
                    ch = children.get(d)
                    if type(ch) is not list:
                        ch = children[d] = list(ch or ())
                    ch.append(n)
            waiting[n] = left
            if left == 0:
                ready.append((k, n))
        if ready:
            heap = lanes[elements[0].kind].heap
            if len(ready) > len(heap):
                heap.extend(ready)
                heapq.heapify(heap)
            else:
                for item in ready:
                    heapq.heappush(heap, item)
        waiting[template] = left_in_family
        if left_in_family == 0:
            heapq.heappush(lanes[tasks[template].kind].heap, (key, template))

    def waits(self, name: str) -> bool:
        """True if ``name`` is still to run (or, for a template, to be collected)."""
        return name in self._waiting

    def is_expanded(self, template: str) -> bool:
        return template in self._expanded

    def collect(self, template: str) -> None:
        """``template``'s family is done: make ready what waited only on it."""
        if self._waiting.get(template) != 0 or template not in self._expanded:
            raise ValueError(f"collect({template!r}): the family is not done")
        self._release_children(template)

    def fail_template(self, template: str) -> list[str]:
        """``template`` could not be expanded: return the descendants to skip."""
        if template not in self._waiting:
            raise ValueError(f"fail_template({template!r}): the template is not waiting")
        del self._waiting[template]
        return self._skip_below(template)

    def _release_children(self, name: str) -> None:
        waiting = self._waiting
        del waiting[name]
        children = self._children.get(name)
        if children:
            tasks = self._tasks
            lanes = self._lanes
            keys = self._keys
            for c in children:
                left = waiting.get(c)
                if left is not None:
                    waiting[c] = left = left - 1
                    if left == 0:
                        heapq.heappush(lanes[tasks[c].kind].heap, (keys[c], c))

    def failed(self, name: str) -> list[str]:
        """``name`` failed for good: free its capacity; return the descendants to skip."""
        self._release(name, "failed")
        del self._waiting[name]
        return self._skip_below(name)

    def retry(self, name: str) -> None:
        """``name`` failed but will try again: free its capacity until :meth:`requeue`."""
        self._release(name, "retry")
        self._retrying.add(name)

    def requeue(self, name: str) -> None:
        """A task's retry delay has passed: put it back in line."""
        try:
            self._retrying.remove(name)
        except KeyError:
            raise ValueError(
                f"requeue({name!r}): the task is not waiting to retry (retry() first)"
            ) from None
        heapq.heappush(self._lanes[self._tasks[name].kind].heap, (self._keys[name], name))

    def drop(self, name: str) -> list[str]:
        """Take ``name``, a task still to run that is not running (waiting for its
        dependencies, in line, parked on a limit, or waiting to retry), out of the run:
        it will not start. Return its descendants to skip (as for a failure)."""
        if name not in self._waiting or name in self._running:
            raise ValueError(f"drop({name!r}): the task is not waiting to run")
        self._retrying.discard(name)
        self._roots_sorted = False  # the heapify below reorders a queue without keys
        for heap in (*(lane.heap for lane in self._lane_order), *self._blocked.values()):
            for i, (_, n) in enumerate(heap):
                if n == name:
                    heap[i] = heap[-1]
                    heap.pop()
                    heapq.heapify(heap)
                    break
        del self._waiting[name]
        return self._skip_below(name)

    def cancel(self) -> tuple[list[str], list[str]]:
        """Stop everything: return (tasks that were running, tasks never started).

        After this the scheduler is inactive and hands out nothing.
        """
        running = sorted(self._running)
        rest = [n for n in self._waiting if n not in self._running]
        self._running.clear()
        self._waiting.clear()
        for lane in self._lane_order:
            lane.heap.clear()
        for parked in self._blocked.values():
            parked.clear()
        self._retrying.clear()
        return running, rest

    # -- internals ---------------------------------------------------------------------

    def _release(self, name: str, verb: str) -> None:
        try:
            self._running.remove(name)
        except KeyError:
            raise ValueError(_not_running(verb, name)) from None
        task = self._tasks[name]
        self._lanes[task.kind].used -= 1
        if task.resources:
            self._release_resources(task)

    def _release_resources(self, task: Task) -> None:
        for r in task.resources:
            self._res_used[r] -= 1
            for lane in self._lane_order:
                self._wake(r, lane)

    def _skip_below(self, name: str) -> list[str]:
        out = []
        stack = [name]
        while stack:
            for c in self._children.get(stack.pop(), ()):
                if c in self._waiting:
                    del self._waiting[c]
                    out.append(c)
                    stack.append(c)
        return out


def _not_running(verb: str, name: str) -> str:
    # graphlib's rule: a report about a node that was not handed out is the caller's
    # bug, said in a sentence, not a KeyError from deep inside.
    return (
        f"{verb}({name!r}): the task is not running (it was not handed out by "
        "get_ready(), or was reported already)"
    )
