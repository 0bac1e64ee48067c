"""Property tests on random DAGs: the scheduler core, full runs, and the rewrites.

Random DAGs come from ``tests/strategies.py``: 1..25 tasks, each depending on a subset of
earlier ones, some "broken" (raising on every call). Full runs use IO tasks only (mostly
coroutines, some plain functions in threads): process start-up would make CPU tasks slow.
Section 4 cancels runs on a store at random events (an in-process stand-in for a crash;
the real SIGKILL is in tests/test_reliability_crash.py) and resumes them after random
rewrites.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import reliability_driver as driver
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from store_rows import history_records
from strategies import (
    HOLDER,
    Dag,
    RunCase,
    SchedCase,
    dags,
    records_for,
    reference_run,
    run_cases,
    scenario_specs,
    sched_cases,
    subsets,
    value_of,
)

import asyncgraph as ag
from asyncgraph._scheduler import Scheduler
from asyncgraph._state import NO_RESULT
from asyncgraph._task import make_task

S = ag.State
FAST = settings(max_examples=100, deadline=None)
RUNS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MISSING = "zz-not-a-task"


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


# ======================================================================================
# 1. The scheduler core on its own
# ======================================================================================


def _sched_tasks(case: SchedCase) -> dict[str, ag.Task]:
    dag = case.dag
    tasks = {}
    for i in dag.add_order:  # a mapping in another order than the topological one
        name = dag.names[i]
        tasks[name] = make_task(
            name,
            _noop,
            deps=list(dag.dep_names(name)),
            kind=case.kinds[name],
            priority=case.priority[name],
            resources=case.resources[name],
            retries=case.retries[name],
        )
    return tasks


def _expected_start(dag: Dag, status0: Mapping[str, S]) -> tuple[set[str], list[str]]:
    """(tasks the scheduler should run, tasks it should skip at once, in topo order)."""
    to_run = {n for n in dag.topo if status0[n] in (S.PENDING, S.RUNNING)}
    skipped = []
    for n in dag.topo:
        if n in to_run and any(
            d not in to_run and status0[d] is not S.DONE for d in dag.dep_names(n)
        ):
            to_run.discard(n)
            skipped.append(n)
    return to_run, skipped


def _below_within(dag: Dag, name: str, within: set[str]) -> set[str]:
    """Descendants of ``name`` reachable through tasks in ``within``."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        for c in dag.children(stack.pop()):
            if c in within and c not in seen:
                seen.add(c)
                stack.append(c)
    return seen


def _drive(
    case: SchedCase,
    rnd: random.Random,
    status0: Mapping[str, S] | None = None,
    *,
    check_work_conserving: bool = False,
) -> dict[str, set[str]]:
    """Drive a Scheduler to the end like graphlib, checking invariants at every step."""
    dag = case.dag
    tasks = _sched_tasks(case)
    status0 = status0 or dict.fromkeys(dag.names, S.PENDING)
    sched = Scheduler(
        tasks,
        dag.topo,
        status0,
        max_io=case.max_io,
        cpu_slots=case.cpu_slots,
        limits=case.limits,
    )
    to_run, exp_skipped = _expected_start(dag, status0)
    assert list(sched.initially_skipped) == exp_skipped
    assert set(sched.pending()) == to_run

    # Selection key the module documents: priority (higher first), then longest
    # remaining path (1 per task), then position in the order (issue 16).
    path: dict[str, int] = {}
    for n in reversed(dag.topo):
        if n in to_run:
            path[n] = 1 + max((path[c] for c in dag.children(n) if c in to_run), default=0)
    position = {n: i for i, n in enumerate(dag.topo)}

    def key(n: str) -> tuple[int, int, int]:
        return (-case.priority[n], -path[n], position[n])

    capacity = {ag.Kind.IO: case.max_io, ag.Kind.CPU: case.cpu_slots}
    done = {n for n in dag.names if status0[n] is S.DONE}
    done_here: set[str] = set()
    failed: set[str] = set()
    skipped_here: set[str] = set()
    running: set[str] = set()
    retrying: set[str] = set()
    requeued: set[str] = set()
    started: set[str] = set()
    attempts: Counter[str] = Counter()

    def check_state() -> None:
        assert sched.running == frozenset(running)
        ended = done_here | failed | skipped_here
        assert set(sched.pending()) == to_run - ended - running
        assert sched.is_active() == bool(to_run - ended)
        for kind, cap in capacity.items():
            if cap is not None:
                assert sum(tasks[n].kind is kind for n in running) <= cap, kind
        for r, lim in case.limits.items():
            assert sum(r in tasks[n].resources for n in running) <= lim, r

    steps = 0
    while sched.is_active():
        steps += 1
        assert steps < 10_000, "the scheduler does not make progress"
        if rnd.random() < 0.8 or not running:
            batch = sched.get_ready()
            kinds = [t.kind for t in batch]
            assert kinds == sorted(kinds, key=lambda k: k is ag.Kind.CPU), "IO before CPU"
            names = [t.name for t in batch]
            assert len(set(names)) == len(names)
            for kind in ag.Kind:
                same = [t.name for t in batch if t.kind is kind]
                assert same == sorted(same, key=key), f"{kind} tasks not in key order"
            for t in batch:
                n = t.name
                assert t is tasks[n]
                assert n in to_run and n not in running
                assert n not in done_here | failed | skipped_here | retrying
                assert n not in started or n in requeued, f"{n} handed out twice"
                requeued.discard(n)
                for d in t.deps:
                    assert d in done, f"{n} handed out before its dependency {d} is done"
                running.add(n)
                started.add(n)
            check_state()
            if check_work_conserving:
                _assert_nothing_left_that_fits(
                    case,
                    tasks,
                    to_run,
                    done,
                    running,
                    retrying,
                    done_here | failed | skipped_here,
                )
        if not running and not retrying and sched.is_active():
            raise AssertionError(
                f"deadlock: active, nothing running, nothing handed out; pending "
                f"{sorted(sched.pending())}"
            )
        # Report a random subset of the running tasks (and maybe requeue retries).
        actions = [("end", n) for n in sorted(running)] + [("requeue", n) for n in sorted(retrying)]
        if not actions:
            continue
        for what, n in rnd.sample(actions, rnd.randint(1, len(actions))):
            if what == "requeue":
                retrying.discard(n)
                requeued.add(n)
                sched.requeue(n)
                continue
            running.discard(n)
            attempts[n] += 1
            can_retry = attempts[n] <= case.retries[n]
            fails = n in case.failing or (can_retry and rnd.random() < 0.3)
            if fails and can_retry:
                sched.retry(n)
                retrying.add(n)
            elif fails:
                out = sched.failed(n)
                assert len(out) == len(set(out))
                expect = _below_within(dag, n, to_run) - skipped_here
                assert set(out) == expect, f"failed({n}) skipped {out}, expected {expect}"
                failed.add(n)
                skipped_here |= set(out)
            else:
                sched.done(n)
                done_here.add(n)
                done.add(n)
        check_state()

    # Every task the scheduler took on ended exactly once.
    assert not running and not retrying
    assert done_here | failed | skipped_here == to_run
    assert len(done_here) + len(failed) + len(skipped_here) == len(to_run)
    # Skipped exactly the (to-run) descendants of the failed tasks.
    below_failed = set().union(*(_below_within(dag, f, to_run) for f in failed))
    assert skipped_here == below_failed
    assert case.failing & to_run <= failed | skipped_here
    assert sched.pending() == []
    assert sched.get_ready() == []
    return {"done": done_here, "failed": failed, "skipped": skipped_here}


def _assert_nothing_left_that_fits(
    case: SchedCase,
    tasks: Mapping[str, ag.Task],
    to_run: set[str],
    done: set[str],
    running: set[str],
    retrying: set[str],
    ended: set[str],
) -> None:
    """After get_ready(), no ready task could have been started within the limits."""
    used = Counter(tasks[n].kind for n in running)
    res_used = Counter(r for n in running for r in tasks[n].resources)
    for n in to_run - ended - running - retrying:
        t = tasks[n]
        if not all(d in done for d in t.deps):
            continue
        cap = {ag.Kind.IO: case.max_io, ag.Kind.CPU: case.cpu_slots}[t.kind]
        kind_full = cap is not None and used[t.kind] >= cap
        res_full = any(res_used[r] >= case.limits[r] for r in t.resources)
        assert kind_full or res_full, (
            f"{n} is ready and fits (kind {t.kind}, resources {t.resources}, in use "
            f"{dict(res_used)}, limits {case.limits}) but get_ready() did not hand it out"
        )


