"""The run's hot path against a hand-written runner: time, makespan, memory (issue 15).

Four measures, each the median of per-pair ratios (asyncgraph / hand, the two run in
pairs whose order alternates, A B, B A, ... in one process on one uvloop loop), printed
with the min-max of the ratios:

* run     - no-op coroutine tasks receiving their parents' results (the shapes of
            ``overhead.py``: wide, chain, layered), ``await ag.run(g)`` on a built graph
            against ``overhead.run_hand`` (µs per task, and the ratio);
* sleep   - every task ``await asyncio.sleep(0.01)``: the makespan of the whole run
            against hand's (wide; layered 10 x 1000; layered 100 x 100), where the
            overhead shows as the time a finished sleep waits before its children start;
* memory  - tracemalloc's peak during the run over what was allocated before it, per
            task (layered; the graph is built before tracing starts);
* progress - ``progress="force"`` (the bar drawn into a buffer) against a plain run,
            layered (the ratio of the two, not against hand).

``gc.collect()`` before every timed run. With ``--gc off`` the collector is disabled
during the timed run (both runners alike), which shows the cost without its passes.

Usage:  python benchmarks/hot_path.py [--quick] [--measures run,sleep,memory,progress]
        [--sizes 10000,100000] [--pairs 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import io
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import uvloop
from _common import table, write_json  # first: it may put the repo on sys.path
from overhead import SHAPES, build_asyncgraph, noop, run_hand, shape_layered

import asyncgraph as ag


async def nap(*a: Any) -> None:
    await asyncio.sleep(0.01)


def ratio_row(name: str, n: int, a: list[float], b: list[float]) -> dict[str, Any]:
    r = [x / y for x, y in zip(a, b, strict=True)]
    return {
        "measure": name,
        "n": n,
        "pairs": len(r),
        "ag": statistics.median(a),
        "hand": statistics.median(b),
        "ratio": statistics.median(r),
        "min": min(r),
        "max": max(r),
        "raw_ag": a,
        "raw_hand": b,
    }


def pairs(
    loop_run: Callable[[Any], Any],
    a: Callable[[], Any],
    b: Callable[[], Any],
    k: int,
    gc_off: bool,
) -> tuple[list[float], list[float]]:
    """k pairs of timed runs of the coroutine factories a and b, order alternating."""

    async def timed(fn: Callable[[], Any]) -> float:
        gc.collect()
        if gc_off:
            gc.disable()
        try:
            t0 = time.perf_counter()
            await fn()
            return time.perf_counter() - t0
        finally:
            gc.enable()

    ta: list[float] = []
    tb: list[float] = []
    loop_run(a())  # warm
    loop_run(b())
    for i in range(k):
        if i % 2:
            tb.append(loop_run(timed(b)))
            ta.append(loop_run(timed(a)))
        else:
            ta.append(loop_run(timed(a)))
            tb.append(loop_run(timed(b)))
    return ta, tb


def measure_run(loop_run: Any, sizes: list[int], k: int, gc_off: bool) -> list[dict[str, Any]]:
    rows = []
    for shape, make in SHAPES.items():
        for n in sizes:
            if n > 10_000 and shape == "chain":
                continue
            deps = make(n)
            g = build_asyncgraph(deps)
            fns = dict.fromkeys(deps, noop)
            ta, tb = pairs(
                loop_run, lambda g=g: ag.run(g), lambda f=fns, d=deps: run_hand(f, d), k, gc_off
            )
            rows.append(ratio_row(f"run {shape}", n, ta, tb))
            _say(rows[-1])
    return rows


def layered_sleep(width: int, depth: int) -> dict[str, list[str]]:
    return shape_layered(width * depth, layer=width)


def measure_sleep(loop_run: Any, k: int, gc_off: bool, n: int) -> list[dict[str, Any]]:
    shapes = {
        "wide": SHAPES["wide"](n),
        f"layered {n // 1000}x1000": layered_sleep(1000, max(1, n // 1000)),
        f"layered {n // 100}x100": layered_sleep(100, max(1, n // 100)),
    }
    rows = []
    for name, deps in shapes.items():
        g = ag.Graph()
        for t, ds in deps.items():
            g.add(t, nap, deps=ds)
        fns = dict.fromkeys(deps, nap)
        ta, tb = pairs(
            loop_run, lambda g=g: ag.run(g), lambda f=fns, d=deps: run_hand(f, d), k, gc_off
        )
        rows.append(ratio_row(f"sleep {name}", len(deps), ta, tb))
        _say(rows[-1])
    return rows


def measure_memory(loop_run: Any, n: int, k: int) -> list[dict[str, Any]]:
    deps = shape_layered(n)
    g = build_asyncgraph(deps)
    fns = dict.fromkeys(deps, noop)

    def peak(fn: Callable[[], Any]) -> float:
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            out = loop_run(fn())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        del out
        return (peak - base) / n

    ta: list[float] = []
    tb: list[float] = []
    for i in range(k):
        first, second = (ta, tb) if i % 2 == 0 else (tb, ta)
        first.append(peak((lambda: ag.run(g)) if first is ta else (lambda: run_hand(fns, deps))))
        second.append(peak((lambda: ag.run(g)) if second is ta else (lambda: run_hand(fns, deps))))
    row = ratio_row("memory layered (B/task)", n, ta, tb)
    _say(row, unit="B")
    return [row]


def measure_progress(loop_run: Any, n: int, k: int, gc_off: bool) -> list[dict[str, Any]]:
    g = build_asyncgraph(shape_layered(n))

    async def with_bar() -> Any:
        with contextlib.redirect_stderr(io.StringIO()):
            return await ag.run(g, progress="force")

    ta, tb = pairs(loop_run, with_bar, lambda: ag.run(g), k, gc_off)
    row = ratio_row("progress on/off layered", n, ta, tb)
    row["note"] = "hand = the plain run"
    _say(row)
    return [row]


def _say(row: dict[str, Any], unit: str = "us") -> None:
    scale = 1.0 if unit == "B" else 1e6 / row["n"]
    print(
        f"  {row['measure']:28} n={row['n']:>6}: ag {row['ag'] * scale:9.2f} {unit} "
        f"hand {row['hand'] * scale:9.2f} {unit}  ratio {row['ratio']:.2f} "
        f"[{row['min']:.2f}-{row['max']:.2f}]",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="3 pairs, 10k only")
    p.add_argument("--measures", default="run,sleep,memory,progress")
    p.add_argument("--sizes", default=None, help="run: task counts (default 10000,100000)")
    p.add_argument("--sleep-n", type=int, default=10_000, help="sleep: task count")
    p.add_argument("--big", type=int, default=None, help="memory, progress: task count")
    p.add_argument("--pairs", type=int, default=None)
    p.add_argument("--gc", choices=["on", "off"], default="on")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    k = args.pairs or (3 if args.quick else 7)
    sizes = [int(s) for s in (args.sizes or ("10000" if args.quick else "10000,100000")).split(",")]
    big = args.big or (10_000 if args.quick else 100_000)
    gc_off = args.gc == "off"
    measures = args.measures.split(",")
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    loop_run = functools.partial(runner.run)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if "run" in measures:
        rows += measure_run(loop_run, sizes, k, gc_off)
    if "sleep" in measures:
        rows += measure_sleep(loop_run, k, gc_off, args.sleep_n)
    if "memory" in measures:
        rows += measure_memory(loop_run, big, max(3, k // 2))
    if "progress" in measures:
        rows += measure_progress(loop_run, big, k, gc_off)
    runner.close()
    print(
        f"\nThe run's hot path: asyncgraph / hand, median of {k} paired ratios (min-max); "
        f"gc {args.gc}"
    )
    body = []
    for r in rows:
        per = r["n"] if not r["measure"].startswith(("sleep", "memory")) else None
        if r["measure"].startswith("memory"):
            a, b = f"{r['ag']:.0f} B", f"{r['hand']:.0f} B"
        elif per is None:
            a, b = f"{r['ag'] * 1e3:.1f} ms", f"{r['hand'] * 1e3:.1f} ms"
        else:
            a, b = f"{r['ag'] / per * 1e6:.2f} us", f"{r['hand'] / per * 1e6:.2f} us"
        body.append([r["measure"], r["n"], a, b, r["ratio"], f"{r['min']:.2f}-{r['max']:.2f}"])
    print(table(["measure", "tasks", "asyncgraph", "hand", "ag/hand", "range"], body))
    print(
        "\ntargets: run <= 1.2, sleep <= 1.1, memory <= 600 B/task, progress on/off <= 1.05"
        f"   (total {time.perf_counter() - t0:.0f} s)"
    )
    write_json(args.json, {"benchmark": "hot_path", "pairs": k, "gc": args.gc, "rows": rows})


if __name__ == "__main__":
    main()
