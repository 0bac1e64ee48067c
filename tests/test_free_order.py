"""Issue 15, session 17: the start order of free tasks (coroutines in a lane without a cap).

Such a lane hands out everything ready at once, so nothing in it waits for capacity: its
coroutines are ordered by priority, then position, and their critical paths are not
computed. Tasks that can wait (threads, which anyio's limiter caps; CPU tasks; any lane
under ``max_io``) keep priority, critical path, position.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest

import asyncgraph as ag
from asyncgraph import _runner, _scheduler
from asyncgraph._scheduler import (
    Scheduler,
    critical_paths,
    flat_keys,
    fresh_start,
    survey,
    unit_paths,
)


async def _noop(*a: Any) -> None:
    return None


def _sync(*a: Any) -> None:
    return None


def _graph(seed: int, n: int = 60, *, threads: float = 0.0, cpu: float = 0.0) -> ag.Graph:
    rnd = random.Random(seed)
    g = ag.Graph()
    names: list[str] = []
    for i in range(n):
        deps = rnd.sample(names, rnd.randint(0, min(3, len(names))))
        roll = rnd.random()
        prio = rnd.choice([0, 0, 0, 2, -1])
        if roll < threads:
            g.add(f"t{i}", _sync, deps=deps, priority=prio)
        elif roll < threads + cpu:
            g.add(f"t{i}", _sync, deps=deps, priority=prio, kind="cpu")
        else:
            g.add(f"t{i}", _noop, deps=deps, priority=prio)
        names.append(f"t{i}")
    return g


def _drive(s: Scheduler, seed: int) -> list[list[str]]:
    rnd = random.Random(seed)
    batches = [[t.name for t in s.get_ready()]]
    running = list(batches[0])
    while s.is_active():
        name = running.pop(rnd.randrange(len(running)))
        batches.append([t.name for t in s.done_ready(name)])
        running.extend(batches[-1])
    return batches


def _expected(g: ag.Graph, batch: list[str]) -> list[str]:
    pos = {n: i for i, n in enumerate(g.topological_order())}
    return sorted(batch, key=lambda n: (-g.tasks[n].priority, pos[n]))


@pytest.mark.parametrize("seed", range(8))
def test_free_tasks_go_by_priority_then_position(seed):
    g = _graph(seed)
    for lazy in (True, False):
        s = Scheduler(g.tasks, g.topological_order(), lazy_keys=lazy)
        s.prepare_fresh(fresh_start(g._dag))
        for batch in _drive(s, seed):
            assert batch == _expected(g, batch)


def test_the_packed_and_tuple_flat_keys_order_alike():
    g = _graph(3, n=80)
    order = g.topological_order()
    for prioritized in (True, False):
        packed = flat_keys(g.tasks, order, packed=True, prioritized=True)
        tuples = flat_keys(g.tasks, order, packed=False, prioritized=prioritized)
        assert all(type(k) is int for k in packed.values())
        for a, b in itertools.combinations(order[:40], 2):
            assert (packed[a] < packed[b]) == (tuples[a] < tuples[b])
    plain = ag.Graph()
    for i in range(5):
        plain.add(f"p{i}", _noop)
    assert flat_keys(plain.tasks, plain.topological_order(), packed=True, prioritized=False) == {
        f"p{i}": i for i in range(5)
    }


def test_a_run_of_free_tasks_computes_no_critical_path(monkeypatch):
    calls: list[int] = []
    real = _scheduler.critical_paths

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_scheduler, "critical_paths", counting)
    g = _graph(1, n=40)
    out = ag.run_sync(g)
    assert set(out.status.values()) == {ag.State.DONE}
    assert calls == []
    # a thread among them can wait (anyio's limiter): the paths are computed
    g.add("thread", _sync, deps=["t3"])
    ag.run_sync(g)
    assert calls == [1]


def test_a_cap_brings_the_critical_path_back():
    r"""
      x    a -> b -> c      (all coroutines, priority 0)
    Uncapped, x goes first (position); under max_io=1, a (the longest path).
    """
    g = ag.Graph()
    g.add("x", _noop)
    g.add("a", _noop)
    g.add("b", _noop, deps=["a"])
    g.add("c", _noop, deps=["b"])
    free = Scheduler(g.tasks, g.topological_order(), dict.fromkeys(g, ag.State.PENDING))
    assert [t.name for t in free.get_ready()] == ["x", "a"]
    capped = Scheduler(
        g.tasks, g.topological_order(), dict.fromkeys(g, ag.State.PENDING), max_io=1
    )
    assert [t.name for t in capped.get_ready()] == ["a"]


def test_threads_keep_their_path_and_come_before_free_coroutines_of_their_priority():
    g = ag.Graph()
    g.add("co", _noop)  # free: no path
    g.add("leaf", _sync)  # a thread, path 1
    g.add("head", _sync)  # a thread, path 2
    g.add("tail", _noop, deps=["head"])
    g.add("urgent", _noop, priority=3)  # free, but the priority outranks everything
    s = Scheduler(g.tasks, g.topological_order(), dict.fromkeys(g, ag.State.PENDING))
    assert [t.name for t in s.get_ready()] == ["urgent", "head", "leaf", "co"]
    # and the cached unit paths of the Dag are not changed by the override
    assert type(unit_paths(g._dag)[1]["co"]) is int
    _, keys = critical_paths(g.tasks, g.topological_order(), g._dag.child_map(), packed=True)
    assert unit_paths(g._dag)[1] == keys


@pytest.mark.parametrize("seed", range(6))
def test_a_mixed_graph_orders_free_tasks_without_their_path(seed):
    g = _graph(seed, threads=0.3, cpu=0.2)
    s = Scheduler(g.tasks, g.topological_order(), cpu_slots=2)
    s.prepare_fresh(fresh_start(g._dag))
    paths, _ = critical_paths(g.tasks, g.topological_order(), g._dag.child_map())
    pos = {n: i for i, n in enumerate(g.topological_order())}

    def key(n: str) -> tuple[Any, ...]:
        t = g.tasks[n]
        free = t.is_async and t.kind is ag.Kind.IO
        return (t.kind is ag.Kind.CPU, -t.priority, 0 if free else -paths[n], pos[n])

    for batch in _drive(s, seed):
        assert batch == sorted(batch, key=key)


def test_a_drop_before_the_first_dispatch_keeps_the_roots_in_order():
    g = ag.Graph()
    for name in ("z", "m", "a", "q"):  # definition order is not name order
        g.add(name, _noop)
    s = Scheduler(g.tasks, g.topological_order(), lazy_keys=True)
    s.prepare_fresh(fresh_start(g._dag))
    s.drop("m")
    assert [t.name for t in s.get_ready()] == ["z", "a", "q"]


def test_the_survey_knows_priorities_and_templates():
    g = _graph(0, n=10)
    found = survey(g._dag)
    assert found.prioritized == any(t.priority for t in g.tasks.values())
    assert not found.templated
    fan = ag.Graph()
    fan.add("items", lambda: [1, 2])
    fan.add("each", lambda items: items, deps=["items"], over="items")
    assert survey(fan._dag).templated and not survey(fan._dag).prioritized


async def test_a_real_run_starts_free_tasks_by_priority_then_definition_order():
    started: list[str] = []

    def make(name: str) -> Any:
        async def fn(*_: Any) -> None:
            started.append(name)
            await asyncio.sleep(0)

        return fn

    g = ag.Graph()
    g.add("leaf", make("leaf"))
    g.add("head", make("head"))
    g.add("mid", make("mid"), deps=["head"])
    g.add("tail", make("tail"), deps=["mid"])
    g.add("now", make("now"), priority=1)
    out = await ag.run(g)
    assert set(out.status.values()) == {ag.State.DONE}
    assert started == ["now", "leaf", "head", "mid", "tail"]


@pytest.mark.parametrize("backwards", [False, True])
def test_the_survey_of_a_plain_graph_is_what_the_passes_say(backwards):
    # the usual graph takes the survey's one-loop way; defined dependents first, its
    # topological order is not its definition order
    rnd = random.Random(7)
    deps = {f"t{i}": [f"t{j}" for j in rnd.sample(range(i), min(i, 2))] for i in range(30)}
    g = ag.Graph()
    for name in reversed(deps) if backwards else deps:
        g.add(name, _noop, deps=deps[name])
    found = survey(g._dag)
    order = g.topological_order()
    assert (order == tuple(g.tasks)) is not backwards
    assert found.kinds == {(ag.Kind.IO, True)}
    assert found.resources == frozenset() and found.plain
    assert not found.prioritized and not found.templated
    assert found.indegree == tuple(len(g.tasks[n].deps) for n in order)
    assert found.roots == tuple(n for n in order if not g.tasks[n].deps)
    s = Scheduler(g.tasks, order, lazy_keys=True, survey=found)
    s.prepare_fresh(fresh_start(g._dag))
    direct = s.direct()
    assert direct is not None and direct.in_order is not backwards
    for batch in _drive(s, 1):
        assert batch == _expected(g, batch)


@pytest.mark.parametrize("seed", range(4))
async def test_plain_runs_in_and_out_of_definition_order_start_by_position(seed):
    rnd = random.Random(seed)
    deps = {f"t{i}": [f"t{j}" for j in rnd.sample(range(i), min(i, 3))] for i in range(40)}
    started: list[str] = []

    def make(name: str) -> Any:
        async def fn(*_: Any) -> str:
            started.append(name)
            return name

        return fn

    for backwards in (False, True):
        started.clear()
        g = ag.Graph()
        for name in reversed(deps) if backwards else deps:
            g.add(name, make(name), deps=deps[name])
        out = await ag.run(g)
        assert set(out.status.values()) == {ag.State.DONE}
        # each task starts after its dependencies; the ones started together (the
        # roots) come in topological position
        pos = {n: i for i, n in enumerate(g.topological_order())}
        roots = [n for n in started if not deps[n]]
        assert roots == sorted(roots, key=pos.__getitem__)
        for n in started:
            assert all(started.index(d) < started.index(n) for d in deps[n])


@pytest.mark.parametrize("roots", [10, 200])
async def test_a_big_dispatch_pauses_the_collector_and_turns_it_back_on(roots):
    import gc

    seen: list[bool] = []

    def on_event(e: ag.Event) -> None:
        if e.kind is ag.EventKind.STARTED:
            seen.append(gc.isenabled())

    g = ag.Graph()
    for i in range(roots):
        g.add(f"r{i}", _noop)
    g.add("last", _noop, deps=["r0"])
    assert gc.isenabled()
    out = await ag.run(g, on_event=on_event)
    assert set(out.status.values()) == {ag.State.DONE}
    assert gc.isenabled()
    # the roots start in one dispatch: paused from _runner._MANY starts on; "last"
    # starts from a done-callback, with the collector on
    assert seen[:roots] == [roots < _runner._MANY] * roots
    assert seen[-1] is True


def test_cpu_coroutines_keep_their_path_even_in_a_lane_without_a_cap():
    # a cluster's lane may have no cap, but its tasks queue there in the order sent
    from asyncgraph._scheduler import Lane

    g = ag.Graph()
    g.add("x", _noop, kind="cpu")
    g.add("a", _noop, kind="cpu")
    g.add("b", _noop, deps=["a"], kind="cpu")
    lanes = [Lane("io", None, (ag.Kind.IO,)), Lane("cpu", None, (ag.Kind.CPU,))]
    s = Scheduler(
        g.tasks, g.topological_order(), dict.fromkeys(g, ag.State.PENDING), lanes=lanes
    )
    assert [t.name for t in s.get_ready()] == ["a", "x"]