@FAST
@given(case=sched_cases(), rnd=st.randoms(use_true_random=False))
def test_scheduler_core_invariants(case: SchedCase, rnd: random.Random) -> None:
    ended = _drive(case, rnd)
    assert ended["done"] | ended["failed"] | ended["skipped"] == set(case.dag.names)
    # A task is skipped exactly when one of its ancestors failed.
    for n in case.dag.names:
        assert (n in ended["skipped"]) == bool(case.dag.ancestors([n]) & ended["failed"])


@FAST
@given(
    case=sched_cases(),
    rnd=st.randoms(use_true_random=False),
    data=st.data(),
)
def test_scheduler_with_initial_states(
    case: SchedCase, rnd: random.Random, data: st.DataObject
) -> None:
    """Done/failed/skipped/cancelled tasks are not run; RUNNING counts as pending; a
    pending task below a failed/skipped/cancelled one is skipped at once."""
    states = st.sampled_from([S.PENDING, S.PENDING, S.PENDING, *S])
    status0 = {n: data.draw(states, label=f"status {n}") for n in case.dag.names}
    _drive(case, rnd, status0)


# Minimal case found by this test: one named limit db=1, one CPU slot. a (io, db) runs, b
# (io, db) and c (cpu, db, priority 1) park on db, d (cpu) takes the CPU slot. When a ends,
# the best parked task, c, goes back into line but cannot start (no CPU slot), and b stays
# parked although db and IO capacity are free: b waits for d for nothing.
_PARKED_ACROSS_KINDS = SchedCase(
    dag=Dag(names=("a", "b", "c", "d"), deps=((), (), (), ()), add_order=(0, 1, 2, 3)),
    kinds={"a": ag.Kind.IO, "b": ag.Kind.IO, "c": ag.Kind.CPU, "d": ag.Kind.CPU},
    priority={"a": 0, "b": 0, "c": 1, "d": 0},
    resources={"a": ("db",), "b": ("db",), "c": ("db",), "d": ()},
    limits={"db": 1},
    max_io=None,
    cpu_slots=1,
    failing=frozenset(),
    retries=dict.fromkeys("abcd", 0),
)


