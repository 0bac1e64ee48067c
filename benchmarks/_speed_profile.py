"""Where each microsecond goes: a 10k-task build and run, profiled (issue 15's "profile first").

    python benchmarks/_speed_profile.py [--n 10000] [--shape layered] [--what build,run]
                                        [--top 25] [--sampling] [--json PATH]

For each of ``build`` (``Graph.add`` of every task, then ``validate()``: speed.py's row
1) and ``run`` (``await ag.run(g)`` of the built graph on uvloop, timed inside the
coroutine: row 2), on no-op coroutine tasks receiving their parents' results:

* the unprofiled time, µs per task (median of 3), to scale the profile by;
* cProfile's top functions by own time: calls, calls per task, own and cumulative µs per
  task (cProfile's, so inflated by its per-call cost: read the shares and the calls
  per task), and each one's share of the profiled total;
* with ``--sampling`` and pyinstrument installed: a sampling profile (every 0.1 ms) as a
  call tree with shares of the total; it adds no cost per call, so its shares are
  closer to the unprofiled run's. Time in C (uvloop, a Task's step) counts as the
  ``[self]`` of the Python frame that called into it.

The other helpers change these paths: run this on a checkout (``PYTHONPATH=DIR``) to
see where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from _common import machine  # first: it may put the repo on sys.path
from speed import all_done, build_add, shape

import asyncgraph as ag


def timed_build(deps: dict[str, list[str]]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    build_add(deps)
    return time.perf_counter() - t0


def timed_run(runner: asyncio.Runner, deps: dict[str, list[str]], n: int) -> float:
    g = build_add(deps)

    async def go() -> float:
        gc.collect()
        t0 = time.perf_counter()
        out = await ag.run(g)
        dt = time.perf_counter() - t0
        all_done(out, n)
        return dt

    return runner.run(go())


def cprofile(runner: asyncio.Runner, what: str, deps: dict[str, list[str]]) -> cProfile.Profile:
    prof = cProfile.Profile()
    if what == "build":
        gc.collect()
        prof.enable()
        build_add(deps)
        prof.disable()
        return prof
    g = build_add(deps)

    async def go() -> None:
        gc.collect()
        prof.enable()
        await ag.run(g)
        prof.disable()

    runner.run(go())
    return prof


def top(prof: cProfile.Profile, n: int, k: int) -> dict[str, Any]:
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}({fn})" if line else fn
        rows.append(
            {
                "function": where,
                "calls": nc,
                "calls_per_task": nc / n,
                "own_us_per_task": tt / n * 1e6,
                "cum_us_per_task": ct / n * 1e6,
                "share": tt / total if total else 0.0,
            }
        )
    rows.sort(key=lambda r: -r["own_us_per_task"])
    calls = sum(r["calls"] for r in rows)
    return {"total_us_per_task": total / n * 1e6, "calls_per_task": calls / n, "top": rows[:k]}


def sampling(runner: asyncio.Runner, what: str, deps: dict[str, list[str]]) -> str | None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    prof = Profiler(interval=0.0001, async_mode="disabled")
    if what == "build":
        gc.collect()
        prof.start()
        build_add(deps)
        prof.stop()
    else:
        g = build_add(deps)

        async def go() -> None:
            gc.collect()
            prof.start()
            await ag.run(g)
            prof.stop()

        runner.run(go())
    text: str = prof.output_text(time="percent_of_total", show_all=False)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--shape", default="layered", help="wide, chain, layered")
    p.add_argument("--what", default="build,run")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--sampling", action="store_true", help="also pyinstrument, if installed")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    whats = args.what.split(",")
    if set(whats) - {"build", "run"}:
        raise SystemExit(f"--what takes build and/or run, not {args.what!r}")
    n = args.n
    deps = shape(args.shape, n)
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    report: dict[str, Any] = {"n": n, "shape": args.shape}
    try:
        timed_run(runner, shape("layered", 500), 500)  # untimed: imports, code caches
        for what in whats:
            plain = [
                timed_build(deps) if what == "build" else timed_run(runner, deps, n)
                for _ in range(3)
            ]
            us = statistics.median(plain) / n * 1e6
            prof = top(cprofile(runner, what, deps), n, args.top)
            report[what] = {"unprofiled_us_per_task": us, "cprofile": prof}
            print(
                f"\n{what} of {n} {args.shape} tasks: {us:.1f} us/task unprofiled; "
                f"cProfile: {prof['total_us_per_task']:.1f} us/task, "
                f"{prof['calls_per_task']:.1f} calls/task"
            )
            print(
                f"{'own us/task':>11} {'cum us/task':>11} {'share':>6} {'calls/task':>10}  function"
            )
            for r in prof["top"]:
                print(
                    f"{r['own_us_per_task']:11.2f} {r['cum_us_per_task']:11.2f} "
                    f"{r['share']:6.1%} {r['calls_per_task']:10.2f}  {r['function']}"
                )
            if args.sampling:
                text = sampling(runner, what, deps)
                if text is None:
                    print("(no sampling view: pyinstrument is not installed)")
                else:
                    lines = [ln for ln in text.splitlines() if ln.strip()]
                    report[what]["sampling"] = text
                    print("\nsampling view (pyinstrument; [self] = own time, C code included):")
                    print("\n".join(lines[: args.top * 2 + 6]))
    finally:
        runner.close()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), **report}, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
