"""Fan-out costs: a family of N elements against the same N tasks defined statically.

Usage:  python benchmarks/fanout.py [--n 10000 100000] [--pairs 5] [--json PATH]

Measured, in one process, A/B side by side (static and mapped alternate, the figure is
the median over the pairs of the per-pair ratio mapped / static):

* ``run``       - ``ag.run`` of a no-op coroutine task per item: N static tasks each
                  reading one item of a parent, against one task ``over=`` the parent
                  (N elements): µs per task and the ratio (target <= 1.1x);
* ``expand``    - the expansion alone (items, element tasks, the scheduler's
                  registration), µs per element (target <= 5 µs);
* ``rerun``     - on a store: ``plan`` + a rerun of 1 failed element of the first N
                  (plan, load and run, wall seconds; target <= 1 s);
* ``bytes``     - memory per element of a done family (tracemalloc, records and Dag)
                  and the store's bytes per element (its file size over N).

The machine may be loaded (other work on it): quote the figures as measured, with the
load average the JSON records.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

import asyncgraph as ag
from asyncgraph import _fan
from asyncgraph._scheduler import Scheduler


async def _noop(*_: object) -> None:
    return None


def static_graph(n: int) -> ag.Graph:
    g = ag.Graph()
    g.add("items", lambda: list(range(n)), deps=[])
    for i in range(n):
        g.add(f"t{i}", _noop, deps=["items"])
    return g


def mapped_graph(n: int) -> ag.Graph:
    g = ag.Graph()
    g.add("items", lambda: list(range(n)), deps=[])
    g.add("t", _noop, deps=["items"], over="items")
    return g


def timed_run(g: ag.Graph) -> float:
    gc.collect()
    t0 = time.perf_counter()
    out = asyncio.run(ag.run(g))
    dt = time.perf_counter() - t0
    assert all(s is ag.State.DONE for s in out.status.values())
    return dt


def expansion_us(n: int) -> float:
    """µs per element: items, element tasks and the scheduler's registration."""
    g = mapped_graph(n)
    template = g.tasks["t"]
    dag = g._dag
    best = float("inf")
    for _ in range(3):
        core = Scheduler(
            dag.tasks, dag.topological_order(), {"items": ag.State.DONE, "t": ag.State.PENDING}
        )
        core.get_ready()
        gc.collect()
        t0 = time.perf_counter()
        found = _fan.items(template, list(range(n)))
        els = _fan.elements(template, found)
        core.expand("t", els, ())
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def rerun_seconds(n: int, where: Path) -> tuple[float, int, float]:
    """plan + load + rerun of 1 failed element of n on a store; (seconds, ran, bytes/el)."""
    where = Path(tempfile.mkdtemp(dir=where))  # a store of its own
    db = where / f"fan{n}.db"
    flag = where / f"fail{n}"
    flag.write_text("")

    def graph() -> ag.Graph:
        g = ag.Graph()
        g.add("items", lambda: list(range(n)), deps=[])

        async def work(i: int) -> int:
            if i == 0 and flag.exists():
                raise ValueError("the first element fails")
            return i

        g.add("t", work, deps=["items"], over="items")
        return g

    first = ag.run_sync(graph(), store=db)
    assert first.status["t[0]"] is ag.State.FAILED
    flag.unlink()
    t0 = time.perf_counter()
    plan = ag.plan(graph(), db)
    out = ag.run_sync(graph(), store=db)
    dt = time.perf_counter() - t0
    ran = int((plan["action"] == "run").sum())
    assert out.status["t"] is ag.State.DONE
    size = sum(p.stat().st_size for p in where.glob(f"fan{n}.db*"))
    return dt, ran, size / n


def memory_per_element(n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    out = asyncio.run(ag.run(mapped_graph(n)))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(out.status) == n + 2
    return (after - before) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            ratios, st_us, map_us = [], [], []
            for p in range(args.pairs):
                order = (static_graph, mapped_graph) if p % 2 == 0 else (mapped_graph, static_graph)
                times = {}
                for build in order:
                    g = build(n)
                    times[build.__name__] = timed_run(g)
                st_us.append(times["static_graph"] / n * 1e6)
                map_us.append(times["mapped_graph"] / n * 1e6)
                ratios.append(times["mapped_graph"] / times["static_graph"])
            expand = expansion_us(n)
            rerun = rerun_seconds(min(n, 10_000), Path(tmp))
            mem = memory_per_element(n)
            rows.append(
                {
                    "n": n,
                    "static_us_per_task": statistics.median(st_us),
                    "mapped_us_per_element": statistics.median(map_us),
                    "ratio_mapped_over_static": statistics.median(ratios),
                    "expand_us_per_element": expand,
                    "rerun_1_failed_of": min(n, 10_000),
                    "plan_and_rerun_s": rerun[0],
                    "plan_says_run": rerun[1],
                    "store_bytes_per_element": rerun[2],
                    "memory_bytes_per_element": mem,
                }
            )
    headers = [
        "n",
        "static µs/task",
        "mapped µs/el",
        "ratio",
        "expand µs/el",
        "rerun 1 of",
        "plan+rerun s",
        "plan: run",
        "store B/el",
        "memory B/el",
    ]
    print(_common.table(headers, [list(r.values()) for r in rows]))
    _common.write_json(str(args.json) if args.json else None, {"rows": rows})
    with_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"(measured with load average {with_load}: other work on the machine counts)")


if __name__ == "__main__":
    main()