@settings(FAST, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # shrinking is slow
@example(case=_PARKED_ACROSS_KINDS, rnd=random.Random(2))  # seed: ends a while d runs
@given(case=sched_cases(), rnd=st.randoms(use_true_random=False))
def test_scheduler_hands_out_every_task_that_fits(case: SchedCase, rnd: random.Random) -> None:
    """Work conservation: after get_ready(), every ready task that was not handed out is
    blocked by its kind's capacity or by an exhausted named limit (the module docstring:
    a parked task "does not hold up tasks behind it")."""
    _drive(case, rnd, check_work_conserving=True)


# ======================================================================================
# 2. Full runs
# ======================================================================================


class Boom(Exception):
    """What a broken task raises."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is broken")
        self.name = name


class Probe:
    """Counts calls, remembers raised exceptions and measures concurrency (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.raised: dict[str, Boom] = {}
        self.now = 0
        self.peak = 0
        self.res_now: Counter[str] = Counter()
        self.res_peak: Counter[str] = Counter()

    @contextlib.contextmanager
    def holding(self, name: str, resources: tuple[str, ...]) -> Iterator[None]:
        with self.lock:
            self.calls[name] += 1
            self.now += 1
            self.peak = max(self.peak, self.now)
            for r in resources:
                self.res_now[r] += 1
                self.res_peak[r] = max(self.res_peak[r], self.res_now[r])
        try:
            yield
        finally:
            with self.lock:
                self.now -= 1
                for r in resources:
                    self.res_now[r] -= 1


def _make_fn(case: RunCase, name: str, broken: set[str], probe: Probe) -> Any:
    n_deps = len(case.dag.dep_names(name))
    dict_style = name in case.dict_style
    resources = case.resources[name]

    def body(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        if dict_style:
            assert not args
            assert set(kwargs) == {f"p{k}" for k in range(n_deps)}
            vals = [kwargs[f"p{k}"] for k in range(n_deps)]
        else:
            assert not kwargs
            assert len(args) == n_deps
            vals = list(args)
        if name in broken:
            exc = Boom(name)
            probe.raised[name] = exc
            raise exc
        return value_of(name, vals)

    if name in case.sync:

        def fn(*args: Any, **kwargs: Any) -> int:
            with probe.holding(name, resources):
                time.sleep(0.0002)
                return body(args, kwargs)

        return fn
    yields = case.yields[name]

    async def afn(*args: Any, **kwargs: Any) -> int:
        with probe.holding(name, resources):
            for _ in range(yields):
                await asyncio.sleep(0)
            return body(args, kwargs)

    return afn


def _build(case: RunCase, broken: set[str], probe: Probe) -> ag.Graph:
    dag = case.dag
    g = ag.Graph()
    for i in dag.add_order:  # may add a task before its dependencies
        name = dag.names[i]
        deps = dag.dep_names(name)
        spec: Any = (
            {f"p{k}": d for k, d in enumerate(deps)} if name in case.dict_style else list(deps)
        )
        g.add(name, _make_fn(case, name, broken, probe), deps=spec, resources=case.resources[name])
    return g


# A guard, not a limit: a run takes milliseconds. If the runner ever hangs (active, with
# nothing running), the deadline ends it and the tasks show up CANCELLED in the checks.
GUARD = 10.0


def _run(case: RunCase, g: ag.Graph) -> ag.Graph:
    return ag.run_sync(g, max_io=case.max_io, limits=case.limits or None, deadline=GUARD)


def _snapshot(g: ag.Graph) -> dict[str, ag.TaskRecord]:
    return dict(g.records)


def _check_limits(case: RunCase, probe: Probe) -> None:
    if case.max_io is not None:
        assert probe.peak <= case.max_io
    for r, lim in case.limits.items():
        assert probe.res_peak[r] <= lim, r


def _check_run(case: RunCase, g: ag.Graph, out: ag.Graph, probe: Probe, broken: set[str]) -> None:
    dag = case.dag
    exp_status, exp_results = reference_run(dag, broken)
    assert out.status == exp_status
    assert out.results == exp_results
    failed = {n for n, s in out.status.items() if s is S.FAILED}
    for n in dag.names:
        rec = out.records[n]
        assert rec.status in (S.DONE, S.FAILED, S.SKIPPED), (n, rec.status)
        assert rec.status.is_terminal
        # Skipped exactly when an ancestor failed (also per the graph's own ancestors()).
        assert (rec.status is S.SKIPPED) == bool(dag.ancestors([n]) & failed), n
        assert out.ancestors([n]) == dag.ancestors([n])
        ran = rec.status is not S.SKIPPED
        assert probe.calls[n] == int(ran), n
        assert rec.attempts == int(ran), n
        if ran:
            assert rec.started is not None and rec.finished is not None
            assert rec.started <= rec.finished
    assert set(out.errors) == failed
    for n in failed:
        assert out.errors[n] is probe.raised[n]
        assert out.records[n].traceback and "Boom" in out.records[n].traceback
    assert failed == {n for n in broken if exp_status[n] is not S.SKIPPED}
    # The input graph is untouched and shares the task definitions.
    assert all(r.status is S.PENDING for r in g.records.values())
    assert dict(out.tasks) == dict(g.tasks)
    _check_limits(case, probe)


@RUNS
@given(case=run_cases())
def test_run_matches_sequential_evaluation(case: RunCase) -> None:
    probe = Probe()
    broken = set(case.failing)
    g = _build(case, broken, probe)
    assert g.topological_order() and set(g.topological_order()) == set(case.dag.names)
    before = _snapshot(g)
    out = _run(case, g)
    assert _snapshot(g) == before
    _check_run(case, g, out, probe, broken)


@pytest.mark.asyncio
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=run_cases())
async def test_async_run_matches_sequential_evaluation(case: RunCase) -> None:
    """The same through ``await ag.run`` on the test's own (plain asyncio) loop."""
    probe = Probe()
    broken = set(case.failing)
    g = _build(case, broken, probe)
    out = await ag.run(g, max_io=case.max_io, limits=case.limits or None, deadline=GUARD)
    _check_run(case, g, out, probe, broken)


@RUNS
@given(case=run_cases(), data=st.data())
def test_run_from_any_initial_states(case: RunCase, data: st.DataObject) -> None:
    """Running a partly run graph: only pending (and RUNNING) tasks run; a pending task
    whose dependency ended badly is skipped; done tasks keep their results."""
    probe = Probe()
    broken = set(case.failing)
    g0 = _build(case, broken, probe)
    records = data.draw(records_for(case.dag, consistent=True), label="records")
    g = g0._derive(records)
    before = _snapshot(g)
    out = _run(case, g)
    assert _snapshot(g) == before
    initial = {n: (r.status, r.result) for n, r in records.items()}
    exp_status, exp_results = reference_run(case.dag, broken, initial)
    assert out.status == exp_status
    assert out.results == exp_results
    ran = {
        n
        for n in case.dag.names
        if records[n].status in (S.PENDING, S.RUNNING) and exp_status[n] is not S.SKIPPED
    }
    assert {n for n, c in probe.calls.items() if c} == ran
    assert all(c == 1 for c in probe.calls.values())
    for n in case.dag.names:
        if records[n].status not in (S.PENDING, S.RUNNING):
            assert out.records[n] == records[n], f"{n} was not to run but changed"
        elif n not in ran:
            assert out.records[n].status is S.SKIPPED
    _check_limits(case, probe)


# ======================================================================================
# 3. Rewrites
# ======================================================================================


@RUNS
@given(case=run_cases(), data=st.data())
def test_reset_failed_then_rerun_fixed(case: RunCase, data: st.DataObject) -> None:
    dag = case.dag
    probe = Probe()
    broken = set(case.failing)
    out1 = _run(case, _build(case, broken, probe))
    first = out1.status
    calls1 = Counter(probe.calls)

    before = _snapshot(out1)
    g2 = ag.reset_failed(out1)
    assert _snapshot(out1) == before, "reset_failed mutated its input"
    bad = {n for n, s in first.items() if s in (S.FAILED, S.SKIPPED, S.CANCELLED)}
    for n in dag.names:
        if n in bad:
            assert g2.records[n] == ag.TaskRecord()
        else:
            assert g2.records[n] == out1.records[n]

    broken.clear()  # fix the broken tasks
    out2 = _run(case, g2)
    assert _snapshot(out1) == before
    _, exp_results = reference_run(dag, ())
    assert out2.status == dict.fromkeys(dag.names, S.DONE)
    assert out2.results == exp_results
    assert out2.errors == {}
    for n in dag.names:
        if first[n] is S.DONE:
            assert probe.calls[n] == 1, f"{n} was done in the first run but ran again"
            assert out2.records[n] == out1.records[n]
        else:
            assert probe.calls[n] == calls1[n] + 1, n
    _check_limits(case, probe)

    # reset(names) on a done graph reruns exactly names + descendants, same results.
    names = data.draw(subsets(dag.names), label="reset names")
    g3 = ag.reset(out2, names)
    targets = set(names) | dag.descendants(names)
    assert {n for n, s in g3.status.items() if s is S.PENDING} == targets
    calls2 = Counter(probe.calls)
    out3 = _run(case, g3)
    assert out3.results == exp_results
    assert {n for n in dag.names if probe.calls[n] != calls2[n]} == targets
    assert all(probe.calls[n] - calls2[n] == 1 for n in targets)


@RUNS
@given(case=run_cases(), data=st.data())
def test_mark_done_and_mark_done_except_then_run(case: RunCase, data: st.DataObject) -> None:
    dag = case.dag
    probe = Probe()
    broken = set(case.failing)
    out1 = _run(case, _build(case, broken, probe))
    failed = [n for n, s in out1.status.items() if s is S.FAILED]

    # Mark the failed tasks done with stand-in results; the broken tasks stay broken.
    given_results = {n: data.draw(st.integers(0, 1000), label=f"result {n}") for n in failed}
    g2 = ag.mark_done(out1, failed, given_results)
    calls1 = Counter(probe.calls)
    out2 = _run(case, g2)
    initial = {n: (r.status, r.result) for n, r in g2.records.items()}
    exp_status, exp_results = reference_run(dag, broken, initial)
    assert out2.status == exp_status
    assert out2.results == exp_results
    for n in failed:
        assert out2.results[n] == given_results[n]
    # Only the tasks skipped in the first run run now (unless skipped again below a
    # broken task that had been skipped too), each once; nothing done runs again.
    ran = {n for n in dag.names if probe.calls[n] != calls1[n]}
    assert ran == {
        n for n, s in out1.status.items() if s is S.SKIPPED and exp_status[n] is not S.SKIPPED
    }
    assert all(probe.calls[n] == calls1[n] + 1 for n in ran)

    # mark_done_except(names) runs only names next time (those not below a broken one).
    names = data.draw(subsets(dag.names), label="except names")
    g3 = ag.mark_done_except(out1, names)
    assert {n for n, s in g3.status.items() if s is not S.DONE} == set(names)
    calls2 = Counter(probe.calls)
    out3 = _run(case, g3)
    initial = {n: (r.status, r.result) for n, r in g3.records.items()}
    exp_status, exp_results = reference_run(dag, broken, initial)
    assert out3.status == exp_status
    assert out3.results == exp_results
    # A task of names below one marked done without a result fails with
    # MissingResultError without being called (issue 10, item 27).
    missing = {
        n
        for n in names
        if exp_status[n] is S.FAILED
        and any(exp_results.get(d) is NO_RESULT for d in dag.dep_names(n))
    }
    for n in missing:
        assert isinstance(out3.errors[n], ag.MissingResultError), n
    ran = {n for n in dag.names if probe.calls[n] != calls2[n]}
    assert ran == {n for n in names if exp_status[n] is not S.SKIPPED} - missing
    assert ran <= set(names)


@st.composite
def graph_with_records(draw: st.DrawFn) -> tuple[Dag, ag.Graph]:
    dag = draw(dags())
    g = ag.Graph()
    for i in dag.add_order:
        name = dag.names[i]
        g.add(name, _noop, deps=list(dag.dep_names(name)))
    return dag, g._derive(draw(records_for(dag)))


def _names_maybe_unknown(dag: Dag) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from([*dag.names, MISSING, "t999"]), unique=True)


def _check_unknown(g: ag.Graph, names: list[str], call: Any) -> bool:
    """If ``names`` has unknown names, ``call`` must raise UnknownTaskError naming them."""
    unknown = sorted(n for n in names if n not in g)
    if not unknown:
        return False
    before = _snapshot(g)
    with pytest.raises(ag.UnknownTaskError) as info:
        call()
    assert info.value.names == unknown
    assert isinstance(info.value, KeyError)
    assert _snapshot(g) == before
    return True


@FAST
@given(gr=graph_with_records(), data=st.data())
def test_reset_semantics(gr: tuple[Dag, ag.Graph], data: st.DataObject) -> None:
    dag, g = gr
    names = data.draw(_names_maybe_unknown(dag), label="names")
    if _check_unknown(g, names, lambda: ag.reset(g, names)):
        return
    before = _snapshot(g)
    new = ag.reset(g, names)
    assert _snapshot(g) == before
    assert _snapshot(g.reset(names)) == _snapshot(new)
    targets = set(names) | dag.descendants(names)
    for n in dag.names:
        if n in targets:
            assert new.records[n] == ag.TaskRecord()
        else:
            assert new.records[n] == g.records[n]
    assert list(new) == list(g)


@FAST
@given(gr=graph_with_records())
def test_reset_failed_semantics(gr: tuple[Dag, ag.Graph]) -> None:
    dag, g = gr
    before = _snapshot(g)
    new = ag.reset_failed(g)
    assert _snapshot(g) == before
    bad = {n for n, r in g.records.items() if r.status in (S.FAILED, S.SKIPPED, S.CANCELLED)}
    targets = bad | dag.descendants(bad)
    for n in dag.names:
        if n in targets:
            assert new.records[n] == ag.TaskRecord()
        else:
            assert new.records[n] == g.records[n]


@FAST
@given(gr=graph_with_records(), data=st.data())
def test_mark_done_semantics(gr: tuple[Dag, ag.Graph], data: st.DataObject) -> None:
    dag, g = gr
    names = data.draw(_names_maybe_unknown(dag), label="names")
    if _check_unknown(g, names, lambda: ag.mark_done(g, names)):
        return
    results = {
        n: data.draw(st.integers(), label=f"result {n}")
        for n in data.draw(subsets(names), label="with results")
    }
    before = _snapshot(g)
    # Results for a name that is not being marked: ValueError (UnknownTaskError if unknown).
    stray = data.draw(st.sampled_from([*dag.names, MISSING]), label="stray")
    if stray not in names:
        exc = ValueError if stray in g else ag.UnknownTaskError
        with pytest.raises(exc):
            ag.mark_done(g, names, {**results, stray: 1})
        assert _snapshot(g) == before

    new = ag.mark_done(g, names, results)
    assert _snapshot(g) == before
    assert _snapshot(g.mark_done(names, results)) == _snapshot(new)
    below = dag.descendants(names) - set(names)
    for n in dag.names:
        old, rec = g.records[n], new.records[n]
        if n in names:
            assert rec.status is S.DONE
            # Without a given result a task keeps its own only if it was done already;
            # any other is done without one (issue 10, item 27).
            kept = old.result if old.status is S.DONE else NO_RESULT
            assert rec.result == (results[n] if n in results else kept)
        elif n in below and old.status in (S.SKIPPED, S.CANCELLED):
            assert rec == ag.TaskRecord()
        else:
            assert rec == old


@FAST
@given(gr=graph_with_records(), data=st.data())
def test_mark_done_except_semantics(gr: tuple[Dag, ag.Graph], data: st.DataObject) -> None:
    dag, g = gr
    names = data.draw(_names_maybe_unknown(dag), label="names")
    if _check_unknown(g, names, lambda: ag.mark_done_except(g, names)):
        return
    before = _snapshot(g)
    new = ag.mark_done_except(g, names)
    assert _snapshot(g) == before
    assert _snapshot(g.mark_done_except(names)) == _snapshot(new)
    for n in dag.names:
        old, rec = g.records[n], new.records[n]
        if n in names:
            assert rec == ag.TaskRecord()
        elif old.status is S.DONE:
            assert rec == old
        else:
            assert rec.status is S.DONE
            assert rec.result is NO_RESULT  # not done before: no result (issue 10, item 27)


@FAST
@given(gr=graph_with_records(), data=st.data())
def test_subgraph_semantics(gr: tuple[Dag, ag.Graph], data: st.DataObject) -> None:
    dag, g = gr
    targets = data.draw(_names_maybe_unknown(dag), label="targets")
    if _check_unknown(g, targets, lambda: ag.subgraph(g, targets)):
        return
    before = _snapshot(g)
    sub = ag.subgraph(g, targets)
    assert _snapshot(g) == before
    assert len(g) == len(dag)
    keep = set(targets) | dag.ancestors(targets)
    assert list(sub) == [n for n in g if n in keep]  # definition order kept
    for n in sub:
        assert sub.tasks[n] is g.tasks[n]
        assert sub.records[n] == g.records[n]
    sub.validate()  # closed under dependencies
    assert set(sub.topological_order()) == keep
    assert _snapshot(g.subgraph(targets)) == _snapshot(sub)


@FAST
@given(gr=graph_with_records(), data=st.data())
def test_queries_unknown_names(gr: tuple[Dag, ag.Graph], data: st.DataObject) -> None:
    dag, g = gr
    names = data.draw(_names_maybe_unknown(dag), label="names")
    if _check_unknown(g, names, lambda: g.descendants(names)):
        _check_unknown(g, names, lambda: g.ancestors(names))
        return
    assert g.descendants(names) == dag.descendants(names)
    assert g.ancestors(names) == dag.ancestors(names)
    order = g.topological_order()
    pos = {n: i for i, n in enumerate(order)}
    for n in dag.names:
        assert g.dependencies(n) == dag.dep_names(n)
        assert set(g.children(n)) == set(dag.children(n))
        assert all(pos[d] < pos[n] for d in dag.dep_names(n))


# ======================================================================================
# 4. Random crash points on a store, random rewrites, then a resume
# ======================================================================================


class CrashProbe:
    """What ran in which run, and whether each task's dependencies were done when it
    started. Its fingerprint is constant (``__reduce_ex__``): the tasks close over it,
    and its changing counters must not count as a code change."""

    def __init__(self, dag: Dag) -> None:
        self.dag = dag
        self.run = 0
        self.finished: set[str] = set()  # returned a result, in any run
        self.calls: list[tuple[int, str]] = []  # (run, task)
        self.early: list[str] = []  # started before a dependency had finished

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (str, ("crash-probe",))

    def start(self, name: str) -> None:
        self.calls.append((self.run, name))
        if any(d not in self.finished for d in self.dag.dep_names(name)):
            self.early.append(name)

    def ran_in(self, run: int) -> set[str]:
        return {n for r, n in self.calls if r == run}


def _crash_graph(case: RunCase, broken: frozenset[str], probe: CrashProbe) -> ag.Graph:
    g = ag.Graph()
    for i in case.dag.add_order:
        name = case.dag.names[i]

        async def fn(*args: Any, name: str = name) -> int:
            probe.start(name)
            for _ in range(case.yields[name]):
                await asyncio.sleep(0)
            if name in broken:
                raise Boom(name)
            probe.finished.add(name)
            return value_of(name, args)

        g.add(name, fn, deps=list(case.dag.dep_names(name)))
    return g


async def _run_until(g: ag.Graph, db: str, crash_at: int) -> list[ag.Event]:
    """Run on ``db`` and cancel the run at its ``crash_at``-th event (if it gets there)."""
    events: list[ag.Event] = []

    def on_event(event: ag.Event) -> None:
        events.append(event)
        if len(events) == crash_at:
            run.cancel()

    run = asyncio.ensure_future(ag.run(g, store=db, deadline=GUARD, on_event=on_event))
    with contextlib.suppress(asyncio.CancelledError):
        await run
    return events


def _check_events(events: list[ag.Event]) -> None:
    """Within a run, a task's terminal event is its last one."""
    terminal = {"done", "failed", "skipped", "cancelled"}
    ended: set[str] = set()
    for e in events:
        assert e.task not in ended, f"{e.kind.value} after {e.task} had ended"
        if e.kind.value in terminal:
            ended.add(e.task)


@settings(RUNS, max_examples=40)
@given(case=run_cases(max_tasks=15), data=st.data())
def test_random_crash_points_and_rewrites_then_resume(case: RunCase, data: st.DataObject) -> None:
    _crash_then_resume(case, data)


@pytest.mark.long
@settings(RUNS, max_examples=1000)
@given(case=run_cases(), data=st.data())
def test_random_crash_points_and_rewrites_then_resume_long(
    case: RunCase, data: st.DataObject
) -> None:
    _crash_then_resume(case, data)


def _crash_then_resume(case: RunCase, data: st.DataObject) -> None:
    r"""Cancel a run on a store at a random event, rewrite the loaded graph at random
    (nothing; reset random tasks; mark the failed tasks done with given results; reset,
    then run only a subgraph of random targets), then resume: no task starts before its
    dependencies are done, a terminal state is final within a run, nothing done in the
    store runs again unless the rewrite asked for it, and the end is what a clean run
    gives from the same inputs (skipped exactly below a failure).
    """
    import tempfile

    dag = case.dag
    broken = frozenset(case.failing)
    probe = CrashProbe(dag)
    crash_at = data.draw(st.integers(1, 4 * len(dag)), label="crash at event")
    # Drawn whatever the crash left, so that the draws never depend on commit timing.
    rewrite = data.draw(st.sampled_from(["none", "reset", "mark", "subgraph"]), label="rewrite")
    names = data.draw(subsets(dag.names), label="reset names")
    given_results = {n: data.draw(st.integers(0, 1000), label=f"mark {n}") for n in dag.names}
    targets = data.draw(
        st.lists(st.sampled_from(dag.names), min_size=1, unique=True), label="subgraph targets"
    )
    initial: dict[str, tuple[ag.State, Any]] = {}
    keep = set(dag.names)
    with tempfile.TemporaryDirectory() as tmp:
        db = f"{tmp}/store.db"
        first = asyncio.run(_run_until(_crash_graph(case, broken, probe), db, crash_at))
        _check_events(first)
        stored = ag.load(_crash_graph(case, broken, probe), db)
        held = {n for n, s in stored.status.items() if s is S.DONE}

        again: set[str] = set()
        if rewrite in ("reset", "subgraph"):
            again = set(names) | dag.descendants(names)
            resumed = ag.reset_failed(ag.reset(stored, names))
            if rewrite == "subgraph":
                resumed = ag.subgraph(resumed, targets)
                keep = set(targets) | dag.ancestors(targets)
        elif rewrite == "mark":
            failed_before = [n for n, s in stored.status.items() if s is S.FAILED]
            marks = {n: given_results[n] for n in failed_before}
            resumed = ag.mark_done(ag.reset_failed(stored), failed_before, marks)
            initial = {n: (S.DONE, v) for n, v in marks.items()}
            probe.finished.update(marks)  # done without running: their children may start
        else:
            resumed = _crash_graph(case, broken, probe)  # a plain rerun on the store
        probe.run = 1
        second: list[ag.Event] = []
        out = asyncio.run(ag.run(resumed, store=db, deadline=GUARD, on_event=second.append))
        _check_events(second)
        results = dict(out.results)  # reused results load from the store: read them here

    assert probe.early == [], f"started before their dependencies were done: {probe.early}"
    reran = probe.ran_in(1) & held
    assert reran <= again, f"done in the store, ran again: {sorted(reran - again)}"
    assert not probe.ran_in(1) & set(initial), "a task marked done ran"
    exp_status, exp_results = reference_run(dag, broken, initial)
    assert out.status == {n: s for n, s in exp_status.items() if n in keep}
    assert results == {n: v for n, v in exp_results.items() if n in keep}
    failed = {n for n, s in out.status.items() if s is S.FAILED}
    for n in keep:
        assert (out.status[n] is S.SKIPPED) == bool(dag.ancestors([n]) & failed), n


# ======================================================================================
# 5. Random faults in a driver process: rewrites, then SIGKILL, SIGTERM, dead workers
# ======================================================================================
#
# Each example draws a graph (strategies.scenario_specs) and 1-3 phases (more in long
# mode), then a final phase. A phase is one run of tests/reliability_driver.py's
# scenario driver in a process of its own, after a random recovery script: a plain run,
# or load + reset(random tasks) + mark_done(random not-done tasks, with tokens as
# results) + reset_failed + subgraph(random targets). During the run one random fault
# may strike: SIGKILL the driver's process group, SIGKILL only the driver (as the OOM
# killer does), SIGTERM the driver (docker stop), or SIGKILL a busy worker; at a random
# done line, or when the holder waits (its sibling's parent has just committed, the
# sibling has not started), or when a CPU task is busy. The final phase marks the
# broken tasks done and runs to the end without a fault.
#
# After every phase (see _check_phase): the store opens; every task announced done is
# done in the store; every result the store would reuse chains with its inputs' results
# (no stale descendant); nothing done in the store before the phase ran in it unless the
# phase reset it; a phase that ran to its end recomputed what it reset and kept what it
# marked, failed only broken tasks (or the killed worker's, with WorkerDiedError),
# skipped only below those; each finished run's counts in history equal its rows; after
# a SIGTERM the run is recorded cancelled, every task it started has an end row, and no
# worker outlives the driver, as after a SIGKILL of the driver alone.

TESTS = Path(__file__).resolve().parent
SCENARIO_BOOT = "import reliability_driver as d; d.scenario_main()"
DRIVER_GUARD = 120.0  # seconds: a watchdog against a hung driver, not a bound on the run
LEAK_WAIT = 10.0  # seconds a worker may take to die after its driver (a bounded wait)
DRIVER_FAULTS = ("killpg", "kill", "term")


@dataclass
class Fault:
    kind: str  # none, killpg, kill (the driver only), term, worker
    at: int | str  # the number of done lines, or "hold" (the holder), "victim" (a CPU task)
    victim: str | None = None


@dataclass
class Stage:
    """One phase: its recovery script (``ops``, as the driver reads it), its fault, and
    what happened."""

    index: int
    ops: dict[str, Any]
    fault: Fault
    announced: list[str] = field(default_factory=list)
    fired: str | None = None  # the fault that struck, if one did
    killed_worker: str | None = None  # the victim whose worker was killed
    finished: dict[str, list[Any]] | None = None  # {name: [status, error type]}
    lines: list[str] = field(default_factory=list)  # what the driver printed
    hung: bool = False  # the watchdog killed it
    targets: set[str] = field(default_factory=set)  # reset names and their descendants

    @property
    def name(self) -> str:
        return f"p{self.index}"


class ScenarioTrial:
    def __init__(self, tmp: Path, dag: Dag, spec: dict[str, Any], seed: int = 0) -> None:
        self.tmp = tmp
        self.seed = seed  # of the phases' scripts and faults
        self.dag = dag
        self.spec = spec
        self.db = tmp / "store.db"
        self.log = tmp / "ran.log"
        self.spec_path = tmp / "spec.json"
        self.spec_path.write_text(json.dumps(spec))
        self.names = [*dag.names, *([HOLDER] if spec["holder"] else [])]
        self.deps = {n: dag.dep_names(n) for n in dag.names}
        if spec["holder"]:
            self.deps[HOLDER] = ()
        self.phases: list[Stage] = []
        self.tokens: dict[str, set[str]] = {}  # the mark tokens handed out, per task
        self.violations: list[str] = []
        self.seen: set[Any] = set()
        self.done_before: set[str] = set()  # what the store would reuse (load's view)

    # -- the model ----------------------------------------------------------------------

    def descendants(self, names: Iterable[str]) -> set[str]:
        return self.dag.descendants([n for n in names if n != HOLDER])

    def ancestors(self, names: Iterable[str]) -> set[str]:
        return self.dag.ancestors([n for n in names if n != HOLDER])

    def token(self, name: str, phase: int) -> str:
        digest = driver.chain_digest(name, f"mark-{phase}", ())
        tok = f"{name}|m{phase}|{digest}"
        self.tokens.setdefault(name, set()).add(tok)
        return tok

    def violation(self, phase: Stage, item: str, what: str, key: Any = None) -> None:
        """Record a broken invariant (once per ``key``, if given: a run's counts, say)."""
        if key is not None:
            if key in self.seen:
                return
            self.seen.add(key)
        self.violations.append(f"{phase.name} [{item}] {what}")

    def __str__(self) -> str:
        lines = [f"seed {self.seed}, spec {json.dumps(self.spec)}"]
        for p in self.phases:
            lines.append(
                f"  {p.name}: ops {p.ops}, fault {p.fault}, fired {p.fired}, "
                f"announced {len(p.announced)}, finished {p.finished is not None}"
            )
        return "\n".join(lines)

    # -- the log and the store -----------------------------------------------------------

    def log_lines(self, phase: Stage) -> list[tuple[str, int, str]]:
        """(task, pid, kind) of each start the side-effect log has for ``phase``."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            p, name, pid, kind = line.split()
            if p == phase.name:
                out.append((name, int(pid), kind))
        return out

    def loaded(self) -> ag.Graph | None:
        if not self.db.exists():
            return None
        return ag.load(driver.build_scenario(self.spec), self.db)

    def history_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(runs, history) read straight from the file (read-only)."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            runs = conn.execute(
                "SELECT id, status, done, failed, skipped, cancelled FROM runs ORDER BY id"
            ).fetchall()
        finally:
            conn.close()
        return runs, history_records(self.db)  # schema 2: one history row per batch


def _watchdog(proc: subprocess.Popen[str], phase: Stage) -> threading.Timer:
    def kill() -> None:
        phase.hung = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGUSR1)  # the driver dumps its threads' stacks
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(DRIVER_GUARD, kill)
    timer.daemon = True
    timer.start()
    return timer


def _worker_processes(pids: Iterable[int]) -> list[psutil.Process]:
    """The live worker processes among ``pids`` (by their command line)."""
    out = []
    for pid in set(pids):
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and any(
                "_worker.py" in part for part in p.cmdline()
            ):
                out.append(p)
        except psutil.Error:
            continue
    return out


def _run_phase(trial: ScenarioTrial, phase: Stage) -> None:
    """One driver process: start it, strike the phase's fault, wait for it to end."""
    phase_path = trial.tmp / f"{phase.name}.json"
    phase_path.write_text(json.dumps(phase.ops))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
        "RELIABILITY_PHASE": phase.name,
        "RELIABILITY_DIR": str(trial.tmp),
        "RELIABILITY_VICTIM": phase.fault.victim or "",
    }
    args = [str(trial.spec_path), str(phase_path), str(trial.db), str(trial.log)]
    proc = subprocess.Popen(
        [sys.executable, "-c", SCENARIO_BOOT, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    timer = _watchdog(proc, phase)
    fault = phase.fault
    busy_workers: list[psutil.Process] = []

    def strike(kind: str) -> None:
        phase.fired = kind
        if kind == "killpg":
            os.killpg(proc.pid, signal.SIGKILL)
        elif kind == "kill":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGTERM)

    try:
        assert proc.stdout is not None and proc.stdin is not None
        for line in proc.stdout:
            phase.lines.append(line.strip())
            word, _, rest = line.strip().partition(" ")
            if word == "finished":
                phase.finished = json.loads(rest)
                break
            if word == "done":
                phase.announced.append(rest)
            struck_here = fault.kind in DRIVER_FAULTS and fault.at == len(phase.announced)
            if word in ("ready", "done") and struck_here:
                strike(fault.kind)
                break
            if word == "hold":
                name, pid = rest.split()
                if name == HOLDER:
                    if fault.at == "hold" and fault.kind in DRIVER_FAULTS:
                        strike(fault.kind)
                        break
                    proc.stdin.write(f"go {name}\n")
                    proc.stdin.flush()
                    continue
                # The victim is busy in its worker: kill the worker, or the driver now.
                busy_workers.extend(_worker_processes([int(pid)]))
                if fault.kind == "worker":
                    phase.fired = "worker"
                    phase.killed_worker = name
                    os.kill(int(pid), signal.SIGKILL)
                    continue
                strike(fault.kind)
                break
        else:
            what = "was killed by the watchdog (hung)" if phase.hung else "ended without a word"
            trial.violation(
                phase,
                "driver",
                f"the driver {what}: {proc.wait()}; it printed {phase.lines[-6:]} (the "
                "stacks of its threads are on stderr)",
            )
        try:
            proc.wait(timeout=DRIVER_GUARD)
        except subprocess.TimeoutExpired:
            trial.violation(phase, "item 6", f"the driver did not exit after {phase.fired}")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        timer.cancel()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        if phase.fired is not None and phase.fired != "worker":
            _check_no_worker_left(trial, phase, proc.pid, busy_workers)
        with contextlib.suppress(OSError):
            proc.stdout.close()  # type: ignore[union-attr]
    if phase.finished is None and phase.fired in (None, "worker"):
        trial.violation(phase, "driver", f"the driver exited {proc.returncode} unfinished")


def _check_no_worker_left(
    trial: ScenarioTrial, phase: Stage, pgid: int, busy: list[psutil.Process]
) -> None:
    """No worker of the dead driver is left: the ones its tasks wrote in the log (and the
    busy victim), waited for a bounded time (reaping orphans is init's job)."""
    pids = [pid for _, pid, kind in trial.log_lines(phase) if kind == "cpu"]
    left = _worker_processes(pids) + [p for p in busy if p.is_running()]
    _, alive = psutil.wait_procs(left, timeout=LEAK_WAIT)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if alive:
        trial.violation(
            phase,
            "item 6",
            f"{len(alive)} worker(s) outlived the driver after {phase.fired}: "
            f"{[p.pid for p in alive]}",
        )
        for p in alive:  # ours (the driver's children): clean up for the next phase
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=LEAK_WAIT)
    if phase.fired == "killpg":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # a fork a task made, say: not this test's topic


