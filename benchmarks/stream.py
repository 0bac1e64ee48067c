"""What a stream costs: the engine's overhead per task-batch, its memory bound, the
store's cost per batch, resuming past done batches, and rows/s of IO -> CPU -> IO.

``python benchmarks/stream.py`` prints one table per measure (``--json PATH`` keeps
them). Every stream runs on uvloop when installed, one at a time, in this process.

* **overhead** - ``--batches`` one-row source batches through 3 (and 1) no-op coroutine
  stages; microseconds of wall time per task-batch (stages x batches). Target <= 50 us
  (dplutils' LocalSerialExecutor spends 460-710 us on a 2-core machine). In ``--reps``
  rounds in this process, their order rotating, the same pipeline also runs on
  dplutils' ``LocalSerialExecutor`` (an installed dplutils, or the sdist the tests
  unpack) and on a hand-written asyncio driver (the floor: no failures, events, counts
  or re-batching). Each is timed in wall and CPU time; the ratios are of CPU time (on a
  loaded machine, wall time also counts the waits for a core), taken per round, and the
  median (min-max) is printed.
* **peak** - ``--big`` source batches of ``--rows`` rows through 3 stages, the middle
  one splitting to a quarter (``batch_size``), with a slow sink; the most live batches
  seen (``OpenStream.peak``) against ``live_bound`` plus the split's pieces, for
  ``queue_size`` 1, 2 and 8.
* **store** - the same 3-stage stream with and without ``store=`` (a fresh file each
  time), alternated in ``--reps`` pairs; the store's extra microseconds per source batch
  (median of the pairs' differences) and the median of the pairs' ratios, and the
  same difference in the process's CPU time (the commits run on the loop's thread).
  Target <= 200 us.
* **resume** - a durable stream of ``--skip`` batches done once, then run again: the
  seconds to read the source and skip every batch without calling a task. Target <= 1 s
  for 10k.
* **rows/s** - ``--big`` batches of ``--rows`` rows through fetch (IO) -> score (CPU,
  in ``--workers`` processes) -> publish (IO); rows per second end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts the checkout on sys.path
import pandas as pd

import asyncgraph as ag
from asyncgraph._stream.engine import live_bound


def _loop() -> Any:
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:
        return asyncio.new_event_loop


def run(coro: Any) -> Any:
    loop = _loop()()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def one_row(n: int):
    def source():
        frame = pd.DataFrame({"id": [0]})
        for _ in range(n):
            yield frame

    return source


def chain(stages: int) -> ag.Graph:
    g = ag.Graph()

    async def noop(batch):
        return batch

    prev = "source"
    for i in range(stages):
        name = f"s{i}"
        g.add_stream(name, noop, inputs=[prev])
        prev = name
    return g


async def timed_stream(g: ag.Graph, source: Any, **kw: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    r = await ag.run_stream(g, source=source, collect=False, **kw)
    return time.perf_counter() - t0, r


def _dplutils() -> Any:
    """dplutils' LocalSerialExecutor and PipelineTask, or None: an installed dplutils,
    else the sdist the tests unpack (``~/.cache/asyncgraph-tests/dplutils-0.8.2``)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    unpacked = cache / "asyncgraph-tests" / "dplutils-0.8.2"
    if importlib.util.find_spec("dplutils") is None and (unpacked / "dplutils").is_dir():
        sys.path.append(str(unpacked))
    try:
        from dplutils.pipeline import PipelineTask
        from dplutils.pipeline.stream import LocalSerialExecutor
    except ImportError:
        return None
    return LocalSerialExecutor, PipelineTask


