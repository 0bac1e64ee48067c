"""Scheduling overhead per no-op task: asyncgraph vs a hand-written asyncio runner vs Dask.

Every task is a no-op (``async def noop(*a): return None`` for the asyncio runners, a
plain ``def`` for Dask), so what is measured is the cost of scheduling: bookkeeping,
creating and finishing an asyncio task (or a Dask thread-pool job), and passing the
dependencies' results. Three graph shapes, each of 10k and 100k tasks:

* wide    - no dependencies at all;
* chain   - each task depends on the previous one (no concurrency at all);
* layered - layers of 100 tasks, each task depends on 1-3 random tasks of the layer
            before (seed 12345).

Runners, on the same graph:

* asyncgraph - ``await ag.run(g)`` on a uvloop loop. The graph is built with
  ``g.add(name, noop, deps=[...])`` and ``g.validate()`` is called before timing; only
  the ``ag.run`` call is timed (it includes the run's own set-up: scheduler state,
  critical-path keys, and building the result Graph).
* hand       - a minimal asyncio DAG runner on uvloop (in-degree counters, one
  create_task per ready task, a done-callback that decrements the children's counters
  and starts the ready ones, a Future for the end). Its set-up (children lists,
  counters) is timed too.
* dask       - ``dask.threaded.get(dsk, sinks)``, Dask's local threaded scheduler with
  its default pool (one thread per core), on a dict graph of the same shape. At 10k it
  runs like the others; above 10k it gets one run, in a child process stopped after
  --dask-timeout seconds (60), because its cost per task grows with the graph.

Each measurement is the median of N repetitions (N=5, or 2 with --quick), runners
interleaved within each repetition so background load hits all of them alike. Before
every timed run: ``gc.collect()``. With ``--gc frozen`` (the default in a full run does
both) the graph is also moved to the permanent generation with ``gc.freeze()`` after
the collection, so the collector's full passes do not traverse the 10k/100k-task graph
during the run; comparing both modes shows how much of the cost is the collector.

--quick: 2 repetitions, gc mode "on" only, Dask on 10k only, 100k for the layered shape
only (about 30 s). A full run takes about 5 minutes.

Usage:  python benchmarks/overhead.py [--quick] [--json PATH] [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from _common import median, table, write_json  # first: it may put the repo on sys.path

import asyncgraph as ag

SEED = 12345
LAYER = 100


async def noop(*a: Any) -> None:
    return None


def noop_sync(*a: Any) -> None:
    return None


# -- graph shapes: name -> list of dependency names, in a topological order --------------


def shape_wide(n: int) -> dict[str, list[str]]:
    return {f"t{i}": [] for i in range(n)}


def shape_chain(n: int) -> dict[str, list[str]]:
    return {f"t{i}": ([f"t{i - 1}"] if i else []) for i in range(n)}


def shape_layered(n: int, layer: int = LAYER, seed: int = SEED) -> dict[str, list[str]]:
    rnd = random.Random(seed)
    deps: dict[str, list[str]] = {}
    prev: list[str] = []
    for start in range(0, n, layer):
        cur = [f"t{i}" for i in range(start, min(n, start + layer))]
        for name in cur:
            deps[name] = rnd.sample(prev, rnd.randint(1, min(3, len(prev)))) if prev else []
        prev = cur
    return deps


SHAPES: dict[str, Callable[[int], dict[str, list[str]]]] = {
    "wide": shape_wide,
    "chain": shape_chain,
    "layered": shape_layered,
}


# -- (a) asyncgraph ----------------------------------------------------------------------


def build_asyncgraph(deps: dict[str, list[str]]) -> ag.Graph:
    g = ag.Graph()
    for name, ds in deps.items():
        g.add(name, noop, deps=ds)
    g.validate()
    return g


async def run_asyncgraph(g: ag.Graph) -> ag.Graph:
    return await ag.run(g)


def count_done(out: ag.Graph) -> int:
    return sum(1 for s in out.status.values() if s is ag.State.DONE)


# -- (b) the hand-written runner ---------------------------------------------------------


async def run_hand(fns: dict[str, Callable[..., Any]], deps: dict[str, list[str]]) -> int:
    """As lean as it gets while still being a DAG runner that passes results on."""
    loop = asyncio.get_running_loop()
    children: dict[str, list[str]] = {n: [] for n in deps}
    waiting: dict[str, int] = {}
    for n, ds in deps.items():
        waiting[n] = len(ds)
        for d in ds:
            children[d].append(n)
    results: dict[str, Any] = {}
    left = len(deps)
    finished: asyncio.Future[None] = loop.create_future()
    create_task = loop.create_task

    def start(n: str) -> None:
        t = create_task(fns[n](*[results[d] for d in deps[n]]))
        t.add_done_callback(functools.partial(on_done, n))

    def on_done(n: str, t: asyncio.Task[Any]) -> None:
        nonlocal left
        if finished.done():
            return
        try:
            results[n] = t.result()
        except BaseException as exc:  # noqa: BLE001 - hand it to the waiter
            finished.set_exception(exc)
            return
        left -= 1
        if not left:
            finished.set_result(None)
            return
        for c in children[n]:
            waiting[c] -= 1
            if not waiting[c]:
                start(c)

    if not deps:
        return 0
    for n, k in waiting.items():
        if not k:
            start(n)
    await finished
    return len(results)


# -- (c) Dask ----------------------------------------------------------------------------


def build_dask(deps: dict[str, list[str]]) -> tuple[dict[str, Any], list[str]]:
    has_child: set[str] = set()
    for ds in deps.values():
        has_child.update(ds)
    dsk = {n: (noop_sync, *ds) for n, ds in deps.items()}
    sinks = [n for n in deps if n not in has_child]  # every task is an ancestor of a sink
    return dsk, sinks


def run_dask(dsk: dict[str, Any], sinks: list[str]) -> int:
    import dask.threaded

    out = dask.threaded.get(dsk, sinks)
    return len(out)


def dask_in_subprocess(shape: str, n: int, timeout: float) -> float | None:
    """One timed Dask run in a child process, killed after ``timeout`` s (-> None).

    Dask's cost per task is not flat in the graph's size (on the layered shape a 100k
    run took ~160 s here against ~2 s for 10k), so a big run is guarded by a timeout.
    """
    import subprocess

    cmd = [sys.executable, __file__, "--dask-child", f"{shape}:{n}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    return float(out.stdout.strip().splitlines()[-1])


def _dask_child(spec: str) -> None:
    shape, n = spec.split(":")
    dsk, sinks = build_dask(SHAPES[shape](int(n)))
    run_dask(*build_dask(shape_wide(100)))  # imports
    print(_timed_sync(lambda: run_dask(dsk, sinks), False, []))


# -- the harness -------------------------------------------------------------------------
#
# The asyncio runners are timed inside the coroutine, around the ``await`` alone. Timing
# ``asyncio.Runner.run(...)`` from outside would add a cost that is not the scheduler's:
# on Python 3.11 Runner.run ends with ``signal.getsignal(SIGINT)``, which formats a
# ValueError message containing the repr of the main task, hence of its result. (That
# is how ``ag.run_sync`` pays for ``Graph.__repr__`` of the returned graph; see
# docs/performance.md.)


def _prepare(frozen: bool) -> None:
    gc.collect()
    if frozen:
        gc.freeze()


async def _timed_async(awaitable_fn: Callable[[], Any], frozen: bool, box: list[Any]) -> float:
    _prepare(frozen)
    try:
        t0 = time.perf_counter()
        box.append(await awaitable_fn())
        return time.perf_counter() - t0
    finally:
        if frozen:
            gc.unfreeze()


def _timed_sync(fn: Callable[[], Any], frozen: bool, box: list[Any]) -> float:
    _prepare(frozen)
    try:
        t0 = time.perf_counter()
        box.append(fn())
        return time.perf_counter() - t0
    finally:
        if frozen:
            gc.unfreeze()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 repetitions, fewer variants (<1 min)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument(
        "--big-shapes",
        default=None,
        help="shapes run at sizes above 10k (default: all; --quick: layered)",
    )
    p.add_argument("--reps", type=int, default=None)
    p.add_argument(
        "--gc",
        choices=["on", "frozen", "both"],
        default=None,
        help="gc mode: 'on' = gc.collect() before each run; 'frozen' = also gc.freeze() "
        "after building; default: both (full), on (--quick)",
    )
    p.add_argument("--no-dask", action="store_true")
    p.add_argument(
        "--dask-timeout",
        type=float,
        default=60.0,
        help="Dask on sizes above 10k: one run in a child process, given up after this "
        "many seconds (default 60; 0 = skip; --quick: skip)",
    )
    p.add_argument("--dask-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dask_child:
        _dask_child(args.dask_child)
        return
    reps = args.reps or (2 if args.quick else 5)
    sizes = [int(s) for s in args.sizes.split(",")]
    shapes = args.shapes.split(",")
    gc_modes = {"on": ["on"], "frozen": ["frozen"], "both": ["on", "frozen"]}[
        args.gc or ("on" if args.quick else "both")
    ]
    big_shapes = (args.big_shapes or ("layered" if args.quick else ",".join(shapes))).split(",")
    if args.quick:
        args.dask_timeout = 0.0  # Dask on 10k only

    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    loop_run = runner.run
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    warm = False
    for shape in shapes:
        for n in sizes:
            if n > 10_000 and shape not in big_shapes:
                continue
            deps = SHAPES[shape](n)
            t0 = time.perf_counter()
            g = build_asyncgraph(deps)
            build_s = time.perf_counter() - t0
            fns = dict.fromkeys(deps, noop)
            dsk, sinks = build_dask(deps) if not args.no_dask else (None, None)

            def a(frozen: bool, g: ag.Graph = g, n: int = n) -> float:
                box: list[Any] = []
                dt = loop_run(_timed_async(lambda: run_asyncgraph(g), frozen, box))
                assert count_done(box[0]) == n, "asyncgraph did not run every task"
                return dt

            def b(frozen: bool, fns: Any = fns, deps: Any = deps, n: int = n) -> float:
                box: list[Any] = []
                dt = loop_run(_timed_async(lambda: run_hand(fns, deps), frozen, box))
                assert box[0] == n, "the hand-written runner did not run every task"
                return dt

            def c(frozen: bool, dsk: Any = dsk, sinks: Any = sinks) -> float:
                box: list[Any] = []
                dt = _timed_sync(lambda: run_dask(dsk, sinks), frozen, box)
                assert box[0] == len(sinks), "dask did not return every sink"
                return dt

            if not warm:  # one untimed run of each (imports, code caches)
                small = shape_wide(1000)
                loop_run(run_asyncgraph(build_asyncgraph(small)))
                loop_run(run_hand(dict.fromkeys(small, noop), small))
                if not args.no_dask:
                    run_dask(*build_dask(small))
                warm = True
            for mode in gc_modes:
                frozen = mode == "frozen"
                want_dask = not args.no_dask and n <= 10_000
                times: dict[str, list[float]] = {"asyncgraph": [], "hand": [], "dask": []}
                for _ in range(reps):  # interleaved: background load hits all alike
                    times["asyncgraph"].append(a(frozen))
                    times["hand"].append(b(frozen))
                    if want_dask:
                        times["dask"].append(c(frozen))
                dask_note = None
                if not args.no_dask and n > 10_000 and args.dask_timeout and mode == gc_modes[0]:
                    # Above 10k: one run, in a child process with a timeout (see above).
                    dt = dask_in_subprocess(shape, n, args.dask_timeout)
                    if dt is None:
                        dask_note = f"> {args.dask_timeout:.0f} s (stopped)"
                    else:
                        times["dask"].append(dt)
                us = {k: (median(v) / n * 1e6 if v else None) for k, v in times.items()}
                rows.append(
                    {
                        "gc": mode,
                        "shape": shape,
                        "n": n,
                        "reps": reps,
                        "dask_reps": len(times["dask"]),
                        "build_s": build_s,
                        "us_per_task": us,
                        "min_us_per_task": {
                            k: (min(v) / n * 1e6 if v else None) for k, v in times.items()
                        },
                        "raw_s": times,
                        "dask_note": dask_note,
                        "ag_over_hand": us["asyncgraph"] / us["hand"],
                        "dask_over_ag": (us["dask"] / us["asyncgraph"]) if us["dask"] else None,
                    }
                )
                print(
                    f"  [{mode:6}] {shape:7} n={n:>6}: asyncgraph {us['asyncgraph']:.2f} "
                    f"hand {us['hand']:.2f} dask {us['dask'] or float('nan'):.2f} us/task "
                    f"{dask_note or ''} "
                    f"(graph build {build_s:.1f} s, elapsed {time.perf_counter() - t_start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            del g, fns, dsk, sinks, deps, a, b, c
    runner.close()
    rows.sort(key=lambda r: (gc_modes.index(r["gc"]), shapes.index(r["shape"]), r["n"]))

    # 100k/10k per-task ratio for asyncgraph, per shape and gc mode.
    by_key = {(r["gc"], r["shape"], r["n"]): r for r in rows}
    scale: dict[str, float] = {}
    if len(sizes) >= 2:
        lo, hi = min(sizes), max(sizes)
        for r in rows:
            if r["n"] == hi and (r["gc"], r["shape"], lo) in by_key:
                base = by_key[(r["gc"], r["shape"], lo)]["us_per_task"]["asyncgraph"]
                r["ag_scale_vs_smallest"] = r["us_per_task"]["asyncgraph"] / base
                scale[f"{r['gc']}/{r['shape']}"] = r["ag_scale_vs_smallest"]

    headers = [
        "gc",
        "shape",
        "tasks",
        "asyncgraph us",
        "hand us",
        "dask us",
        "ag/hand",
        "dask/ag",
        f"ag {max(sizes) // 1000}k/{min(sizes) // 1000}k",
    ]
    body = [
        [
            r["gc"],
            r["shape"],
            r["n"],
            r["us_per_task"]["asyncgraph"],
            r["us_per_task"]["hand"],
            r["us_per_task"]["dask"] or r["dask_note"],
            r["ag_over_hand"],
            r["dask_over_ag"],
            r.get("ag_scale_vs_smallest"),
        ]
        for r in rows
    ]
    print(
        f"\nScheduling overhead per no-op task (median of {reps}; us = microseconds; "
        "Dask above 10k: one run)"
    )
    print(table(headers, body))
    print(
        "\ntargets: ag/hand <= 2.0, dask/ag >= 5.0, ag 100k/10k <= 1.2"
        f"   (total {time.perf_counter() - t_start:.0f} s)"
    )
    write_json(args.json, {"benchmark": "overhead", "reps": reps, "rows": rows})


if __name__ == "__main__":
    main()
