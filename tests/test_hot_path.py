"""The run's hot path (issue 15): its shortcuts give what the long way gives.

``Scheduler.done_ready`` is ``done`` then ``get_ready``; ``prepare_fresh`` is
``prepare`` with every task pending; the ledger's done record equals the one
``TaskRecord(...)`` builds; an executor that serves no task of the graph is given none
to check. Each is held against the long way on random graphs, with and without lanes
capped and named limits. The benchmark of the hot path runs, tiny.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

import asyncgraph as ag
from asyncgraph._executors import default_executors
from asyncgraph._options import RunOptions
from asyncgraph._runner import _Run
from asyncgraph._scheduler import Scheduler, fresh_start, unit_paths

ROOT = Path(__file__).resolve().parents[1]


def random_graph(seed: int, n: int = 60, resources: bool = False) -> ag.Graph:
    rnd = random.Random(seed)
    g = ag.Graph()
    names: list[str] = []
    for i in range(n):
        deps = rnd.sample(names, rnd.randint(0, min(3, len(names))))
        res = ("db",) if resources and rnd.random() < 0.3 else ()
        kind = "cpu" if rnd.random() < 0.25 else "io"
        g.add(f"t{i}", lambda *a: None, deps=deps, kind=kind, priority=rnd.choice([0, 0, 1]),
              resources=res)
        names.append(f"t{i}")
    return g


def drive(s: Scheduler, fused: bool, seed: int) -> list[list[str]]:
    """Run ``s`` to its end, finishing one running task (chosen by ``seed``) at a time;
    the batches it handed out, in order."""
    rnd = random.Random(seed)
    batches = [[t.name for t in s.get_ready()]]
    running = list(batches[0])
    while s.is_active():
        assert running, "the scheduler stalled"
        name = running.pop(rnd.randrange(len(running)))
        if fused:
            ready = s.done_ready(name)
        else:
            s.done(name)
            ready = s.get_ready()
        batches.append([t.name for t in ready])
        running.extend(batches[-1])
    return batches


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    "options",
    [{}, {"max_io": 2, "cpu_slots": 1}, {"max_io": 3, "limits": {"db": 1}}],
    ids=["uncapped", "capped", "limits"],
)
def test_done_ready_is_done_then_get_ready(seed, options):
    g = random_graph(seed, resources="limits" in options)
    order = g.topological_order()
    status = dict.fromkeys(g, ag.State.PENDING)
    long_way = drive(Scheduler(g.tasks, order, status, **options), False, seed)
    fused = drive(Scheduler(g.tasks, order, status, **options), True, seed)
    assert fused == long_way
    assert sum(map(len, fused)) == len(g)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("weights", [False, True])
def test_prepare_fresh_is_prepare_with_every_task_pending(seed, weights):
    g = random_graph(seed)
    dag = g._dag
    order = g.topological_order()
    w = {n: random.Random(seed).random() for n in g} if weights else None
    kw = {"max_io": 2, "children": dag.child_map(), "unit_paths": unit_paths(dag), "weights": w}
    a = Scheduler(g.tasks, order, **kw)
    a.prepare(dict.fromkeys(g, ag.State.PENDING))
    b = Scheduler(g.tasks, order, **kw)
    b.prepare_fresh(fresh_start(dag))
    assert b.initially_skipped == () == a.initially_skipped
    assert b.pending() == a.pending()
    assert drive(b, True, seed) == drive(a, False, seed)


def test_prepare_fresh_refuses_a_second_prepare_and_a_start_of_another_graph():
    g = random_graph(1, n=5)
    other = random_graph(2, n=6)
    s = Scheduler(g.tasks, g.topological_order())
    with pytest.raises(ValueError, match="not of this graph"):
        s.prepare_fresh(fresh_start(other._dag))
    s.prepare_fresh(fresh_start(g._dag))
    with pytest.raises(ValueError, match=r"prepare\(\) was called already"):
        s.prepare_fresh(fresh_start(g._dag))
    with pytest.raises(ValueError, match=r"prepare\(\) was called already"):
        s.prepare(dict.fromkeys(g, ag.State.PENDING))


def test_fresh_start_is_a_new_table_each_time_and_a_later_add_gets_its_own():
    # prepare_fresh takes the dict over: a run must never share it with another
    g = random_graph(3, n=8)
    first = fresh_start(g._dag)
    assert fresh_start(g._dag)[0] is not first[0]
    assert fresh_start(g._dag) == first
    g.add("late", lambda *a: None, deps=["t0"])
    waiting, roots = fresh_start(g._dag)
    assert waiting["late"] == 1 and "late" not in first[0]
    assert roots == tuple(n for n in g if not g.tasks[n].deps)


def test_a_run_with_some_tasks_done_takes_the_long_way_and_gets_the_same_result():
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a + 1)
    g.add("c", lambda b: b * 10)
    whole = ag.run_sync(g)
    partly = ag.run_sync(g.mark_done("a", {"a": 1}))
    assert whole.results == partly.results == {"a": 1, "b": 2, "c": 20}


def test_the_done_record_is_a_taskrecord_like_any_other():
    async def one() -> int:
        return 1

    g = ag.Graph()
    g.add("one", one)
    rec = ag.run_sync(g).records["one"]
    built = ag.TaskRecord(ag.State.DONE, 1, None, None, 1, rec.started, rec.finished)
    assert type(rec) is ag.TaskRecord
    assert rec == built and hash(rec) == hash(built)
    assert pickle.loads(pickle.dumps(rec)) == built
    assert rec.duration == built.duration >= 0
    with pytest.raises(AttributeError):
        rec.status = ag.State.FAILED  # type: ignore[misc]  # still frozen


class _Spy:
    """Wraps an executor and records what its ``check`` was given."""

    def __init__(self, inner):
        self.inner = inner
        self.checked: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def check(self, tasks, pending):
        self.checked.append(list(pending))
        return self.inner.check(tasks, pending)


@pytest.mark.parametrize("with_cpu", [False, True])
def test_an_executor_serving_no_task_of_the_graph_checks_none(with_cpu):
    async def io(*a):
        return 1

    g = ag.Graph()
    g.add("a", io)
    g.add("b", io, deps=["a"])
    if with_cpu:
        g.add("c", pow, deps={"base": "a", "exp": "b"}, kind="cpu")
    spies = [_Spy(ex) for ex in default_executors(None, 1)]

    async def main():
        r = _Run(g, RunOptions(cpu_workers=1), executors=spies)
        return await r.run()

    out = asyncio.run(main())
    assert all(s is ag.State.DONE for s in out.status.values())
    by_lane = {type(s.inner).__name__: s.checked for s in spies}
    assert by_lane["LoopExecutor"] == [["a", "b"] + (["c"] if with_cpu else [])]
    assert by_lane["ProcessExecutor"] == ([["a", "b", "c"]] if with_cpu else [[]])


def test_a_cpu_task_that_cannot_pickle_is_still_refused_before_anything_starts():
    import threading

    lock = threading.Lock()
    g = ag.Graph()
    g.add("bad", lambda: lock, kind="cpu")
    with pytest.raises(ag.PicklingError, match="bad"):
        ag.run_sync(g)


def test_the_hot_path_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "hot.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/hot_path.py", "--sizes", "300", "--pairs", "1",
         "--sleep-n", "200", "--big", "300", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("run layered", "sleep wide", "memory layered", "progress on/off"):
        assert row in proc.stdout
    assert out.stat().st_size > 0


def test_the_in_process_ab_benchmark_runs_a_tree_against_itself(tmp_path):
    out = tmp_path / "ab.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/ab_inprocess.py", str(ROOT), "--n", "200", "--pairs", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "new/old" in proc.stdout and "layered" in proc.stdout
    assert out.stat().st_size > 0