def _timed(fn: Callable[[], Any], per: int) -> tuple[float, float]:
    """(wall, CPU) microseconds of ``fn()`` per task-batch (``per`` of them)."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / per * 1e6, (time.process_time() - c0) / per * 1e6


def _ours(stages: int, batches: int) -> None:
    _, r = run(timed_stream(chain(stages), one_row(batches)))
    assert r.done == batches


def _theirs(dpl: Any, stages: int, batches: int) -> None:
    executor, task = dpl
    tasks = [task(f"s{i}", _identity) for i in range(stages)]
    pl = executor(tasks, max_batches=batches, generator=one_row(batches))
    assert sum(1 for _ in pl.run()) == batches


def _identity(frame: Any) -> Any:
    return frame


async def _floor_run(stages: int, batches: int, width: int = 2) -> None:
    """The floor: a hand-written asyncio driver of the same pipeline (one task per call,
    a bounded queue per stage, terminal first), with no failures, events, counts,
    re-batching or stops; what any engine on asyncio pays at least."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    queues: list[deque[Any]] = [deque() for _ in range(stages)]
    done = [0]
    source = one_row(batches)()

    async def noop(batch: Any) -> Any:
        return batch

    def finished(k: int, fut: asyncio.Future[Any]) -> None:
        value = fut.result()
        if k + 1 < stages:
            queues[k + 1].append(value)
        else:
            done[0] += 1
        wake.set()

    callbacks = [functools.partial(finished, k) for k in range(stages)]
    ended = False
    while done[0] < batches:
        moved = True
        while moved:
            moved = False
            for k in range(stages - 1, -1, -1):
                nxt = queues[k + 1] if k + 1 < stages else None
                while queues[k] and (nxt is None or len(nxt) < width):
                    loop.create_task(noop(queues[k].popleft())).add_done_callback(callbacks[k])
                    moved = True
            if not ended and len(queues[0]) < width:
                try:
                    queues[0].append(next(source))
                    moved = True
                except StopIteration:
                    ended = True
        wake.clear()
        if done[0] < batches:
            await wake.wait()


def _floor(stages: int, batches: int) -> None:
    run(_floor_run(stages, batches))


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def overhead(batches: int, reps: int) -> list[list[Any]]:
    """Per stage count: asyncgraph, dplutils' LocalSerialExecutor (when importable) and
    the hand-written floor, in ``reps`` rounds in this process, their order rotating
    each round. Each is timed in wall and CPU time; the ratios are of CPU time (a
    loaded machine's waits for a core are not the driver's), per round, and then the
    median (min-max) is taken."""
    dpl = _dplutils()
    rows = []
    run(timed_stream(chain(3), one_row(50)))  # warm: imports, first loop
    for stages in (3, 1):
        per = batches * stages
        times: dict[str, list[tuple[float, float]]] = {"ours": [], "theirs": [], "floor": []}
        legs: list[tuple[str, Callable[[], Any]]] = [
            ("ours", functools.partial(_ours, stages, batches)),
            ("floor", functools.partial(_floor, stages, batches)),
        ]
        if dpl is not None:
            legs.append(("theirs", functools.partial(_theirs, dpl, stages, batches)))
        for rep in range(reps):
            shift = rep % len(legs)
            for name, leg in legs[shift:] + legs[:shift]:
                times[name].append(_timed(leg, per))
        ours = times["ours"]
        cpu = {k: [c for _, c in v] for k, v in times.items()}
        vs_theirs = [t / o for t, o in zip(cpu["theirs"], cpu["ours"], strict=False)]
        vs_floor = [o / f for o, f in zip(cpu["ours"], cpu["floor"], strict=True)]
        rows.append(
            [
                stages,
                batches,
                reps,
                _spread([w for w, _ in ours]),
                _spread(cpu["ours"]),
                _spread(cpu["theirs"]) if dpl is not None else None,
                _spread(vs_theirs) if dpl is not None else None,
                _spread(cpu["floor"]),
                _spread(vs_floor),
            ]
        )
    return rows