def _parse(value: Any) -> tuple[str, str, str]:
    name, stamp, digest = driver.header_of(value).split("|")
    return name, stamp, digest


def _check_phase(trial: ScenarioTrial, phase: Stage, runs_before: int) -> None:
    """Every invariant after one phase (violations are collected, not raised)."""
    v = trial.violation
    g = trial.loaded()
    stored: dict[str, Any] = {}  # every done row's result (not only what load reuses)
    if trial.db.exists():
        store = ag.SQLiteStore(trial.db)
        try:
            for n, t in store.tasks().items():
                if t.status is S.DONE and t.result_id is not None:
                    stored[n] = store.load_result(t.result_id, n)
        finally:
            store.close()
    stored_done = set(stored)
    # A done event is a promise: the result is in the store.
    lost = set(phase.announced) - stored_done
    if lost:
        v(phase, "done event", f"announced done, not done in the store: {sorted(lost)}")
    reusable = set() if g is None else {n for n, s in g.status.items() if s is S.DONE}

    # No stale result: every result the store would reuse chains with its inputs'.
    ran = trial.log_lines(phase)
    ran_where = {p.name: {n for n, _, _ in trial.log_lines(p)} for p in trial.phases}
    digests: dict[str, str] = {}
    values: dict[str, Any] = {}
    for n in trial.names:
        if n in reusable:
            assert g is not None
            values[n] = g.results[n]
            name, stamp, digests[n] = _parse(values[n])
            if name != n:
                v(phase, "result", f"{n}'s stored result is {name}'s")
    for n in trial.names:
        if n not in values:
            continue
        name, stamp, digest = _parse(values[n])
        if stamp.startswith("m"):
            if values[n] not in trial.tokens.get(n, ()):
                v(phase, "mark", f"{n} holds a mark token it was never given: {values[n]}")
            continue
        if n not in ran_where.get(stamp, ()):
            v(phase, "result", f"{n}'s result says it ran in {stamp}, the log does not")
        want = driver.chain_digest(n, stamp, [digests[d] for d in trial.deps[n]])
        if digest != want:
            now = {d: _parse(values[d])[1] for d in trial.deps[n]}
            v(
                phase,
                _stale_item(trial, n, now.values()),
                f"stale result: {n} (computed in {stamp}) would be reused, but its inputs "
                f"were recomputed since: now from {now}",
                key=("stale", n, stamp, tuple(now.values())),
            )
        expect = driver.make_value(
            driver.header_of(values[n]),
            trial.spec["big"].get(n, 0),
            trial.spec["rows"].get(n, 0),
        )
        same = expect.equals(values[n]) if hasattr(expect, "equals") else expect == values[n]
        if not same:
            v(phase, "result", f"{n}'s stored result is damaged (size or content)")

    # Nothing the store would have reused ran in this phase unless the phase reset it.
    counts = Counter(n for n, _, _ in ran)
    again = {n for n in counts if n in trial.done_before} - phase.targets
    if again:
        v(phase, "rerun", f"done in the store, not reset, ran again: {sorted(again)}")
    allowed = {n: 1 + trial.spec["retries"].get(n, 0) for n in counts}  # retries
    twice = {n for n, c in counts.items() if c > allowed[n]}
    if twice:
        v(phase, "rerun", f"ran more than once in one run: {sorted(twice)}")

    if phase.finished is not None:
        _check_finished(trial, phase, stored)

    if trial.db.exists():
        _check_history(trial, phase, runs_before)
    trial.done_before = reusable


