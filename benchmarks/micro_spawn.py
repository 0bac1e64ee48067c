"""Cost of spawning a no-op child task: anyio's start_soon vs asyncio's create_task.

Why the runner owns plain asyncio tasks rather than an anyio task group (see
docs/performance.md). For each way of spawning, N children running
``async def noop(): return None`` are spawned and awaited; the figure is the wall time
per child (spawn + run + finish + the parent noticing), median of R repetitions, on
uvloop and on the default asyncio loop:

* asyncio create_task + callback - ``loop.create_task(noop())`` and a done-callback that
  counts down and resolves a Future at zero (what asyncgraph's runner does);
* asyncio.TaskGroup              - ``tg.create_task(noop())`` (Python 3.11+);
* anyio task group start_soon    - ``tg.start_soon(noop)`` in ``anyio.create_task_group()``;
* anyio start_soon, fixed name   - same, ``name="x"`` (start_soon otherwise derives a
  name from the function for each child).

Usage:  python benchmarks/micro_spawn.py [--quick] [--json PATH] [-n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import uvloop
from _common import median, table, write_json  # first: it may put the repo on sys.path


async def noop() -> None:
    return None


async def spawn_create_task(n: int) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    left = n

    def on_done(_t: asyncio.Task[None]) -> None:
        nonlocal left
        left -= 1
        if not left:
            done.set_result(None)

    create_task = loop.create_task
    for _ in range(n):
        create_task(noop()).add_done_callback(on_done)
    await done


async def spawn_taskgroup(n: int) -> None:
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(noop())


async def spawn_anyio(n: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(noop)


async def spawn_anyio_named(n: int) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(noop, name="x")


WAYS: dict[str, Callable[[int], Coroutine[Any, Any, None]]] = {
    "asyncio create_task + callback": spawn_create_task,
    "asyncio.TaskGroup": spawn_taskgroup,
    "anyio task group start_soon": spawn_anyio,
    "anyio start_soon, fixed name": spawn_anyio_named,
}


async def _timed(fn: Callable[[int], Coroutine[Any, Any, None]], n: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    await fn(n)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("-n", type=int, default=20_000, help="children per measurement")
    p.add_argument("--reps", type=int, default=None)
    args = p.parse_args()
    reps = args.reps or (3 if args.quick else 5)
    if args.quick and args.n == 20_000:
        args.n = 5_000
    loops = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    rows = []
    for loop_name, factory in loops.items():
        with asyncio.Runner(loop_factory=factory) as runner:
            times: dict[str, list[float]] = {w: [] for w in WAYS}
            for fn in WAYS.values():  # warm-up
                runner.run(_timed(fn, 1000))
            for _ in range(reps):  # interleaved, so background load hits all alike
                for w, fn in WAYS.items():
                    times[w].append(runner.run(_timed(fn, args.n)))
            base = median(times["asyncio create_task + callback"])
            for w in WAYS:
                m = median(times[w])
                rows.append(
                    {
                        "loop": loop_name,
                        "way": w,
                        "n": args.n,
                        "us_per_task": m / args.n * 1e6,
                        "min_us_per_task": min(times[w]) / args.n * 1e6,
                        "vs_create_task": m / base,
                        "raw_s": times[w],
                    }
                )
    print(f"\nSpawning {args.n} no-op children (median of {reps}; us per child)")
    print(
        table(
            ["loop", "way", "us/child", "min us", "x create_task"],
            [
                [r["loop"], r["way"], r["us_per_task"], r["min_us_per_task"], r["vs_create_task"]]
                for r in rows
            ],
        )
    )
    write_json(args.json, {"benchmark": "micro_spawn", "reps": reps, "rows": rows})


if __name__ == "__main__":
    main()