def peak(big: int, nrows: int) -> list[list[Any]]:
    rows = []
    for queue_size in (1, 2, 8):
        g = ag.Graph()

        @g.stream
        async def read(source):
            return source

        @g.stream(batch_size=max(1, nrows // 4))
        async def split(read):
            return split_work(read)

        @g.stream
        async def sink(split):
            for _ in range(20):
                await asyncio.sleep(0)
            return None

        def source():
            frame = pd.DataFrame({"x": range(nrows)})
            for _ in range(big):
                yield frame

        bound = live_bound(g, queue_size) + 3  # + the pieces of one split beyond the first
        rows.append([queue_size, big, run(_peak_of(g, source, queue_size, big)), bound, big * 4])
    return rows


async def _peak_of(g: ag.Graph, source: Any, queue_size: int, big: int) -> int:
    async with ag.open_stream(g, source=source, queue_size=queue_size) as s:
        pass
    assert s.result.done == big
    return s.peak


def split_work(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


def store_cost(batches: int, reps: int) -> list[list[Any]]:
    diffs, ratios, cpu_diffs = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(reps):
            c0 = time.process_time()
            plain, _ = run(timed_stream(chain(3), one_row(batches)))
            c1 = time.process_time()
            wall, r = run(timed_stream(chain(3), one_row(batches), store=Path(tmp) / f"{i}.db"))
            c2 = time.process_time()
            assert r.done == batches
            diffs.append((wall - plain) / batches * 1e6)
            ratios.append(wall / plain)
            cpu_diffs.append(((c2 - c1) - (c1 - c0)) / batches * 1e6)
    return [
        [
            batches,
            reps,
            statistics.median(diffs),
            statistics.median(ratios),
            statistics.median(cpu_diffs),
        ]
    ]


def resume(skip: int) -> list[list[Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "s.db"
        g = chain(3)
        _, r = run(timed_stream(g, one_row(skip), store=store))
        assert r.done == skip
        wall, r = run(timed_stream(g, one_row(skip), store=store))
        assert (r.done, r.skipped) == (0, skip)
    return [[skip, wall]]


def score(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(y=(frame["x"] * 3 + 1) % 7)


def rows_per_second(big: int, nrows: int, workers: int) -> list[list[Any]]:
    g = ag.Graph()

    @g.stream
    async def fetch(source):
        await asyncio.sleep(0)
        return source

    g.add_stream("score", score, inputs=["fetch"], kind="cpu")

    @g.stream
    async def publish(score):
        return score[["x", "y"]]

    def source():
        for i in range(big):
            yield pd.DataFrame({"x": range(i * nrows, (i + 1) * nrows)})

    wall, r = run(timed_stream(g, source, cpu_workers=workers))
    assert r.done == big
    return [[big, nrows, workers, wall, big * nrows / wall]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=1000, help="one-row batches (overhead)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--big", type=int, default=40, help="big batches (peak, rows/s)")
    p.add_argument("--rows", type=int, default=200_000, help="rows per big batch")
    p.add_argument("--skip", type=int, default=10_000, help="done batches to skip (resume)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    from _common import table, write_json

    results: dict[str, Any] = {}
    print("overhead per task-batch (1-row batches, no-op coroutine stages)")
    rows = overhead(a.batches, a.reps)
    results["overhead"] = rows
    headers = ["stages", "batches", "rounds", "asyncgraph wall us", "asyncgraph CPU us"]
    headers += ["dplutils CPU us", "dplutils/asyncgraph", "floor CPU us", "asyncgraph/floor"]
    print(table(headers, rows))
    print("(median (min-max) over the rounds; ratios of CPU time, per round, in this process)\n")
    print("peak live batches (slow sink, middle stage splits to a quarter)")
    rows = peak(a.big, a.rows)
    results["peak"] = rows
    print(table(["queue_size", "batches", "peak", "bound", "unrolled"], rows), "\n")
    print("store cost per source batch (3 stages, with vs without store=)")
    rows = store_cost(a.batches, a.reps)
    results["store"] = rows
    print(table(["batches", "pairs", "extra us/batch", "ratio", "extra CPU us/batch"], rows), "\n")
    print("resume past done batches")
    rows = resume(a.skip)
    results["resume"] = rows
    print(table(["done batches", "seconds"], rows), "\n")
    print("rows/s, IO -> CPU -> IO")
    rows = rows_per_second(a.big, a.rows, a.workers)
    results["rows_per_s"] = rows
    print(table(["batches", "rows", "workers", "seconds", "rows/s"], rows))
    write_json(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