def _stale_item(trial: ScenarioTrial, name: str, stamps: Iterable[str]) -> str:
    """Which fault left ``name`` stale: a crash between its parent's new commit and its
    own start (item 1), or a subgraph run that recomputed a parent and left it out."""
    for stamp in stamps:
        if not stamp.startswith("p"):
            continue
        ops = trial.phases[int(stamp[1:])].ops
        if ops.get("subgraph"):
            closure = set(ops["subgraph"]) | trial.ancestors(ops["subgraph"])
            if name not in closure:
                return "new: reset, then a subgraph run, leaves a stale descendant"
    return "item 1"


def _check_finished(trial: ScenarioTrial, phase: Stage, values: Mapping[str, Any]) -> None:
    """A phase that ran to its end did what its script asked, and nothing else failed.

    ``values``: the store's done rows' results. Not load's view: a task marked done
    below a task that failed again is done in the store but not reused by load."""
    v = trial.violation
    ends = phase.finished or {}
    broken = set(trial.spec["broken"])
    bad = {n for n, (s, _) in ends.items() if s == "failed"}
    for n, (status, error) in ends.items():
        if status == "done":
            if n in phase.targets and n not in phase.ops.get("mark", {}):
                stamp = _parse(values[n])[1] if n in values else None
                if stamp != phase.name:
                    v(phase, "reset", f"{n} was reset, ended done, result from {stamp}")
            if n in phase.ops.get("mark", {}) and values.get(n) != phase.ops["mark"][n]:
                v(phase, "mark", f"{n} was marked done with a token, holds {values.get(n)!r}")
        elif status == "failed":
            if n == phase.killed_worker and n not in broken:
                if error != "WorkerDiedError":
                    v(phase, "worker kill", f"{n}'s worker was killed; it failed with {error}")
            elif n not in broken:
                v(phase, "worker kill", f"{n} failed with {error}; only broken tasks may")
        elif status == "skipped":
            if not trial.ancestors([n]) & bad:
                v(phase, "skipped", f"{n} was skipped with no failed ancestor")
        else:
            v(phase, "run", f"{n} ended {status} in a run that ran to its end")
    victim = phase.killed_worker
    if victim is not None and victim not in broken:
        retries = trial.spec["retries"].get(victim, 0)
        want = "done" if retries else "failed"
        if ends.get(victim, ["?"])[0] != want:
            v(phase, "worker kill", f"{victim} ({retries} retries) ended {ends.get(victim)}")


