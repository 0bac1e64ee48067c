"""What a trivial CPU task costs on a started ProcessBackend against a pool per run.

One run is a graph of N trivial CPU tasks (``kind="cpu"``, returning an int), run to the
end with ``await ag.run``. Two ways, alternated in pairs on one loop in one process so
background load hits both alike:

* per-run  - ``backend=None``: the default, a pool of the run's own, whose workers
  start with its first CPU task and are killed when it ends;
* shared   - ``backend=pool``: one ``ag.ProcessBackend(workers=W)`` started before the
  pairs (its start-up is reported on its own line) and used by every run.

Reported: the median wall time per run of each way, the median of the per-pair ratios
(per-run / shared: how many times faster a started pool makes a run), and the start-up
of the shared pool. The issue's target: a trivial CPU task on a started pool costs well
under the ~100 ms a per-run pool costs.

Usage:  python benchmarks/backends.py [--pairs 15] [--tasks 1] [--workers 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import Any

from _common import median, table, write_json  # first: it may put the repo on sys.path

import asyncgraph as ag


def one() -> int:
    return 1


def graph(n: int) -> ag.Graph:
    g = ag.Graph()
    for i in range(n):
        g.add(f"t{i}", one, kind="cpu")
    return g


async def timed(g: ag.Graph, backend: Any, workers: int) -> float:
    gc.collect()
    start = time.perf_counter()
    out = await ag.run(g, backend=backend, cpu_workers=workers)
    took = time.perf_counter() - start
    assert set(out.status.values()) == {ag.State.DONE}, out.errors
    return took


async def main_async(pairs: int, tasks: int, workers: int) -> dict[str, Any]:
    g = graph(tasks)
    start = time.perf_counter()
    pool = await ag.ProcessBackend(workers=workers).start()
    startup = time.perf_counter() - start
    per_run: list[float] = []
    shared: list[float] = []
    try:
        await timed(g, pool, workers)  # one warm-up run each, not counted
        await timed(g, None, workers)
        for i in range(pairs):
            if i % 2:  # alternate which goes first in the pair
                shared.append(await timed(g, pool, workers))
                per_run.append(await timed(g, None, workers))
            else:
                per_run.append(await timed(g, None, workers))
                shared.append(await timed(g, pool, workers))
    finally:
        await pool.aclose()
    ratios = [a / b for a, b in zip(per_run, shared, strict=True)]
    return {
        "pairs": pairs,
        "tasks": tasks,
        "workers": workers,
        "per_run_ms": median(per_run) * 1e3,
        "shared_ms": median(shared) * 1e3,
        "ratio": median(ratios),
        "startup_ms": startup * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--tasks", type=int, default=1, help="trivial CPU tasks per run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = asyncio.run(main_async(args.pairs, args.tasks, args.workers))
    print(
        table(
            ["way", "ms per run", "tasks", "workers"],
            [
                ["per-run pool", result["per_run_ms"], args.tasks, args.workers],
                ["shared ProcessBackend", result["shared_ms"], args.tasks, args.workers],
            ],
        )
    )
    print(f"per-run / shared (median of {args.pairs} pairs): {result['ratio']:.1f}x")
    print(f"ProcessBackend start-up (once): {result['startup_ms']:.0f} ms")
    write_json(args.json, {"backends": result})


if __name__ == "__main__":
    main()
