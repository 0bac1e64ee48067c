"""Hypothesis strategies for random DAGs, and a plain reference evaluation of them.

A DAG is drawn as ``n`` tasks where task ``i`` depends on a subset of tasks ``0..i-1``, so
it is acyclic by construction and index order is a topological order. Task names are a
random permutation of ``t0..t{n-1}`` (so name order says nothing about dependency order),
and the order in which tasks are added to a graph is another random permutation (so a
task may be added before its dependencies).

Imported by ``tests/test_properties.py`` as ``from strategies import ...`` (tests/ has no
``__init__.py``; pytest's default "prepend" import mode puts tests/ on ``sys.path``).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

import asyncgraph as ag
from asyncgraph._state import NO_RESULT

MAX_TASKS = 25
RESOURCE_NAMES = ("db", "net", "disk")
_MOD = (1 << 61) - 1


@dataclass(frozen=True)
class Dag:
    """``names[i]`` depends on ``names[j] for j in deps[i]`` (each j < i), in that order."""

    names: tuple[str, ...]
    deps: tuple[tuple[int, ...], ...]
    add_order: tuple[int, ...]  # the order tasks are added to a Graph (a permutation)
    _children: dict[int, list[int]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for i, ds in enumerate(self.deps):
            for d in ds:
                self._children.setdefault(d, []).append(i)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def topo(self) -> tuple[str, ...]:
        """A topological order (index order)."""
        return self.names

    def dep_names(self, name: str) -> tuple[str, ...]:
        return tuple(self.names[j] for j in self.deps[self.index(name)])

    def index(self, name: str) -> int:
        return self.names.index(name)

    def children(self, name: str) -> list[str]:
        return [self.names[c] for c in self._children.get(self.index(name), ())]

    def descendants(self, names: Iterable[str]) -> set[str]:
        """Every task downstream of ``names``, not including them (unless reached)."""
        seen: set[str] = set()
        stack = list(names)
        while stack:
            for c in self.children(stack.pop()):
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return seen

    def ancestors(self, names: Iterable[str]) -> set[str]:
        seen: set[str] = set()
        stack = list(names)
        while stack:
            for d in self.dep_names(stack.pop()):
                if d not in seen:
                    seen.add(d)
                    stack.append(d)
        return seen


@st.composite
def dags(draw: st.DrawFn, min_tasks: int = 1, max_tasks: int = MAX_TASKS) -> Dag:
    n = draw(st.integers(min_tasks, max_tasks))
    deps: list[tuple[int, ...]] = []
    for i in range(n):
        if i == 0:
            deps.append(())
            continue
        # Bias towards few dependencies but allow wide fan-in; order matters (binding order).
        ds = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=min(i, 5)))
        deps.append(tuple(ds))
    perm = draw(st.permutations(range(n)))
    names = tuple(f"t{p}" for p in perm)
    add_order = tuple(draw(st.permutations(range(n))))
    return Dag(names=names, deps=tuple(deps), add_order=add_order)


def subsets(items: Sequence[str]) -> st.SearchStrategy[frozenset[str]]:
    if not items:
        return st.just(frozenset())
    return st.frozensets(st.sampled_from(list(items)))


@st.composite
def sparse_subsets(draw: st.DrawFn, items: Sequence[str], one_in: int = 6) -> frozenset[str]:
    """Each item independently, with probability about ``1/one_in`` (for broken tasks)."""
    return frozenset(n for n in items if draw(st.integers(1, one_in)) == one_in)


# -- scheduler cases --------------------------------------------------------------------


@dataclass(frozen=True)
class SchedCase:
    dag: Dag
    kinds: Mapping[str, ag.Kind]
    priority: Mapping[str, int]
    resources: Mapping[str, tuple[str, ...]]
    limits: Mapping[str, int]
    max_io: int | None
    cpu_slots: int
    failing: frozenset[str]  # every attempt fails
    retries: Mapping[str, int]


@st.composite
def sched_cases(draw: st.DrawFn, allow_cpu: bool = True) -> SchedCase:
    dag = draw(dags())
    kind_st = st.sampled_from([ag.Kind.IO, ag.Kind.CPU]) if allow_cpu else st.just(ag.Kind.IO)
    limit_names = draw(st.lists(st.sampled_from(RESOURCE_NAMES), unique=True))
    limits = {r: draw(st.integers(1, 3)) for r in limit_names}
    res_st = (
        st.lists(st.sampled_from(limit_names), unique=True, max_size=2).map(tuple)
        if limit_names
        else st.just(())
    )
    kinds, priority, resources, retries = {}, {}, {}, {}
    for name in dag.names:
        kinds[name] = draw(kind_st)
        priority[name] = draw(st.integers(-2, 2))
        resources[name] = draw(res_st)
        retries[name] = draw(st.integers(0, 2))
    return SchedCase(
        dag=dag,
        kinds=kinds,
        priority=priority,
        resources=resources,
        limits=limits,
        max_io=draw(st.one_of(st.none(), st.integers(1, 4))),
        cpu_slots=draw(st.integers(1, 3)),
        failing=draw(sparse_subsets(dag.names)),
        retries=retries,
    )


# -- full-run cases ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunCase:
    dag: Dag
    failing: frozenset[str]  # raise on every call while "broken"
    sync: frozenset[str]  # plain functions (run in threads); the rest are coroutines
    dict_style: frozenset[str]  # deps given as {"p0": dep0, ...}, passed by keyword
    yields: Mapping[str, int]  # how many times a coroutine yields to the loop
    resources: Mapping[str, tuple[str, ...]]
    limits: Mapping[str, int]
    max_io: int | None


@st.composite
def run_cases(draw: st.DrawFn, max_tasks: int = MAX_TASKS) -> RunCase:
    dag = draw(dags(max_tasks=max_tasks))
    names = dag.names
    limit_names = draw(st.lists(st.sampled_from(RESOURCE_NAMES), unique=True, max_size=2))
    limits = {r: draw(st.integers(1, 3)) for r in limit_names}
    res_st = (
        st.lists(st.sampled_from(limit_names), unique=True, max_size=2).map(tuple)
        if limit_names
        else st.just(())
    )
    # Mostly coroutines: at most about a quarter of the tasks are plain functions.
    n_sync = draw(st.integers(0, max(1, len(names) // 4)))
    sync = frozenset(draw(st.permutations(names))[:n_sync])
    return RunCase(
        dag=dag,
        failing=draw(sparse_subsets(names)),
        sync=sync,
        dict_style=draw(subsets(names)),
        yields={n: draw(st.integers(0, 3)) for n in names},
        resources={n: draw(res_st) for n in names},
        limits=limits,
        max_io=draw(st.one_of(st.none(), st.integers(1, 4))),
    )


# -- the reference semantics -------------------------------------------------------------


def value_of(name: str, args: Sequence[Any]) -> int:
    """The deterministic result of task ``name`` given its dependencies' results, in order.

    Position-sensitive, so a dependency passed in the wrong place changes the value.
    """
    v = zlib.crc32(name.encode())
    for k, a in enumerate(args):
        v = (v * 1_000_003 + (k + 1) * (a if isinstance(a, int) else 7919)) % _MOD
    return v


def reference_run(
    dag: Dag,
    broken: Iterable[str],
    initial: Mapping[str, tuple[ag.State, Any]] | None = None,
) -> tuple[dict[str, ag.State], dict[str, Any]]:
    """Sequential evaluation in topological order: (final status, results of done tasks).

    ``initial`` gives tasks' states before the run (default: all pending). Pending and
    running tasks run; a task whose dependency did not end done is skipped; a broken task
    fails; done tasks keep their result; failed, skipped and cancelled ones stay so. A
    task below one done without a result (``NO_RESULT``) fails without being called.
    """
    broken = set(broken)
    initial = initial or {}
    status: dict[str, ag.State] = {}
    results: dict[str, Any] = {}
    for name in dag.topo:
        st0, res0 = initial.get(name, (ag.State.PENDING, None))
        if st0 not in (ag.State.PENDING, ag.State.RUNNING):
            status[name] = st0
            if st0 is ag.State.DONE:
                results[name] = res0
            continue
        deps = dag.dep_names(name)
        if any(status[d] is not ag.State.DONE for d in deps):
            status[name] = ag.State.SKIPPED
        elif any(results[d] is NO_RESULT for d in deps) or name in broken:
            status[name] = ag.State.FAILED
        else:
            status[name] = ag.State.DONE
            results[name] = value_of(name, [results[d] for d in deps])
    return status, results


# -- random task records (states a graph may carry before a run or a rewrite) -----------

_EXTRA_PENDING = [ag.State.PENDING] * 3


@st.composite
def records_for(draw: st.DrawFn, dag: Dag, *, consistent: bool = False) -> dict[str, Any]:
    """A TaskRecord per task with a random state (mostly pending).

    With ``consistent`` only done tasks carry a result and only failed and cancelled ones
    an error, as after a real run; otherwise any record may carry leftovers.
    """
    out = {}
    for name in dag.names:
        s = draw(st.sampled_from([*_EXTRA_PENDING, *ag.State]))
        if s is ag.State.DONE or not consistent:
            result = draw(st.one_of(st.none(), st.integers(0, 10**6)))
        else:
            result = None
        error = (
            RuntimeError(f"old error of {name}")
            if s in (ag.State.FAILED, ag.State.CANCELLED)
            or (not consistent and draw(st.booleans()))
            else None
        )
        out[name] = ag.TaskRecord(
            status=s, result=result, error=error, attempts=draw(st.integers(0, 2))
        )
    return out


# -- driver scenarios (test_properties.py section 5) ------------------------------------

HOLDER = "hold"  # the extra task that holds the named limit while its sibling waits


@st.composite
def scenario_specs(draw: st.DrawFn, max_tasks: int = 10) -> tuple[Dag, dict[str, Any]]:
    """A random graph for ``reliability_driver.scenario_main``, as its JSON spec.

    Mostly coroutines, some plain functions (threads) and CPU tasks; up to two results
    of 2-5 MB (bytes) and sometimes a DataFrame of a few MB; a few broken tasks; and, in
    most specs, a holder: an extra task that takes the named limit ``slot`` (1) and
    keeps it until a chosen task ``after`` has ended, while ``after``'s child ``waiter``
    also needs ``slot``: the waiter starts only after its parent's result is committed,
    and the driver can be killed in between.
    """
    dag = draw(dags(min_tasks=2, max_tasks=max_tasks))
    names = dag.names
    kind_st = st.sampled_from(["io", "io", "io", "thread", "cpu"])
    kinds = {n: draw(kind_st, label=f"kind {n}") for n in names}
    if "cpu" not in kinds.values() and draw(st.booleans(), label="one cpu task"):
        kinds[draw(st.sampled_from(names), label="cpu task")] = "cpu"
    big_names = draw(st.lists(st.sampled_from(names), unique=True, max_size=2), label="big")
    big = {n: draw(st.integers(2, 5), label=f"MB {n}") << 20 for n in big_names}
    rows: dict[str, int] = {}
    rest = [n for n in names if n not in big]
    if rest and draw(st.integers(1, 6), label="a frame") == 6:
        rows[draw(st.sampled_from(rest), label="frame task")] = 1 << 18  # 2 MiB of int64
    broken = draw(sparse_subsets(names, one_in=8), label="broken")
    # The waiter must be able to end done (no broken task above it): else its result
    # never exists and the window of a stale result never opens.
    edges = [
        (p, c) for c in names for p in dag.dep_names(c) if not ({c} | dag.ancestors([c])) & broken
    ]
    holder = None
    if edges and draw(st.integers(1, 4), label="holder") > 1:
        after, waiter = draw(st.sampled_from(edges), label="holder edge")
        holder = {"name": HOLDER, "after": after, "waiter": waiter}
    spec = {
        "names": list(names),
        "deps": [list(ds) for ds in dag.deps],
        "add_order": list(dag.add_order),
        "kinds": kinds,
        "big": big,
        "rows": rows,
        "broken": sorted(broken),
        "retries": {
            n: draw(st.integers(0, 1), label=f"retries {n}") for n in names if kinds[n] == "cpu"
        },
        "holder": holder,
    }
    return dag, spec