def _check_history(trial: ScenarioTrial, phase: Stage, runs_before: int) -> None:
    """Each run that has ended: its counts equal its rows (the last row of each task in
    the run; marks, recorded done with no attempt, are not counted as done)."""
    v = trial.violation
    runs, rows = trial.history_rows()
    last: dict[tuple[int, str], tuple[str, int]] = {}
    for run_id, name, status, attempts in rows:
        last[(run_id, name)] = (status, attempts)
    per_run: dict[int, Counter[str]] = {}
    for (run_id, _), (status, attempts) in last.items():
        c = per_run.setdefault(run_id, Counter())
        if status != "done" or attempts > 0:
            c[status] += 1
    for run_id, status, done, failed, skipped, cancelled in runs:
        if status == "running":
            continue
        c = per_run.get(run_id, Counter())
        have = {"done": done, "failed": failed, "skipped": skipped, "cancelled": cancelled}
        want = {k: c[k] for k in have}
        if have != want:
            item = "item 21" if status == "crashed" else "item 18"
            what = f"run {run_id} ({status}): history counts {have}, rows {want}"
            v(phase, item, what, key=("counts", run_id, status))
    new = runs[runs_before:]
    if phase.fired == "term" and new:
        # Cancelled as by Ctrl-C; or, if the signal came as the run ended, done or failed
        # (then nothing was cancelled).
        run_id, status = new[-1][0], new[-1][1]
        rows_of_run = {n: s for (r, n), (s, _) in last.items() if r == run_id}
        if status != "cancelled" and (
            status not in ("done", "failed") or "cancelled" in rows_of_run.values()
        ):
            v(phase, "item 6", f"SIGTERM: run {run_id} is recorded {status}, not cancelled")
        ended = {n for n, s in rows_of_run.items() if s != "running"}
        started = {n for n, _, _ in trial.log_lines(phase)}
        if started - ended:
            v(phase, "item 6", f"SIGTERM: started, no end row: {sorted(started - ended)}")


