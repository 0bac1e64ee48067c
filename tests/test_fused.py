"""The run's fused path and the keys computed when needed (issue 15) give what the long
way gives.

A run with no fan-out, no named limits and no store, every task in one lane without a
cap, takes ``asyncgraph._fused``'s done-callback and start, and its scheduler computes
the queue keys only when two ready tasks must first be ordered (``lazy_keys``), packed
into ints. Each test holds a run (or a scheduler) that way against the long way
(``_Run.fuse = False``: the generic done-callback, ``done_ready`` and ``_start``; keys
computed up front, as tuples) on the same graph: the same records, the same events in
the same order, the same start order, the same errors, on random graphs with
priorities, failures, retries, timeouts, keyword arguments, ``skip_none``, plain
functions and tasks marked done without a result; and under ``fail_fast``, a deadline,
``OpenRun.cancel(name)`` and a cancelled run, nothing outlives the run.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest
from conftest import run_until_deadline

import asyncgraph as ag
from asyncgraph import _scheduler
from asyncgraph._lifetime import start
from asyncgraph._options import RunOptions
from asyncgraph._runner import _Run
from asyncgraph._scheduler import Scheduler, critical_paths, fresh_start, survey, unit_paths


class Journal:
    """What one run did, in order: each coroutine's first step, each event."""

    def __init__(self) -> None:
        self.began: list[str] = []
        self.events: list[tuple[str, str, int]] = []
        self.tries: dict[str, int] = {}

    def on_event(self, event: ag.Event) -> None:
        self.events.append((event.kind.value, event.task, event.attempt))


def random_graph(seed: int, journal: Journal, n: int = 50, *, mixed: bool = True) -> ag.Graph:
    """Coroutine tasks passing results on (1-3 dependencies each), with random
    priorities; ``mixed`` adds tasks that fail, fail once then succeed (retries), time
    out, take keyword arguments, await (a loop trip), or are plain functions (run in
    threads: these record no start, their order is the threads')."""
    rnd = random.Random(seed)
    g = ag.Graph()
    names: list[str] = []
    for i in range(n):
        name = f"t{i}"
        deps = rnd.sample(names, rnd.randint(0, min(3, len(names))))
        roll = rnd.random() if mixed else 1.0
        opts: dict[str, Any] = {"priority": rnd.choice([0, 0, 0, 1, -1])}

        def body(name: str = name, roll: float = roll) -> Any:
            async def fn(*args: Any, **kwargs: Any) -> Any:
                journal.began.append(name)
                journal.tries[name] = journal.tries.get(name, 0) + 1
                if roll < 0.06:
                    raise ValueError(f"{name} fails")
                if roll < 0.12 and journal.tries[name] == 1:
                    raise KeyError(f"{name} fails once")
                if 0.12 <= roll < 0.18:
                    await asyncio.sleep(0)
                elif 0.18 <= roll < 0.21:
                    await asyncio.sleep(3600)  # its timeout ends it
                return sum(a for a in args if a is not None) + len(kwargs) + 1

            return fn

        if roll < 0.12:
            opts["retries"] = 1
            opts["retry_delay"] = 0
        if 0.18 <= roll < 0.21:
            opts["timeout"] = 0.01
        if 0.21 <= roll < 0.27 and deps:
            g.add(name, body(), deps={f"p{k}": d for k, d in enumerate(deps)}, **opts)
        elif 0.27 <= roll < 0.31:
            g.add(name, lambda *a: None, deps=deps, **opts)  # plain: a thread, None
        else:
            g.add(name, body(), deps=deps, **opts)
        names.append(name)
    return g


def strip(graph: ag.Graph) -> dict[str, tuple[Any, ...]]:
    """Each record without its times (which differ between any two runs)."""
    return {
        n: (r.status, r.result, type(r.error).__name__, str(r.error), r.attempts)
        for n, r in graph.records.items()
    }


async def both(make: Any, **options: Any) -> tuple[tuple[Any, Journal, _Run], ...]:
    """Run ``make(journal)``'s graph the fused way, then the long way."""
    out = []
    for fuse in (True, False):
        journal = Journal()
        g = make(journal)
        runs: list[_Run] = []
        opts = RunOptions(on_event=journal.on_event, **options)
        _Run.fuse = fuse
        try:
            try:
                result: Any = await start(g, opts, on_run=runs.append)  # type: ignore[arg-type]
            except ag.TaskFailures as exc:
                result = exc
        finally:
            _Run.fuse = True
        out.append((result, journal, runs[0]))
    return tuple(out)


