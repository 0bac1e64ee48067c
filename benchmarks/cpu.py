"""CPU tasks: the pool's start, the speedup, the per-call cost and a big result.

The four rows of issue 15's CPU table, each measured in this one process on uvloop, in
pairs whose order alternates (A B, B A, ...), as the median over the pairs with the
min-max of the per-pair figures:

* ``first CPU task``   - ``await ag.run(g)`` of a graph of one trivial CPU task, with a
  pool of the run's own (its worker starts in the run): the run's wall time, against
  the first ``submit`` of a fresh ``ProcessPoolExecutor(1)`` (fork; forkserver);
* ``hidden start``     - the same CPU task after a 100 ms IO task (``asyncio.sleep``):
  the run's wall time minus the 100 ms, which is what the pool's start adds when the
  run starts the pool at its start, in parallel with the IO task;
* ``40 x 20 ms``       - 40 independent CPU tasks of 20 ms of busy work on 2 workers:
  serial time (the 40 calls, one after the other, in this process) over the run's wall
  time, the pool's start included (the limit is 2x);
* ``per call``         - the marginal wall time of a trivial CPU task on 2 workers,
  pipelined: (run of N tasks - run of 2 tasks) / (N - 2), against ``ProcessPoolExecutor``
  (2 workers, fork) ``map`` of the same calls;
* ``big result``       - a CPU task builds a DataFrame of ``--mb`` MB and returns it,
  against the same task returning the frame's length: the extra wall time of the run,
  without a store and with one, against the same pair on a ``ProcessPoolExecutor(1)``;
* ``phases``           - a worker's first call in three parts: the parent's spawn, the
  worker's boot until it begins the call (its clock), the call to its reply;
* ``shared``           - one trivial CPU task per run on a started ``ProcessBackend``,
  against the same run with a pool of its own;
* ``depth``            - two calls in flight per worker against one (the pools'
  ``DEPTH``), side by side: the per-call row on a run's own pool and on a started
  ``ProcessBackend``, and the 40 x 20 ms speedup; each as depth 2 / depth 1 per pair.

Usage:  python benchmarks/cpu.py [--pairs 5] [--mb 100] [--calls 2000] [--only ROWS]
        [--json PATH]      (ROWS: a comma-separated subset of
                            start,hidden,speedup,call,big,phases,shared,depth)
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import gc
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from _common import median, table, write_json  # first: it may put the repo on sys.path

import asyncgraph as ag


def one() -> int:
    return 1


def busy(seconds: float) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass


def frame(mb: int) -> Any:
    import numpy as np
    import pandas as pd

    rows = mb * 1024 * 1024 // (8 * 10)
    return pd.DataFrame(np.random.default_rng(0).random((rows, 10)))


def frame_len(mb: int) -> int:
    return len(frame(mb))


async def _wall(make: Callable[[], Awaitable[Any]]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    await make()
    return time.perf_counter() - t0


async def _run(g: ag.Graph, **kw: Any) -> None:
    out = await ag.run(g, **kw)
    assert set(out.status.values()) == {ag.State.DONE}, out.errors


async def _pairs(
    pairs: int, a: Callable[[], Awaitable[Any]], b: Callable[[], Awaitable[Any]]
) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for i in range(pairs):
        if i % 2:
            ys.append(await _wall(b))
            xs.append(await _wall(a))
        else:
            xs.append(await _wall(a))
            ys.append(await _wall(b))
    return xs, ys


async def _pool_first(method: str) -> None:
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert await loop.run_in_executor(ex, one) == 1


def _spread(xs: list[float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{min(xs) * scale:.{digits}f}-{max(xs) * scale:.{digits}f}"


async def row_start(pairs: int) -> list[list[Any]]:
    g = ag.Graph()
    g.add("one", one, kind="cpu")
    ours, fork = await _pairs(pairs, lambda: _run(g, cpu_workers=1), lambda: _pool_first("fork"))
    _, server = await _pairs(
        pairs, lambda: _run(g, cpu_workers=1), lambda: _pool_first("forkserver")
    )
    return [
        [
            "first CPU task, ms",
            median(ours) * 1e3,
            _spread(ours, 1e3),
            "ProcessPoolExecutor fork / forkserver",
            f"{median(fork) * 1e3:.1f} / {median(server) * 1e3:.1f}",
        ],
    ]


async def row_hidden(pairs: int) -> list[list[Any]]:
    async def io() -> None:
        await asyncio.sleep(0.1)

    def cpu(io: None) -> int:
        return 1

    g = ag.Graph()
    g.add("io", io)
    g.add("cpu", cpu, kind="cpu")
    plain = ag.Graph()
    plain.add("io", io)
    with_cpu, without = await _pairs(pairs, lambda: _run(g, cpu_workers=1), lambda: _run(plain))
    extra = [a - b for a, b in zip(with_cpu, without, strict=True)]
    return [
        [
            "start behind 100 ms of IO, ms",
            median(extra) * 1e3,
            _spread(extra, 1e3),
            "the IO task alone, ms",
            f"{median(without) * 1e3:.1f}",
        ],
    ]


async def row_speedup(pairs: int) -> list[list[Any]]:
    g = ag.Graph()
    for i in range(40):
        g.add(f"c{i}", functools.partial(busy, 0.02), kind="cpu")

    async def serial() -> None:
        for _ in range(40):
            busy(0.02)

    ser, run = await _pairs(pairs, serial, lambda: _run(g, cpu_workers=2))
    ratios = [s / r for s, r in zip(ser, run, strict=True)]
    return [
        [
            "40 x 20 ms on 2 workers, speedup",
            median(ratios),
            _spread(ratios, 1, 2),
            "run wall, s",
            f"{median(run):.3f}",
        ],
    ]


async def row_call(pairs: int, calls: int) -> list[list[Any]]:
    many = ag.Graph()
    for i in range(calls):
        many.add(f"t{i}", one, kind="cpu")
    few = ag.Graph()
    for i in range(2):
        few.add(f"t{i}", one, kind="cpu")
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("fork")

    async def pool_map(n: int) -> None:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            futures = [loop.run_in_executor(ex, one) for _ in range(n)]
            assert sum(await asyncio.gather(*futures)) == n

    marginal: list[float] = []
    reference: list[float] = []
    for _ in range(pairs):
        a, b = await _pairs(2, lambda: _run(many, cpu_workers=2), lambda: _run(few, cpu_workers=2))
        marginal.append((median(a) - median(b)) / (calls - 2))
        c, d = await _pairs(2, lambda: pool_map(calls), lambda: pool_map(2))
        reference.append((median(c) - median(d)) / (calls - 2))
    return [
        [
            "per call, 2 workers, pipelined, us",
            median(marginal) * 1e6,
            _spread(marginal, 1e6),
            "ProcessPoolExecutor fork, us",
            f"{median(reference) * 1e6:.0f}",
        ],
    ]


def _options(d: str, store: bool, n: Any) -> dict[str, Any]:
    return {"cpu_workers": 1, "store": os.path.join(d, f"{next(n)}.db") if store else None}


async def row_big(pairs: int, mb: int) -> list[list[Any]]:
    big = ag.Graph()
    big.add("big", functools.partial(frame, mb), kind="cpu")
    small = ag.Graph()
    small.add("big", functools.partial(frame_len, mb), kind="cpu")
    rows: list[list[Any]] = []
    for label, store in (("no store", False), ("store", True)):
        with tempfile.TemporaryDirectory() as d:
            kw = functools.partial(_options, d, store, iter(range(10**6)))
            a, b = await _pairs(
                pairs,
                lambda kw=kw: _run(big, **kw()),
                lambda kw=kw: _run(small, **kw()),
            )
        extra = [x - y for x, y in zip(a, b, strict=True)]
        rows.append(
            [
                f"{mb} MB frame over its length, {label}, ms",
                median(extra) * 1e3,
                _spread(extra, 1e3, 0),
                "",
                "",
            ]
        )
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("fork")

    async def on_pool(fn: Callable[[int], Any]) -> None:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
            await loop.run_in_executor(ex, fn, mb)

    c, d = await _pairs(pairs, lambda: on_pool(frame), lambda: on_pool(frame_len))
    extra = [x - y for x, y in zip(c, d, strict=True)]
    rows[0][3] = "ProcessPoolExecutor fork, ms"
    rows[0][4] = f"{median(extra) * 1e3:.0f}"
    return rows


async def row_phases(pairs: int) -> list[list[Any]]:
    """Where a worker's first call goes: the parent's spawn (fork/exec and the pipes),
    the worker's boot (interpreter, its imports, the preload; until it begins the call,
    by its ``started`` frame) and the call itself, for a function of this script (sent
    by value, as a notebook's)."""
    import cloudpickle

    from asyncgraph._executors.process import ProcessPool

    fn = cloudpickle.dumps(one)
    spawn: list[float] = []
    boot: list[float] = []
    call: list[float] = []
    for _ in range(pairs):
        pool = ProcessPool(1)
        try:
            t0 = time.time()
            pool.warm(1)
            assert pool._warming is not None
            await pool._warming
            t1 = time.time()
            began: list[float] = []
            await pool.call("one", fn, ((), {}), began.append)
            t3 = time.time()
        finally:
            await pool.aclose()
        spawn.append(t1 - t0)
        boot.append(began[0] - t1)
        call.append(t3 - began[0])
    return [
        ["worker's spawn (parent), ms", median(spawn) * 1e3, _spread(spawn, 1e3), "", ""],
        ["worker's boot to its first call, ms", median(boot) * 1e3, _spread(boot, 1e3), "", ""],
        ["first call, begun to reply, ms", median(call) * 1e3, _spread(call, 1e3), "", ""],
    ]


async def row_shared(pairs: int) -> list[list[Any]]:
    """A run of one trivial CPU task on a started ProcessBackend, against the same run
    with a pool of its own (this process has run before: no first-run imports)."""
    g = ag.Graph()
    g.add("one", one, kind="cpu")
    async with ag.ProcessBackend(workers=2) as pool:
        shared, own = await _pairs(
            pairs, lambda: _run(g, backend=pool), lambda: _run(g, cpu_workers=1)
        )
    return [
        [
            "one CPU task on a started ProcessBackend, ms",
            median(shared) * 1e3,
            _spread(shared, 1e3, 2),
            "a run's own pool, ms",
            f"{median(own) * 1e3:.1f}",
        ],
    ]


async def row_depth(pairs: int, calls: int) -> list[list[Any]]:
    """Two calls in flight per worker against one (``process.DEPTH`` 2 and 1), side by
    side in this process, the depths alternating within each pair: the marginal wall
    per trivial call on 2 workers, (run of N - run of N/10) / (0.9 N), on a pool of the
    run's own and on a started ``ProcessBackend``; the same for calls of 0.5 ms of busy
    work, over the ideal (0.25 ms a call on 2 workers); and 40 x 20 ms on 2 workers
    (speedup over serial, the pool's start included). Figures: depth 2 / depth 1, per
    pair."""
    from asyncgraph._executors import process

    small = max(2, calls // 10)
    many, few, g40 = ag.Graph(), ag.Graph(), ag.Graph()
    for i in range(calls):
        many.add(f"t{i}", one, kind="cpu")
    for i in range(small):
        few.add(f"t{i}", one, kind="cpu")
    for i in range(40):
        g40.add(f"c{i}", functools.partial(busy, 0.02), kind="cpu")
    work = 0.0005  # a short call: the round trip is 10-20 % of it
    short_many, short_few = ag.Graph(), ag.Graph()
    for i in range(calls):
        short_many.add(f"s{i}", functools.partial(busy, work), kind="cpu")
    for i in range(small):
        short_few.add(f"s{i}", functools.partial(busy, work), kind="cpu")

    async def at_depth(depth: int, make: Callable[[], Awaitable[Any]]) -> float:
        before = process.DEPTH
        process.DEPTH = depth
        try:
            return await _wall(make)
        finally:
            process.DEPTH = before

    backends = {}
    for depth in (1, 2):
        process_depth = process.DEPTH
        process.DEPTH = depth  # read as the backend's pool is made
        try:
            backends[depth] = await ag.ProcessBackend(workers=2).start()
        finally:
            process.DEPTH = process_depth
        await _run(many, backend=backends[depth])  # warm: the first run imports
    own: dict[int, list[float]] = {1: [], 2: []}
    shared: dict[int, list[float]] = {1: [], 2: []}
    speed: dict[int, list[float]] = {1: [], 2: []}
    short: dict[int, list[float]] = {1: [], 2: []}
    waits: dict[int, list[float]] = {1: [], 2: []}
    workers_cpu: dict[int, list[float]] = {1: [], 2: []}
    parent_cpu: dict[int, list[float]] = {1: [], 2: []}
    try:
        for i in range(pairs):
            serial = await _wall(lambda: _serial40())
            for depth in (1, 2) if i % 2 == 0 else (2, 1):
                a = await at_depth(depth, lambda: _run(many, cpu_workers=2))
                b = await at_depth(depth, lambda: _run(few, cpu_workers=2))
                own[depth].append((a - b) / (calls - small))
                a = await at_depth(depth, lambda: _run(short_many, cpu_workers=2))
                b = await at_depth(depth, lambda: _run(short_few, cpu_workers=2))
                short[depth].append((a - b) / (calls - small) / (work / 2))
                pool = backends[depth]
                before, cpu0, own0 = _waits(pool), _worker_cpu(pool), _own_cpu()
                a = await _wall(lambda p=pool: _run(many, backend=p))  # type: ignore[misc]
                waits[depth].append((_waits(pool) - before) / calls)
                workers_cpu[depth].append((_worker_cpu(pool) - cpu0) / calls)
                parent_cpu[depth].append((_own_cpu() - own0) / calls)
                b = await _wall(lambda p=pool: _run(few, backend=p))  # type: ignore[misc]
                shared[depth].append((a - b) / (calls - small))
                speed[depth].append(
                    serial / await at_depth(depth, lambda: _run(g40, cpu_workers=2))
                )
    finally:
        for pool in backends.values():
            await pool.aclose()

    def row(name: str, xs: dict[int, list[float]], scale: float, unit: str) -> list[Any]:
        ratios = [b / a if a > 0 else math.nan for a, b in zip(xs[1], xs[2], strict=True)]
        return [
            f"{name}: depth 2 / depth 1",
            median(ratios),
            _spread(ratios, 1, 2),
            f"depth 1, depth 2 ({unit})",
            f"{median(xs[1]) * scale:.{0 if scale > 1 else 2}f}, "
            f"{median(xs[2]) * scale:.{0 if scale > 1 else 2}f}",
        ]

    return [
        row("per call, own pool, 2 workers", own, 1e6, "us"),
        row(f"calls of {work * 1e3} ms on 2 workers, marginal wall / ideal", short, 1, "x"),
        row("per call, started ProcessBackend(workers=2)", shared, 1e6, "us"),
        row("its workers' waits (voluntary switches) per call", waits, 1, "n"),
        row("its workers' CPU per call", workers_cpu, 1e6, "us"),
        row("this process's CPU per call (run + pool thread)", parent_cpu, 1e6, "us"),
        row("40 x 20 ms on 2 workers, speedup", speed, 1, "x"),
    ]


def _waits(backend: ag.ProcessBackend) -> int:
    """How often the backend's workers have waited (Linux: voluntary context switches,
    a worker's read of an empty requests pipe among them); 0 where unknown."""
    pool = backend._shared.pool
    total = 0
    for worker in [] if pool is None else [*pool._idle, *pool._busy]:
        try:
            with open(f"/proc/{worker.pid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def _worker_cpu(backend: ag.ProcessBackend) -> float:
    """The CPU time (user + system, s) the backend's workers used so far (Linux)."""
    pool = backend._shared.pool
    total = 0
    for worker in [] if pool is None else [*pool._idle, *pool._busy]:
        try:
            with open(f"/proc/{worker.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _serial40() -> None:
    for _ in range(40):
        busy(0.02)


ROWS = ("start", "hidden", "speedup", "call", "big", "phases", "shared", "depth")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    only = args.only.split(",") if args.only else list(ROWS)
    unknown = sorted(set(only) - set(ROWS))
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; choose from {','.join(ROWS)}")
    rows: list[list[Any]] = []
    if "start" in only:
        rows += await row_start(args.pairs)
    if "hidden" in only:
        rows += await row_hidden(args.pairs)
    if "speedup" in only:
        rows += await row_speedup(args.pairs)
    if "call" in only:
        rows += await row_call(args.pairs, args.calls)
    if "big" in only:
        rows += await row_big(args.pairs, args.mb)
    if "phases" in only:
        rows += await row_phases(args.pairs)
    if "shared" in only:
        rows += await row_shared(args.pairs)
    if "depth" in only:
        rows += await row_depth(args.pairs, args.calls)
    return {"rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--only", default="")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    result = uvloop.run(main_async(args))
    print(table(["measure", "median", "min-max", "reference", "reference median"], result["rows"]))
    write_json(args.json, {"cpu": result, "pairs": args.pairs, "mb": args.mb})
    return 0


if __name__ == "__main__":
    sys.exit(main())