def aim_at_hold(ops: Mapping[str, Any], holder: Mapping[str, str] | None) -> bool:
    return bool(holder) and ops.get("reset") == [holder["after"], HOLDER]  # type: ignore[index]


def _some(rng: random.Random, items: Iterable[str]) -> list[str]:
    """A random subset (sorted), of a random density."""
    p = rng.choice([0.15, 0.3, 0.6])
    return sorted(n for n in items if rng.random() < p)


def _draw_phase(trial: ScenarioTrial, rng: random.Random, index: int, final: bool) -> Stage:
    """A random recovery script and fault for the next phase, from what the store holds.

    From a seeded ``random.Random``, not from Hypothesis: the choices depend on what the
    store holds after a fault, which varies from one run of the same example to the next.
    """
    spec = trial.spec
    holder = spec["holder"]
    prev = trial.phases[-1] if trial.phases else None
    if final:
        broken = [n for n in spec["broken"] if n not in trial.done_before]
        ops = {"load": True, "mark": {n: trial.token(n, index) for n in broken}}
        return Stage(index, ops, Fault("none", 0))
    crashed = prev is not None and prev.finished is None
    if prev is not None and crashed and rng.randint(1, 3) == 1:
        ops = prev.ops  # the user runs the same recovery script again
    elif prev is None or rng.randint(1, 4) == 1:
        ops = {"load": False}
    else:
        ops = {"load": True}
        # Aim at the window of item 1: reset the holder's `after` (so its waiting child
        # too) and the holder, and strike when `after`'s new result is committed. Only
        # worth it while the store holds the waiter done (its result could go stale).
        aim = bool(holder) and holder["waiter"] in trial.done_before and rng.random() < 0.7
        if aim:
            ops["reset"] = [holder["after"], HOLDER]
        else:
            ops["reset"] = _some(rng, trial.names)
        targets = set(ops["reset"]) | trial.descendants(ops["reset"])
        markable = [n for n in trial.names if n not in trial.done_before | targets]
        ops["mark"] = {n: trial.token(n, index) for n in _some(rng, markable)}
        if not aim and rng.randint(1, 3) == 1:
            ops["subgraph"] = sorted(rng.sample(trial.names, rng.randint(1, len(trial.names))))
    cpu = [n for n in trial.names if spec["kinds"].get(n) == "cpu"]
    # A victim must run to be caught busy: prefer CPU tasks the store would not reuse.
    targets = set(ops.get("reset", ())) | trial.descendants(ops.get("reset", ()))
    cpu = [n for n in cpu if n not in trial.done_before or n in targets] or cpu
    kind = rng.choice(["none", "killpg", "kill", "term", *(["worker"] if cpu else [])])
    if index == 0 and rng.random() < 0.5:
        kind = "none"  # half the first runs finish: later scripts have results to go stale
    fault = Fault(kind, 0)
    if aim_at_hold(ops, holder) and kind != "worker":
        fault = Fault(rng.choice(DRIVER_FAULTS), "hold")
    elif kind == "worker":
        fault = Fault(kind, "victim", rng.choice(cpu))
    elif kind != "none":
        if cpu and rng.randint(1, 3) == 1:
            fault = Fault(kind, "victim", rng.choice(cpu))
        else:
            fault = Fault(kind, rng.randint(0, len(trial.names)))
    phase = Stage(index, ops, fault)
    if ops.get("load"):
        phase.targets = targets
    return phase


def _scenario(tmp: Path, dag: Dag, spec: dict[str, Any], seed: int, phases: int) -> None:
    """1..``phases`` random phases, then the final one."""
    rng = random.Random(seed)
    count = rng.randint(1, phases)

    def next_phase(trial: ScenarioTrial, index: int) -> Stage | None:
        if index > count:
            return None
        return _draw_phase(trial, rng, index, final=index == count)

    _play(ScenarioTrial(tmp, dag, spec, seed), next_phase)


def _play(trial: ScenarioTrial, next_phase: Any, *, tally: Tally | None = None) -> None:
    """Run the phases ``next_phase(trial, index)`` gives (until None), checking each;
    the last must end with every task done. With a ``tally``, count the trial there and
    leave the verdict to it."""
    index = 0
    while (phase := next_phase(trial, index)) is not None:
        trial.phases.append(phase)
        runs_before = len(trial.history_rows()[0]) if trial.db.exists() else 0
        _run_phase(trial, phase)
        _check_phase(trial, phase, runs_before)
        index += 1
    last = trial.phases[-1]
    if last.finished is None or {s for s, _ in last.finished.values()} != {"done"}:
        trial.violation(last, "end", f"the final run did not end all done: {last.finished}")
    if trial.done_before != set(trial.names):
        missing = sorted(set(trial.names) - trial.done_before)
        trial.violation(last, "end", f"not done in the store at the end: {missing}")
    if tally is not None:
        tally.add(trial)
        return
    assert not trial.violations, "\n".join([str(trial), *trial.violations])