def took_the_fused_path(run: _Run) -> bool:
    return run._launch.__qualname__.startswith("fused.")


@pytest.mark.parametrize("seed", range(8))
async def test_a_plain_graph_runs_the_same_both_ways(seed):
    (fused, jf, rf), (long, jl, rl) = await both(lambda j: random_graph(seed, j, mixed=False))
    assert took_the_fused_path(rf) and not took_the_fused_path(rl)
    assert strip(fused) == strip(long)
    assert all(s is ag.State.DONE for s in fused.status.values())
    assert jf.began == jl.began  # the start order: priority, critical path, position
    assert jf.events == jl.events


@pytest.mark.parametrize("seed", range(12))
async def test_failures_retries_timeouts_and_bindings_run_the_same_both_ways(seed):
    (fused, jf, rf), (long, jl, _) = await both(lambda j: random_graph(seed, j))
    assert took_the_fused_path(rf)
    assert strip(fused) == strip(long)
    assert jf.tries == jl.tries
    assert ag.State.DONE in set(fused.status.values())
    # each task's own events, in order (across tasks, a thread's or a timeout's end
    # comes when it comes)
    assert per_task(jf.events) == per_task(jl.events)
    assert sorted(jf.began) == sorted(jl.began)
    if all(t.is_async and t.timeout is None for t in fused.tasks.values()):
        assert jf.began == jl.began and jf.events == jl.events


