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
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from strategies import (
    Dag,
    RunCase,
    SchedCase,
    dags,
    records_for,
    reference_run,
    run_cases,
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

    # Selection key the module documents: longest remaining path (1 per task), then
    # priority (higher first), then position in the order.
    path: dict[str, int] = {}
    for n in reversed(dag.topo):
        if n in to_run:
            path[n] = 1 + max((path[c] for c in dag.children(n) if c in to_run), default=0)
    position = {n: i for i, n in enumerate(dag.topo)}

    def key(n: str) -> tuple[int, int, int]:
        return (-path[n], -case.priority[n], position[n])

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
    r"""Cancel a run on a store at a random event, maybe reset random tasks of the loaded
    graph, then resume: no task starts before its dependencies are done, a terminal
    state is final within a run, nothing done in the store runs again unless the rewrite
    asked for it, and the end is what a clean run gives (skipped exactly below a failure).
    """
    import tempfile

    dag = case.dag
    broken = frozenset(case.failing)
    probe = CrashProbe(dag)
    crash_at = data.draw(st.integers(1, 4 * len(dag)), label="crash at event")
    with tempfile.TemporaryDirectory() as tmp:
        db = f"{tmp}/store.db"
        first = asyncio.run(_run_until(_crash_graph(case, broken, probe), db, crash_at))
        _check_events(first)
        stored = ag.load(_crash_graph(case, broken, probe), db)
        held = {n for n, s in stored.status.items() if s is S.DONE}

        again: set[str] = set()
        if data.draw(st.booleans(), label="rewrite"):
            names = data.draw(subsets(dag.names), label="reset names")
            again = set(names) | dag.descendants(names)
            resumed = ag.reset_failed(ag.reset(stored, names))
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
    exp_status, exp_results = reference_run(dag, broken)
    assert out.status == exp_status
    assert results == exp_results
    failed = {n for n, s in out.status.items() if s is S.FAILED}
    for n in dag.names:
        assert (out.status[n] is S.SKIPPED) == bool(dag.ancestors([n]) & failed), n
