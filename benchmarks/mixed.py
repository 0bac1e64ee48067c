"""Makespan of mixed IO/CPU workloads against the lower bound, with cpu_workers=2.

lower bound = max(critical path, total CPU work / workers), where the critical path is
the largest sum of task durations along a dependency path. No schedule can beat it.

(a) taskmap's README example, built with ``ag.create_graph(funcs, dependencies,
    io_bound=[...])`` exactly as in taskmap's README: two 1 s IO tasks (``await
    asyncio.sleep(1)``) and two 1 s "CPU" tasks (kind cpu: worker processes), with
    io_bound_a -> cpu_bound_a and cpu_bound_b -> io_bound_b. Lower bound: 2 s.
    Two variants:
      readme-sleep - the README's own CPU functions: ``async def`` with time.sleep(1),
                     which is not CPU work (it only holds a worker);
      readme-busy  - the honest one: the CPU functions busy-loop for 1 s
                     (``while time.perf_counter() - t0 < 1: pass``).
(b) dag200 - 200 tasks, random DAG (seed 7): each task is IO (asyncio.sleep) or CPU
    (busy loop) with equal odds, lasting 20-100 ms, and depends on 0-3 random tasks
    among the 30 defined just before it. The target is makespan <= 1.15 x lower bound.

For each, the table gives the wall time of ``await ag.run(g, cpu_workers=2)`` (what a
user waits: includes starting the worker processes and stopping them at the end), the
span of the tasks themselves (first start to last finish, from the run's records), and
for dag200 the makespan a zero-overhead simulation of asyncgraph's own policy would get
(IO first; CPU by longest remaining path counted in tasks, as the runner has no
durations), which separates the policy's cost from the runtime's.

Worker start-up: the time of a run of two no-op CPU tasks (workers start on demand, so
this is about one process start + one round trip) is reported separately.

Busy loops run against the wall clock (``time.perf_counter``), so a task's duration is
fixed even if another process steals a core; the machine has 2 cores, and the 2 workers
plus the event loop compete for them.

Usage:  python benchmarks/mixed.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import heapq
import random
import sys
import time
from typing import Any

import uvloop
from _common import median, table, write_json  # first: it may put the repo on sys.path

import asyncgraph as ag

WORKERS = 2
SEED = 7


# -- task functions (module level: they travel to the workers with cloudpickle) ----------


def busy(seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass


# (a) taskmap's README, as written there: "CPU" is time.sleep inside a coroutine.
async def io_bound_a():
    await asyncio.sleep(1)
    return "io_a"


async def io_bound_b(x):
    await asyncio.sleep(1)
    return x + " io_b"


async def cpu_bound_a(x):
    time.sleep(1)  # noqa: ASYNC251 - as in taskmap's README
    return x + " cpu_a"


async def cpu_bound_b():
    time.sleep(1)  # noqa: ASYNC251 - as in taskmap's README
    return "cpu_b"


# (a) the honest variant: 1 s of busy CPU.
def cpu_bound_a_busy(x):
    busy(1.0)
    return x + " cpu_a"


def cpu_bound_b_busy():
    busy(1.0)
    return "cpu_b"


def readme_graph(variant: str) -> ag.Graph:
    funcs = {
        "io_bound_a": io_bound_a,
        "io_bound_b": io_bound_b,
        "cpu_bound_a": cpu_bound_a if variant == "sleep" else cpu_bound_a_busy,
        "cpu_bound_b": cpu_bound_b if variant == "sleep" else cpu_bound_b_busy,
    }
    dependencies = {
        "io_bound_a": [],
        "io_bound_b": ["cpu_bound_b"],
        "cpu_bound_a": ["io_bound_a"],
        "cpu_bound_b": [],
    }
    io_bound = ["io_bound_a", "io_bound_b"]
    return ag.create_graph(funcs, dependencies, io_bound=io_bound)


def check_readme(out: ag.Graph) -> None:
    out.raise_for_failures()
    assert out.results == {
        "io_bound_a": "io_a",
        "io_bound_b": "cpu_b io_b",
        "cpu_bound_a": "io_a cpu_a",
        "cpu_bound_b": "cpu_b",
    }, out.results


README_SPEC = {  # name -> (kind, seconds, deps), in a topological order, for the bound
    "io_bound_a": ("io", 1.0, []),
    "cpu_bound_b": ("cpu", 1.0, []),
    "cpu_bound_a": ("cpu", 1.0, ["io_bound_a"]),
    "io_bound_b": ("io", 1.0, ["cpu_bound_b"]),
}


# (b) the random DAG.
async def io_task(seconds: float, *deps: Any) -> float:
    await asyncio.sleep(seconds)
    return seconds


def cpu_task(seconds: float, *deps: Any) -> float:
    busy(seconds)
    return seconds


def random_spec(n: int = 200, seed: int = SEED) -> dict[str, tuple[str, float, list[str]]]:
    rnd = random.Random(seed)
    spec: dict[str, tuple[str, float, list[str]]] = {}
    names: list[str] = []
    for i in range(n):
        name = f"t{i:03d}"
        kind = rnd.choice(("io", "cpu"))
        seconds = round(rnd.uniform(0.020, 0.100), 4)
        window = names[-30:]
        deps = rnd.sample(window, min(len(window), rnd.randint(0, 3)))
        spec[name] = (kind, seconds, deps)
        names.append(name)
    return spec


def spec_graph(spec: dict[str, tuple[str, float, list[str]]]) -> ag.Graph:
    g = ag.Graph()
    for name, (kind, seconds, deps) in spec.items():
        fn = functools.partial(io_task if kind == "io" else cpu_task, seconds)
        g.add(name, fn, deps=deps, kind=kind)
    g.validate()
    return g


# -- bounds and a zero-overhead simulation of the policy ---------------------------------


def lower_bound(spec: dict[str, tuple[str, float, list[str]]]) -> dict[str, float]:
    finish: dict[str, float] = {}
    for name, (_, s, deps) in spec.items():  # spec is in a topological order
        finish[name] = s + max((finish[d] for d in deps), default=0.0)
    critical = max(finish.values())
    cpu = sum(s for k, s, _ in spec.values() if k == "cpu")
    return {"critical_path": critical, "cpu_work": cpu, "lower_bound": max(critical, cpu / WORKERS)}


def simulate(spec: dict[str, tuple[str, float, list[str]]], weighted: bool = False) -> float:
    """Makespan of asyncgraph's policy with zero overhead: IO tasks start when ready;
    CPU tasks take one of WORKERS slots, longest remaining path first (in task counts,
    or in seconds if ``weighted``), then definition order."""
    names = list(spec)
    children: dict[str, list[str]] = {n: [] for n in names}
    for n, (_, _, deps) in spec.items():
        for d in deps:
            children[d].append(n)
    path: dict[str, float] = {}
    for n in reversed(names):
        w = spec[n][1] if weighted else 1.0
        path[n] = w + max((path[c] for c in children[n]), default=0.0)
    pos = {n: i for i, n in enumerate(names)}
    waiting = {n: len(spec[n][2]) for n in names}
    ready: list[tuple[float, int, str]] = []
    events: list[tuple[float, str]] = []
    free = WORKERS
    now = 0.0

    def make_ready(n: str) -> None:
        if spec[n][0] == "io":
            heapq.heappush(events, (now + spec[n][1], n))
        else:
            heapq.heappush(ready, (-path[n], pos[n], n))

    for n in names:
        if not waiting[n]:
            make_ready(n)
    while True:
        while free and ready:
            _, _, n = heapq.heappop(ready)
            free -= 1
            heapq.heappush(events, (now + spec[n][1], n))
        if not events:
            return now
        now, n = heapq.heappop(events)
        batch = [n]
        while events and events[0][0] == now:
            batch.append(heapq.heappop(events)[1])
        for n in batch:
            if spec[n][0] == "cpu":
                free += 1
            for c in children[n]:
                waiting[c] -= 1
                if not waiting[c]:
                    make_ready(c)


# -- running -----------------------------------------------------------------------------


async def timed_run(g: ag.Graph) -> tuple[float, ag.Graph]:
    gc.collect()
    t0 = time.perf_counter()
    out = await ag.run(g, cpu_workers=WORKERS)
    return time.perf_counter() - t0, out


def task_span(out: ag.Graph) -> float:
    recs = out.records.values()
    return max(r.finished for r in recs) - min(r.started for r in recs)


async def noop_cpu() -> None:
    return None


def noop_cpu_sync() -> None:
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repetition (<30 s)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--reps", type=int, default=None)
    args = p.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)

    # Worker start-up: two no-op CPU tasks, so both workers start at once.
    g0 = ag.Graph()
    g0.add("w1", noop_cpu_sync, kind="cpu")
    g0.add("w2", noop_cpu_sync, kind="cpu")
    startup = []
    for _ in range(max(3, reps)):
        dt, out = runner.run(timed_run(g0))
        out.raise_for_failures()
        startup.append(dt)
    startup_s = median(startup)
    print(
        f"  pool start-up: a run of 2 no-op CPU tasks takes {startup_s * 1e3:.0f} ms "
        f"(median of {len(startup)})",
        file=sys.stderr,
    )

    cases: list[tuple[str, Any, dict[str, tuple[str, float, list[str]]]]] = [
        ("readme-sleep", lambda: readme_graph("sleep"), README_SPEC),
        ("readme-busy", lambda: readme_graph("busy"), README_SPEC),
    ]
    spec = random_spec()
    cases.append(("dag200", lambda: spec_graph(spec), spec))

    rows = []
    for label, build, sp in cases:
        g = build()
        lb = lower_bound(sp)
        walls, spans = [], []
        for _ in range(reps):
            wall, out = runner.run(timed_run(g))
            if label.startswith("readme"):
                check_readme(out)
            else:
                out.raise_for_failures()
                assert len(out.results) == len(sp)
            walls.append(wall)
            spans.append(task_span(out))
            print(f"  {label}: run {wall:.3f} s, task span {spans[-1]:.3f} s", file=sys.stderr)
        sim = simulate(sp)
        sim_w = simulate(sp, weighted=True)
        wall, span = median(walls), median(spans)
        rows.append(
            {
                "case": label,
                "tasks": len(sp),
                "cpu_tasks": sum(1 for k, _, _ in sp.values() if k == "cpu"),
                **lb,
                "run_s": wall,
                "task_span_s": span,
                "run_over_lb": wall / lb["lower_bound"],
                "span_over_lb": span / lb["lower_bound"],
                "sim_policy_s": sim,
                "sim_weighted_s": sim_w,
                "raw_run_s": walls,
                "raw_span_s": spans,
            }
        )
    runner.close()

    print(f"\nMixed workloads, cpu_workers={WORKERS} (median of {reps}; seconds)")
    print(
        table(
            [
                "case",
                "tasks",
                "crit path",
                "cpu/2",
                "lower bd",
                "run",
                "run/lb",
                "task span",
                "span/lb",
                "sim policy",
            ],
            [
                [
                    r["case"],
                    r["tasks"],
                    r["critical_path"],
                    r["cpu_work"] / WORKERS,
                    r["lower_bound"],
                    r["run_s"],
                    r["run_over_lb"],
                    r["task_span_s"],
                    r["span_over_lb"],
                    r["sim_policy_s"],
                ]
                for r in rows
            ],
        )
    )
    print(f"\npool start-up (run of 2 no-op CPU tasks): {startup_s * 1e3:.0f} ms")
    print("target: dag200 run/lb <= 1.15")
    write_json(
        args.json,
        {
            "benchmark": "mixed",
            "reps": reps,
            "workers": WORKERS,
            "pool_startup_s": startup_s,
            "raw_pool_startup_s": startup,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