class Tally:
    """The figures of many trials (docs/reliability.md): phases, faults struck, the
    examples with each kind of violation, and the first few reports of each."""

    def __init__(self) -> None:
        self.examples = 0
        self.tasks = 0
        self.phases = 0
        self.struck: Counter[str] = Counter()
        self.finished = 0
        self.by_item: Counter[str] = Counter()
        self.reports: dict[str, list[str]] = {}

    def add(self, trial: ScenarioTrial) -> None:
        self.examples += 1
        self.tasks += len(trial.names)
        self.phases += len(trial.phases)
        self.finished += sum(p.finished is not None for p in trial.phases)
        self.struck.update(p.fired for p in trial.phases if p.fired)
        items = set()
        for line in trial.violations:
            item = line.split("[", 1)[1].split("]", 1)[0]
            items.add(item)
            shown = self.reports.setdefault(item, [])
            if len(shown) < 2:
                shown.append(f"{line}\n{trial}")
        self.by_item.update(items)

    def __str__(self) -> str:
        items = ", ".join(f"{item}: {n}" for item, n in self.by_item.most_common()) or "none"
        return (
            f"{self.examples} examples ({self.tasks} tasks), {self.phases} phases "
            f"({self.finished} ran to the end), faults struck {dict(self.struck)}; "
            f"examples with violations by item: {items}"
        )


SCENARIOS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: processes are slow
)


@settings(SCENARIOS, max_examples=4)
@given(case=scenario_specs(max_tasks=8), seed=st.integers(0, 2**32))
def test_random_faults_in_a_driver_after_rewrites(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[Dag, dict[str, Any]], seed: int
) -> None:
    _scenario(tmp_path_factory.mktemp("scenario"), *case, seed, phases=3)


@pytest.mark.long
def test_random_faults_in_a_driver_after_rewrites_long(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``ASYNCGRAPH_SCENARIOS`` (150) examples of up to 16 tasks and 6 random phases. All
    are run, whatever fails, and the figures printed (``-s``); any violation fails."""
    tally = Tally()

    @settings(SCENARIOS, max_examples=int(os.environ.get("ASYNCGRAPH_SCENARIOS", "150")))
    @given(case=scenario_specs(max_tasks=16), seed=st.integers(0, 2**32))
    def one(case: tuple[Dag, dict[str, Any]], seed: int) -> None:
        rng = random.Random(seed)
        count = rng.randint(1, 6)

        def next_phase(trial: ScenarioTrial, index: int) -> Stage | None:
            if index > count:
                return None
            return _draw_phase(trial, rng, index, final=index == count)

        trial = ScenarioTrial(tmp_path_factory.mktemp("scenario"), *case, seed)
        _play(trial, next_phase, tally=tally)

    one()
    print(f"\n{tally}")
    reports = [r for shown in tally.reports.values() for r in shown]
    assert not tally.by_item, "\n\n".join([str(tally), *reports])


# The same harness on fixed scripts: one window or fault each, every time.


def _spec(
    deps: Mapping[str, Iterable[str]],
    kinds: Mapping[str, str] | None = None,
    holder: tuple[str, str] | None = None,
    retries: Mapping[str, int] | None = None,
    big: Mapping[str, int] | None = None,
) -> tuple[Dag, dict[str, Any]]:
    names = tuple(deps)
    index = {n: i for i, n in enumerate(names)}
    dag = Dag(
        names=names,
        deps=tuple(tuple(index[d] for d in deps[n]) for n in names),
        add_order=tuple(range(len(names))),
    )
    spec = {
        "names": list(names),
        "deps": [list(ds) for ds in dag.deps],
        "add_order": list(dag.add_order),
        "kinds": {n: (kinds or {}).get(n, "io") for n in names},
        "big": dict(big or {}),
        "rows": {},
        "broken": [],
        "retries": dict(retries or {}),
        "holder": holder and {"name": HOLDER, "after": holder[0], "waiter": holder[1]},
    }
    return dag, spec


def _fixed(tmp: Path, case: tuple[Dag, dict[str, Any]], stages: list[Stage]) -> None:
    for s in stages:
        if s.ops.get("load"):
            s.targets = set(s.ops.get("reset", ())) | case[0].descendants(
                [n for n in s.ops.get("reset", ()) if n != HOLDER]
            )
    _play(ScenarioTrial(tmp, *case), lambda _, i: stages[i] if i < len(stages) else None)


PLAIN = {"load": False}


def test_crash_between_a_reset_parents_commit_and_its_childs_start(tmp_path: Path) -> None:
    """Item 1's window, every time: ``source`` (a few MB) and the holder are reset, so
    ``derived`` is reset too; ``derived`` waits on the named limit the holder keeps
    until ``source``'s new result is committed; SIGKILL then. The resume must not reuse
    ``derived``'s old result."""
    case = _spec(
        {"source": [], "derived": ["source"], "tail": ["derived"]},
        holder=("source", "derived"),
        big={"source": 3 << 20},
    )
    reset = {"load": True, "reset": ["source", HOLDER], "mark": {}}
    _fixed(
        tmp_path,
        case,
        [
            Stage(0, PLAIN, Fault("none", 0)),
            Stage(1, reset, Fault("killpg", "hold")),
            Stage(2, PLAIN, Fault("none", 0)),
        ],
    )


def test_sigterm_while_a_cpu_task_computes(tmp_path: Path) -> None:
    """SIGTERM to the driver (docker stop) while a CPU task is busy: the run is recorded
    cancelled with an end row for each started task, and the worker dies too (item 6)."""
    case = _spec({"a": [], "busy": ["a"], "b": ["busy"]}, kinds={"busy": "cpu"})
    _fixed(
        tmp_path,
        case,
        [Stage(0, PLAIN, Fault("term", "victim", "busy")), Stage(1, PLAIN, Fault("none", 0))],
    )


def test_sigkill_of_the_driver_alone_while_a_cpu_task_computes(tmp_path: Path) -> None:
    """SIGKILL to the driver only (the OOM killer), a CPU task busy: its worker must not
    keep computing (item 6); the resume reruns it."""
    case = _spec({"a": [], "busy": ["a"], "b": ["busy"]}, kinds={"busy": "cpu"})
    _fixed(
        tmp_path,
        case,
        [Stage(0, PLAIN, Fault("kill", "victim", "busy")), Stage(1, PLAIN, Fault("none", 0))],
    )


@pytest.mark.parametrize("retries", [0, 1])
def test_a_killed_worker_fails_only_its_task(tmp_path: Path, retries: int) -> None:
    """SIGKILL a busy worker: its task fails with WorkerDiedError (or its retry
    succeeds), its child is skipped, the rest of the run and the store are unaffected."""
    case = _spec(
        {"a": [], "busy": ["a"], "b": ["busy"], "c": ["a"], "d": []},
        kinds={"busy": "cpu", "d": "cpu"},
        retries={"busy": retries},
    )
    _fixed(
        tmp_path,
        case,
        [Stage(0, PLAIN, Fault("worker", "victim", "busy")), Stage(1, PLAIN, Fault("none", 0))],
    )


def test_reset_then_a_subgraph_run_leaves_no_stale_descendant() -> None:
    """``reset(g, ["a"])`` resets ``b`` too; running only ``subgraph(..., ["a"])``
    recomputes ``a``. A later run must not reuse ``b``'s result computed from the old
    ``a`` (found by section 5; kin of item 1, with no crash at all)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "input")
        db = str(Path(tmp, "store.db"))

        def build() -> ag.Graph:
            g = ag.Graph()
            g.add("a", source.read_text)  # data read at run time: reset to rerun
            g.add("b", lambda a: a + "!", deps=["a"])
            return g

        source.write_text("v1")
        ag.run_sync(build(), store=db)
        source.write_text("v2")
        ag.run_sync(ag.subgraph(ag.reset(ag.load(build(), db), ["a"]), ["a"]), store=db)
        out = ag.run_sync(build(), store=db)
        assert dict(out.results) == {"a": "v2", "b": "v2!"}
