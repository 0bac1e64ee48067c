"""What watching a run costs: a 100k no-op task graph with and without a progress bar.

Every task is ``async def noop(*a): return None``, so the run is nothing but scheduling
and any listener's per-event cost shows at its largest (a real task takes far longer
than the ~0.5 us per task a listener adds). Modes, on the same graph, on uvloop:

* plain    - ``await ag.run(g)``: no listener, the runner builds no event at all;
* progress - ``await ag.run(g, progress="force")`` with stderr sent to an in-memory
  buffer (a non-tty sink; "force" draws anyway), so the bar really is drawn, every
  0.1 s, and the figure includes the events, the counting and the redraws;
* on_event - ``await ag.run(g, on_event=lambda e: None)``: the events alone.

Shapes: ``wide`` (no dependencies) and ``layered`` (layers of 100, each task depends on
1-3 random tasks of the layer before, seed 12345), as in overhead.py. Each figure is the
median of N repetitions (5, or 3 with --quick), the modes interleaved within each
repetition so background load hits all alike; ``gc.collect()`` before each timed run.
Both the wall time and the process's CPU time of the ``ag.run`` call are recorded: the
run is single-threaded and CPU-bound, so on a shared, loaded machine the CPU-time ratio
is the steadier figure of the two.

Target: progress / plain <= 1.10.

Usage:  python benchmarks/progress.py [--quick] [--sizes 100000] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import sys
import time
from typing import Any

import uvloop
from _common import median, table, write_json  # first: it may put the repo on sys.path
from overhead import SHAPES

import asyncgraph as ag


async def noop(*a: Any) -> None:
    return None


def shape(kind: str, n: int) -> dict[str, list[str]]:
    return SHAPES[kind](n)  # overhead.py's graphs, so the figures compare


def build(deps: dict[str, list[str]]) -> ag.Graph:
    g = ag.Graph()
    for name, ds in deps.items():
        g.add(name, noop, deps=ds)
    g.validate()
    return g


def ignore(event: ag.Event) -> None:
    return None


MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "progress": {"progress": "force"},
    "on_event": {"on_event": ignore},
}


def timed(
    runner: asyncio.Runner, g: ag.Graph, options: dict[str, Any], n: int
) -> tuple[float, float]:
    sink = io.StringIO()
    gc.collect()
    with contextlib.redirect_stderr(sink):
        t0, c0 = time.perf_counter(), time.process_time()
        out = runner.run(ag.run(g, **options))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert sum(1 for s in out.status.values() if s is ag.State.DONE) == n
    if "progress" in options:
        assert f"{n}/{n}" in sink.getvalue(), "the bar did not reach its end"
    return dt, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions")
    parser.add_argument("--sizes", default="100000", help="comma-separated task counts")
    parser.add_argument("--shapes", default="wide,layered")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--json", default=None, help="write raw timings here")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    sizes = [int(s) for s in args.sizes.split(",")]
    shapes = args.shapes.split(",")
    rows: list[dict[str, Any]] = []
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    warm = build(shape("wide", 1000))
    for options in MODES.values():  # untimed: imports (tqdm), code caches
        timed(runner, warm, options, 1000)
    for kind in shapes:
        for n in sizes:
            g = build(shape(kind, n))
            times: dict[str, list[float]] = {m: [] for m in MODES}
            cpus: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(reps):
                for mode, options in MODES.items():
                    dt, cpu = timed(runner, g, options, n)
                    times[mode].append(dt)
                    cpus[mode].append(cpu)
            us = {m: median(v) / n * 1e6 for m, v in times.items()}
            cpu_us = {m: median(v) / n * 1e6 for m, v in cpus.items()}
            rows.append(
                {
                    "shape": kind,
                    "n": n,
                    "reps": reps,
                    "us_per_task": us,
                    "cpu_us_per_task": cpu_us,
                    "raw_s": times,
                    "raw_cpu_s": cpus,
                    "progress_over_plain": us["progress"] / us["plain"],
                    "on_event_over_plain": us["on_event"] / us["plain"],
                    "cpu_progress_over_plain": cpu_us["progress"] / cpu_us["plain"],
                    "cpu_on_event_over_plain": cpu_us["on_event"] / cpu_us["plain"],
                }
            )
            print(
                f"  {kind:7} n={n:>6}: "
                + " ".join(f"{m} {u:.2f}" for m, u in us.items())
                + " us/task",
                file=sys.stderr,
                flush=True,
            )
    runner.close()
    headers = [
        "clock",
        "shape",
        "tasks",
        "plain us",
        "progress us",
        "on_event us",
        "progress/plain",
        "on_event/plain",
    ]
    body: list[list[Any]] = []
    for clock, key, pre in (("wall", "us_per_task", ""), ("cpu", "cpu_us_per_task", "cpu_")):
        body += [
            [
                clock,
                r["shape"],
                r["n"],
                r[key]["plain"],
                r[key]["progress"],
                r[key]["on_event"],
                r[pre + "progress_over_plain"],
                r[pre + "on_event_over_plain"],
            ]
            for r in rows
        ]
    print(f"\nCost of watching a run, per no-op task (median of {reps}; us = microseconds)")
    print(table(headers, body))
    print("\ntarget: progress/plain <= 1.10")
    write_json(args.json, {"benchmark": "progress", "reps": reps, "rows": rows})


if __name__ == "__main__":
    main()
