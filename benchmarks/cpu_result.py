"""A big DataFrame returned by a CPU task: how long is the event loop blocked?

A CPU task runs in a worker process and returns a DataFrame of ``--mb`` megabytes (float64
columns). The parent receives the worker's pickled bytes; the question is what happens
to them on the loop's thread. While the run goes on, a ticker coroutine on the same loop
wakes every millisecond and records the longest gap between two wake-ups: that is the
longest time the loop could not serve anything else (another task, a web request).

Measured for a run without a store and with one (``store=``), and against a run whose
CPU task returns an int (the floor: the pool's start, the worker, the ticker itself):

* ``wall``        - the run's wall time, s;
* ``max stall``   - the longest gap between two ticks, ms;
* ``stalled``     - the time in gaps over 20 ms, summed, ms.

Usage:  python benchmarks/cpu_result.py [--mb 100] [--reps 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from typing import Any

import uvloop
from _common import median, table, write_json  # first: it may put the repo on sys.path

import asyncgraph as ag


def frame(mb: int) -> Any:
    import numpy as np
    import pandas as pd

    rows = mb * 1024 * 1024 // (8 * 10)
    return pd.DataFrame(np.random.default_rng(0).random((rows, 10)))


def small(mb: int) -> int:
    return mb


async def one(fn: Any, mb: int, store: bool) -> dict[str, float]:
    g = ag.Graph()
    g.add("big", functools.partial(fn, mb), kind="cpu")
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        out = await ag.run(g, cpu_workers=1, store=os.path.join(d, "s.db") if store else None)
        wall = time.perf_counter() - t0
        stop.set()
        await tick
    assert out.status["big"] is ag.State.DONE, out.errors
    return {
        "wall": wall,
        "max_stall_ms": max(gaps) * 1e3,
        "stalled_ms": sum(g for g in gaps if g > 0.02) * 1e3,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    cases = [
        ("int, no store", small, False),
        ("int, store", small, True),
        (f"{args.mb} MB frame, no store", frame, False),
        (f"{args.mb} MB frame, store", frame, True),
    ]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in cases}
    for _ in range(args.reps):
        for name, fn, store in cases:
            results[name].append(uvloop.run(one(fn, args.mb, store)))
    rows = []
    report: dict[str, Any] = {}
    for name, runs in results.items():
        m = {k: median([r[k] for r in runs]) for k in runs[0]}
        report[name] = m
        rows.append(
            [name, f"{m['wall']:.3f}", f"{m['max_stall_ms']:.0f}", f"{m['stalled_ms']:.0f}"]
        )
    print(table(["case", "wall s", "max stall ms", "stalled ms"], rows))
    if args.json:
        write_json(args.json, {"results": report, "mb": args.mb, "reps": args.reps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