def per_task(events: list[tuple[str, str, int]]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for kind, task, attempt in events:
        out.setdefault(task, []).append((kind, attempt))
    return out


async def test_some_seeds_cover_every_kind_of_task():
    # the random graphs above do exercise what they claim to
    seen = {"failed": 0, "retried": 0, "timeout": 0, "kwargs": 0, "plain": 0}
    for seed in range(12):
        g = random_graph(seed, Journal())
        for t in g.tasks.values():
            seen["retried"] += t.retries > 0
            seen["timeout"] += t.timeout is not None
            seen["kwargs"] += bool(t.kwargs)
            seen["plain"] += not t.is_async
        out = await ag.run(g)
        seen["failed"] += sum(s is ag.State.FAILED for s in out.status.values())
    assert all(seen.values()), seen


@pytest.mark.parametrize("seed", range(4))
async def test_a_create_graph_graph_skipping_none_runs_the_same_both_ways(seed):
    def make(journal: Journal) -> ag.Graph:
        rnd = random.Random(seed)
        funcs: dict[str, Any] = {}
        deps: dict[str, list[str]] = {}
        for i in range(40):
            name = f"t{i}"

            async def fn(*args: Any, name: str = name, none: bool = rnd.random() < 0.4) -> Any:
                journal.began.append(name)
                return None if none else len(args)

            funcs[name] = fn
            deps[name] = [f"t{j}" for j in rnd.sample(range(i), min(i, rnd.randint(0, 3)))]
        return ag.create_graph(funcs, deps, io_bound=funcs)

    (fused, jf, rf), (long, jl, _) = await both(make)
    assert all(t.skip_none for t in fused.tasks.values())
    assert took_the_fused_path(rf)
    assert strip(fused) == strip(long)
    assert jf.began == jl.began and jf.events == jl.events


@pytest.mark.parametrize("seed", range(4))
async def test_a_partly_done_graph_runs_the_same_both_ways(seed):
    def make(journal: Journal) -> ag.Graph:
        g = random_graph(seed, journal, mixed=False)
        kids = g._dag.child_map()
        roots = [n for n, t in g.tasks.items() if not t.deps]
        roots.sort(key=lambda n: -len(kids.get(n, ())))
        # one root done with a result, one without (its dependents must fail)
        g = g.mark_done(roots[1], {roots[1]: 7})
        return g.mark_done(roots[0])

    (fused, jf, rf), (long, jl, _) = await both(make)
    assert took_the_fused_path(rf)
    assert strip(fused) == strip(long)
    assert jf.events == jl.events
    assert any(isinstance(e, ag.MissingResultError) for e in fused.errors.values())


async def test_attempts_of_a_run_that_never_finished_count_both_ways():
    # a record left RUNNING (a crashed run's, loaded and run without the store) is
    # pending: its attempts so far are counted in the new record
    async def one(*a: Any) -> int:
        return 1

    def make(journal: Journal) -> ag.Graph:
        g = ag.Graph()
        g.add("a", one)
        g.add("b", one, deps=["a"])
        g.add("c", one, deps=["a"])
        records = dict(g.records)
        records["a"] = ag.TaskRecord(ag.State.RUNNING, attempts=2, started=1.0)
        return g._derive(records)

    (fused, _, rf), (long, _, _) = await both(make)
    assert took_the_fused_path(rf)
    assert strip(fused) == strip(long)
    assert fused.records["a"].attempts == 3 and fused.records["b"].attempts == 1


async def test_a_task_returning_no_result_fails_its_dependents_both_ways():
    async def nothing() -> Any:
        return ag.NO_RESULT

    async def one(x: Any) -> int:
        return 1

    async def two(x: Any, y: Any) -> int:
        return 2

    def make(journal: Journal) -> ag.Graph:
        g = ag.Graph()
        g.add("none", nothing)
        g.add("other", nothing)
        g.add("one", one, deps=["none"])
        g.add("two", two, deps=["other", "none"])
        return g

    (fused, _, rf), (long, _, _) = await both(make)
    assert took_the_fused_path(rf)
    assert strip(fused) == strip(long)
    assert isinstance(fused.errors["one"], ag.MissingResultError)
    assert isinstance(fused.errors["two"], ag.MissingResultError)


async def test_fail_fast_ends_the_same_both_ways():
    def make(journal: Journal) -> ag.Graph:
        g = random_graph(3, journal, n=40, mixed=False)

        async def boom(*a: Any) -> None:
            raise RuntimeError("boom")

        g.add("boom", boom, deps=["t5"])
        return g

    (fused, jf, _), (long, jl, _) = await both(make, fail_fast=True)
    assert isinstance(fused, ag.TaskFailures) and isinstance(long, ag.TaskFailures)
    assert strip(fused.graph) == strip(long.graph)
    assert jf.events == jl.events


async def test_a_deadline_cancels_the_rest_and_nothing_outlives_the_run():
    gate = asyncio.Event()
    inside: list[str] = []

    async def waits(*a: Any) -> None:
        inside.append("in")
        try:
            await gate.wait()
        finally:
            inside.remove("in")

    async def quick(*a: Any) -> int:
        return 1

    g = ag.Graph()
    for i in range(5):
        g.add(f"q{i}", quick)
        g.add(f"w{i}", waits, deps=[f"q{i}"])
    out = await run_until_deadline(g, {("started", f"w{i}") for i in range(5)})
    assert inside == []  # every child ended with the run
    assert {out.status[f"q{i}"] for i in range(5)} == {ag.State.DONE}
    assert {out.status[f"w{i}"] for i in range(5)} == {ag.State.CANCELLED}
    assert "deadline" in str(out.errors["w0"])


async def test_cancel_by_name_on_the_fused_path():
    gate = asyncio.Event()

    async def waits(*a: Any) -> int:
        await gate.wait()
        return 1

    async def after(x: int) -> int:
        return x + 1

    g = ag.Graph()
    g.add("a", waits)
    g.add("b", waits)
    g.add("a2", after, deps=["a"])
    g.add("b2", after, deps=["b"])
    async with ag.open_run(g) as r:
        async for event in r.events():
            if event.kind is ag.EventKind.STARTED and event.task == "b":
                assert r.cancel("a")
                gate.set()
                break
    out = r.graph
    assert out.status == {
        "a": ag.State.CANCELLED,
        "b": ag.State.DONE,
        "a2": ag.State.SKIPPED,
        "b2": ag.State.DONE,
    }
    assert out.results["b2"] == 2


async def test_a_cancelled_run_leaves_no_child_behind():
    started = asyncio.Event()
    live: set[str] = set()

    async def forever(*a: Any) -> None:
        live.add("x")
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            live.discard("x")

    async def first() -> int:
        return 1

    g = ag.Graph()
    g.add("first", first)
    g.add("forever", forever, deps=["first"])
    task = asyncio.get_running_loop().create_task(ag.run(g))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert live == set()


@pytest.mark.parametrize(
    ("options", "store", "fused"),
    [
        ({}, False, True),
        ({"max_io": 4}, False, False),  # a capped lane: the queue decides
        ({"limits": {"db": 1}}, False, False),
        ({}, True, False),  # a store: done only after the commit
    ],
    ids=["plain", "max_io", "limits", "store"],
)
async def test_which_runs_take_the_fused_path(tmp_path, options, store, fused):
    async def one(*a: Any) -> int:
        return 1

    g = ag.Graph()
    g.add("a", one, resources=("db",) if "limits" in options else ())
    g.add("b", one, deps=["a"])
    runs: list[_Run] = []
    opts = RunOptions(store=tmp_path / "s.db" if store else None, **options)
    out = await start(g, opts, on_run=runs.append)  # type: ignore[arg-type]
    assert out.results == {"a": 1, "b": 1}
    assert took_the_fused_path(runs[0]) is fused


async def test_a_graph_with_fan_out_takes_the_long_way():
    async def items() -> list[int]:
        return [1, 2, 3]

    async def double(x: int) -> int:
        return 2 * x

    g = ag.Graph()
    g.add("items", items)
    g.add("double", double, deps=["items"], over="items")
    runs: list[_Run] = []
    out = await start(g, RunOptions(), on_run=runs.append)  # type: ignore[arg-type]
    assert out.results["double"] == [2, 4, 6]
    assert not took_the_fused_path(runs[0])


# -- the scheduler: keys when needed, packed -------------------------------------------


def sched_graph(seed: int, n: int = 60) -> ag.Graph:
    rnd = random.Random(seed)
    g = ag.Graph()
    names: list[str] = []
    for i in range(n):
        deps = rnd.sample(names, rnd.randint(0, min(3, len(names))))
        g.add(f"t{i}", lambda *a: None, deps=deps, priority=rnd.choice([0, 0, 2, -1]))
        names.append(f"t{i}")
    return g


def drive(s: Scheduler, seed: int) -> list[list[str]]:
    """Finish one running task (chosen by ``seed``) at a time; the batches handed out."""
    rnd = random.Random(seed)
    batches = [[t.name for t in s.get_ready()]]
    running = list(batches[0])
    while s.is_active():
        name = running.pop(rnd.randrange(len(running)))
        batches.append([t.name for t in s.done_ready(name)])
        running.extend(batches[-1])
    return batches


@pytest.mark.parametrize("seed", range(10))
def test_lazy_keys_hand_out_what_eager_keys_do(seed):
    g = sched_graph(seed)
    dag = g._dag
    order = g.topological_order()
    kw: dict[str, Any] = {"children": dag.child_map()}
    eager = Scheduler(g.tasks, order, **kw)
    eager.prepare_fresh(fresh_start(dag))
    lazy = Scheduler(g.tasks, order, unit_paths=lambda: unit_paths(dag), lazy_keys=True, **kw)
    lazy.prepare_fresh(fresh_start(dag))
    assert lazy.direct() is not None and eager.direct() is None
    assert drive(lazy, seed) == drive(eager, seed)
    # and through prepare(), with every task pending
    again = Scheduler(g.tasks, order, lazy_keys=True, **kw)
    again.prepare(dict.fromkeys(g, ag.State.PENDING))
    assert drive(again, seed) == drive(eager_again(g), seed)


def eager_again(g: ag.Graph) -> Scheduler:
    s = Scheduler(g.tasks, g.topological_order())
    s.prepare(dict.fromkeys(g, ag.State.PENDING))
    return s


def test_a_chain_never_computes_its_keys_and_a_wide_graph_once():
    chain = ag.Graph()
    for i in range(50):
        chain.add(f"c{i}", lambda *a: None, deps=[f"c{i - 1}"] if i else [])
    wide = ag.Graph()
    for i in range(50):
        wide.add(f"w{i}", lambda: None)
    for g, expected in ((chain, 0), (wide, 1)):
        calls: list[int] = []

        def keys(dag: Any = g._dag, calls: list[int] = calls) -> Any:
            calls.append(1)
            return unit_paths(dag)

        s = Scheduler(g.tasks, g.topological_order(), unit_paths=keys, lazy_keys=True)
        s.prepare_fresh(fresh_start(g._dag))
        batches = drive(s, 0)
        assert sum(map(len, batches)) == 50
        assert len(calls) == expected
        s.order_keys()
        assert len(calls) == 1  # asked again: computed once


def test_retries_and_drops_in_the_lazy_mode_keep_the_queue_consistent():
    # the queue's entries carry no key in the lazy mode: a requeue, a drop and the
    # countdowns mix with them, and everything is still handed out once, in key order
    g = sched_graph(4, n=30)
    s = Scheduler(g.tasks, g.topological_order(), lazy_keys=True)
    s.prepare_fresh(fresh_start(g._dag))
    first = [t.name for t in s.get_ready()]
    keys = s.order_keys()
    assert first == sorted(first, key=keys.__getitem__)
    s.retry(first[0])
    s.requeue(first[0])
    (again,) = s.get_ready()
    assert again.name == first[0]
    waiting = [n for n in g if s.waits(n) and n not in s.running]
    dropped = waiting[-1]
    skipped = s.drop(dropped)
    handed = list(first)
    running = list(first)
    while s.is_active():
        batch = [t.name for t in s.done_ready(running.pop(0))]
        assert batch == sorted(batch, key=keys.__getitem__)
        handed += batch
        running += batch
    assert sorted(handed) == sorted(n for n in g if n != dropped and n not in skipped)


def test_a_lazy_scheduler_refuses_a_template():
    g = sched_graph(1, n=5)
    s = Scheduler(g.tasks, g.topological_order(), lazy_keys=True)
    s.prepare_fresh(fresh_start(g._dag))
    with pytest.raises(ValueError, match="lazy_keys"):
        s.expand("t0", [], ())


def test_no_lazy_mode_with_a_cap_or_a_limit():
    g = sched_graph(2, n=10)
    for kw in ({"max_io": 3}, {"limits": {"db": 1}}):
        s = Scheduler(g.tasks, g.topological_order(), lazy_keys=True, **kw)
        s.prepare_fresh(fresh_start(g._dag))
        assert s.direct() is None


@pytest.mark.parametrize("seed", range(10))
def test_packed_keys_order_as_the_tuples_do(seed):
    g = sched_graph(seed, n=80)
    dag = g._dag
    order = g.topological_order()
    paths, keys = critical_paths(dag.tasks, order, dag.child_map())
    ppaths, pkeys = critical_paths(dag.tasks, order, dag.child_map(), packed=True)
    assert ppaths == paths
    assert all(type(k) is int for k in pkeys.values())
    assert sorted(order, key=pkeys.__getitem__) == sorted(order, key=keys.__getitem__)
    for a, b in itertools.combinations(order[:30], 2):
        assert (pkeys[a] < pkeys[b]) == (keys[a] < keys[b])


def test_packed_keys_refuse_weights_and_a_subset():
    g = sched_graph(0, n=5)
    dag = g._dag
    with pytest.raises(ValueError, match="unit weights"):
        critical_paths(
            dag.tasks, g.topological_order(), dag.child_map(), None, {"t0": 2.0}, packed=True
        )


def test_unit_paths_keep_tuples_for_a_graph_with_fan_out():
    g = ag.Graph()
    g.add("items", lambda: [1, 2])
    g.add("each", lambda items: items, deps=["items"], over="items")
    _, keys = unit_paths(g._dag)
    assert all(type(k) is tuple for k in keys.values())


@pytest.mark.parametrize("seed", range(6))
def test_the_survey_says_what_passes_over_the_tasks_say(seed):
    rnd = random.Random(seed)
    g = ag.Graph()
    for i in range(40):
        deps = [f"t{j}" for j in rnd.sample(range(i), min(i, rnd.randint(0, 2)))]
        if rnd.random() < 0.2:
            g.add(f"t{i}", lambda *a: None, deps=deps, resources=("db",))
        elif rnd.random() < 0.2:
            g.add(f"t{i}", lambda *a: 0, deps=deps, kind="cpu")
        else:

            async def fn(*a: Any) -> None:
                return None

            g.add(f"t{i}", fn, deps=deps, timeout=1.0 if rnd.random() < 0.1 else None)
    found = survey(g._dag)
    tasks = g.tasks.values()
    assert found.kinds == {(t.kind, t.is_async) for t in tasks}
    assert found.resources == {r for t in tasks for r in t.resources}
    assert found.plain == all(
        t.kind is ag.Kind.IO
        and t.is_async
        and t.timeout is None
        and not t.kwargs
        and not t.skip_none
        for t in tasks
    )
    order = g.topological_order()
    assert found.indegree == tuple(len(g.tasks[n].deps) for n in order)
    assert found.roots == tuple(n for n in order if not g.tasks[n].deps)
    assert survey(g._dag) is found  # cached per Dag


def test_the_scheduler_still_names_a_task_with_a_resource_and_no_limit():
    g = ag.Graph()
    g.add("a", lambda: None)
    g.add("b", lambda: None, resources=("db",))
    with pytest.raises(ag.GraphError, match="task 'b' declares resource 'db'"):
        Scheduler(g.tasks, g.topological_order(), survey=survey(g._dag))


def test_a_structure_change_keeps_the_cached_keys_of_the_old_dag_apart():
    _scheduler._UNIT_PATHS.clear()
    g = sched_graph(5, n=10)
    first = unit_paths(g._dag)
    g.add("late", lambda *a: None, deps=["t0"])
    assert "late" in unit_paths(g._dag)[1] and "late" not in first[1]
