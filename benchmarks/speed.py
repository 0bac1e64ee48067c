"""Issue 15's ratio table: every row of its two tables, measured side by side, one command.

    python benchmarks/speed.py [--pairs 5] [--quick] [--only 2,7] [--json PATH]
    python benchmarks/speed.py --checkout before=/path/to/old --checkout after=. [--rounds 1]

Every figure is measured in pairs, A B, B A, A B, ... (the order alternates so a drift in
the machine's load hits both alike), in ONE process where possible, on fresh objects each
time, with ``gc.collect()`` before every timed call; the figure is the median of the
per-pair ratios (or differences), with their min-max. Asyncio runs are on uvloop and
timed inside the coroutine, around the ``await`` alone (as benchmarks/overhead.py does).
Tasks are no-op coroutines receiving their parents' results unless a row says otherwise.

Rows (``--only`` takes their numbers):

1. build, µs/task: ``Graph.add``, the ``@g.task`` decorator, ``create_graph`` (each then
   ``validate()``) against graphlib ``TopologicalSorter.add`` + ``prepare`` on the same
   graph; ratio ag / graphlib (target <= 2).
2. run of a built graph / hand (overhead.py's ``run_hand``: a ready-counter runner on
   uvloop): wide, chain, layered at 10k; wide, layered at 100k (target <= 1.2). The
   "eager limit" (each coroutine driven by ``coro.send(None)``, no Task: what starting
   non-suspending coroutines eagerly could reach) / hand, as information.
3. build + run / hand (target <= 2.0): the clock starts with the dependency dict.
4. build + run: Dask ``get_sync`` (build the dict graph + run) / asyncgraph
   (target >= 5); skipped with a note when dask is missing.
5. 10k tasks of ``asyncio.sleep(10 ms)``, makespan / hand: wide, layered 10x1000 and
   100x100 (target <= 1.1).
6. resume of a 10k-task layered graph with 1 % failed, in a NEW process (build + load +
   reset_failed + run, timed inside the child) / a plain run of all 10k in a new process
   (build + run, no store) (target <= 0.3). The failed tasks, from the last layer, fail
   while a switch file exists and otherwise sleep 5 ms (``--work-ms``), as in store.py.
7. store on / off (fresh SQLite file per run), 10k wide and layered (target <= 1.3).
8. memory at 100k layered: tracemalloc's peak during the run (tracing starts after the
   graph is built, so the built graph is not counted; the result graph is) per task, in
   bytes (target <= 600); hand's the same way, as information.
9. progress bar on / off at 100k layered: ``progress="force"`` drawing into a StringIO
   (as progress.py does) / plain (target <= 1.05).
10. CPU tasks: the first CPU task of a run, wall (fresh process; target <= 15 ms), and a
    run whose first 50 ms are IO before its one CPU task, wall minus 50 ms (the pool's
    start hidden behind the IO; target <= 15 ms), with ``ProcessPoolExecutor`` (fork) as
    information; 40 CPU tasks of 20 ms on 2 workers, speedup over running them serially,
    pool start included (fresh process; target >= 1.8); marginal cost per no-op CPU call
    on 2 workers, all submitted at once: (wall(N) - wall(N/10)) / (0.9 N) (target <= 60
    µs), against ``ProcessPoolExecutor``; a ``--mb`` (100) MB DataFrame returned from a
    CPU task, extra ms over a task that builds the same frame and returns its length
    (target <= 150 ms), as run walls and, steadier, from the task's return in the worker
    (a wall-clock stamp it returns) to its record on the driver (``finished``), the
    frame's making (0.3-0.6 s of page faults) out of both sides.

``--checkout NAME=DIR`` (repeatable; ``NAME=DIR=PYTHON`` picks the interpreter) runs the
whole table once per checkout and round, in alternating fresh processes (before, after,
after, before, ...) with ``PYTHONPATH=DIR``, and prints the rows side by side,
"before -> after" (each the median over ``--rounds``). Only public API that exists at
commit 398c2d3 is used, so an old checkout runs it too.

The machine is shared: absolute figures are upper bounds, ratios are what to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import graphlib
import io
import json
import operator
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from _common import machine, write_json  # first: it may put the repo on sys.path
from overhead import SHAPES, run_hand, shape_layered

import asyncgraph as ag

HERE = Path(__file__).resolve()
SEED = 12345

# -- tasks ----------------------------------------------------------------------------------


async def noop(*a: Any) -> None:
    return None


def noop_sync(*a: Any) -> None:
    return None


def cpu_noop(*a: Any) -> None:
    return None


def cpu_one() -> int:
    return 1


def busy(*a: Any) -> None:
    """20 ms of busy work on the wall clock (load stretches no one's share of it)."""
    end = time.perf_counter() + 0.02
    while time.perf_counter() < end:
        pass


def frame(mb: int) -> Any:
    import numpy as np
    import pandas as pd

    rows = mb * 1024 * 1024 // (8 * 10)
    return pd.DataFrame(np.random.default_rng(0).random((rows, 10)))


def frame_len(mb: int) -> int:
    return len(frame(mb))


def stamped_frame(mb: int) -> Any:
    """``frame``, with the worker's wall clock at its return in ``attrs`` (pickled along)."""
    df = frame(mb)
    df.attrs["returned"] = time.time()
    return df


def stamped_len(mb: int) -> tuple[int, float]:
    """``frame_len`` and the worker's wall clock at its return."""
    n = frame_len(mb)
    return n, time.time()


def make_sleeper(seconds: float) -> Callable[..., Any]:
    async def sleeper(*a: Any) -> None:
        await asyncio.sleep(seconds)

    return sleeper


def make_work(switch: str, seconds: float) -> Callable[..., Any]:
    """Fails while ``switch`` exists, else sleeps ``seconds`` (store.py's resume task).

    The switch is a file, not a variable: a task's closure is part of its fingerprint,
    so the failing tasks must be the same code in both runs.
    """

    async def work(*deps: Any) -> str:
        if os.path.exists(switch):  # noqa: ASYNC240 - one stat
            raise RuntimeError("switched off for the benchmark")
        await asyncio.sleep(seconds)
        return "ok"

    return work


# -- graphs ---------------------------------------------------------------------------------

Deps = dict[str, list[str]]


def shape(name: str, n: int) -> Deps:
    """overhead.py's shapes; ``layered/W`` is layers of W tasks (``layered`` = 100)."""
    kind, _, width = name.partition("/")
    if kind == "layered" and width:
        return shape_layered(n, layer=int(width))
    return SHAPES[kind](n)


def build_add(deps: Deps, fn: Callable[..., Any] = noop) -> ag.Graph:
    g = ag.Graph()
    add = g.add
    for name, ds in deps.items():
        add(name, fn, deps=ds)
    g.validate()
    return g


def build_decorator(deps: Deps) -> ag.Graph:
    g = ag.Graph()
    task = g.task
    for name, ds in deps.items():
        task(name=name, deps=ds)(noop)
    g.validate()
    return g


def build_create_graph(deps: Deps) -> ag.Graph:
    g = ag.create_graph(dict.fromkeys(deps, noop), deps, io_bound=deps)
    g.validate()
    return g


def build_graphlib(deps: Deps) -> graphlib.TopologicalSorter[str]:
    ts: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    add = ts.add
    for name, ds in deps.items():
        add(name, *ds)
    ts.prepare()
    return ts


def build_dask(deps: Deps) -> tuple[dict[str, Any], list[str]]:
    has_child: set[str] = set()
    for ds in deps.values():
        has_child.update(ds)
    dsk = {n: (noop_sync, *ds) for n, ds in deps.items()}
    return dsk, [n for n in deps if n not in has_child]


def import_dask_local() -> Any:
    """``dask.local``, not this directory's dask.py (the script's folder is on the path)."""
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]
    try:
        import dask.local
    finally:
        sys.path[:] = saved
    return dask.local


def all_done(out: ag.Graph, n: int) -> None:
    bad = [k for k, s in out.status.items() if s is not ag.State.DONE]
    assert not bad, f"not done: {bad[:3]}"
    assert len(out.status) == n, (len(out.status), n)


def run_eager(fns: dict[str, Callable[..., Any]], deps: Deps) -> int:
    """The eager limit: every coroutine driven by ``send(None)``, no Task, no loop trip.

    It only works for coroutines that never suspend (it raises if one does), which is
    the point: what starting such coroutines eagerly could reach at best.
    """
    children: dict[str, list[str]] = {n: [] for n in deps}
    waiting: dict[str, int] = {}
    for n, ds in deps.items():
        waiting[n] = len(ds)
        for d in ds:
            children[d].append(n)
    results: dict[str, Any] = {}
    ready = deque(n for n, k in waiting.items() if not k)
    while ready:
        n = ready.popleft()
        coro = fns[n](*[results[d] for d in deps[n]])
        try:
            coro.send(None)
        except StopIteration as stop:
            results[n] = stop.value
        else:
            coro.close()
            raise RuntimeError(f"{n} suspended: the eager limit needs tasks that do not")
        for c in children[n]:
            waiting[c] -= 1
            if not waiting[c]:
                ready.append(c)
    return len(results)


# -- timing ---------------------------------------------------------------------------------


class Clock:
    """One uvloop runner; every timed call is preceded by ``gc.collect()``."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)

    def close(self) -> None:
        self.runner.close()

    def sync(self, fn: Callable[[], Any]) -> float:
        gc.collect()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def aio(self, make: Callable[[], Awaitable[Any]], check: Callable[[Any], None]) -> float:
        """Time ``await make()`` inside the loop (not ``Runner.run``'s own costs)."""

        async def timed() -> tuple[float, Any]:
            gc.collect()
            t0 = time.perf_counter()
            out = await make()
            return time.perf_counter() - t0, out

        dt, out = self.runner.run(timed())
        check(out)
        return dt


def paired(pairs: int, sides: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each side once per pair, the order rotating from pair to pair."""
    names = list(sides)
    got: dict[str, list[float]] = {k: [] for k in names}
    for i in range(pairs):
        order = names[i % len(names) :] + names[: i % len(names)]
        if i % 2:
            order.reverse()
        for k in order:
            got[k].append(sides[k]())
    return got


#: The exit status of a table in which some rows failed (each says why; the rest stand).
ROW_FAILED = 3

OPS = {"<=": operator.le, ">=": operator.ge}


class Table:
    """The rows measured so far, each a dict (what ``--json`` writes)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(
        self,
        row: int,
        key: str,
        measure: str,
        values: list[float],
        unit: str,
        target: tuple[str, float] | None,
        **detail: Any,
    ) -> None:
        value = statistics.median(values)
        met = None if target is None else bool(OPS[target[0]](value, target[1]))
        self.rows.append(
            {
                "row": row,
                "key": key,
                "measure": measure,
                "value": value,
                "min": min(values),
                "max": max(values),
                "unit": unit,
                "pairs": len(values),
                "target": None if target is None else f"{target[0]} {target[1]:g}",
                "met": met,
                "values": values,
                **detail,
            }
        )
        print(f"  [{row}] {measure}: {fmt(value, unit)}", file=sys.stderr, flush=True)

    def note(self, row: int, key: str, measure: str, note: str) -> None:
        self.rows.append(
            {
                "row": row,
                "key": key,
                "measure": measure,
                "value": None,
                "note": note,
                "target": None,
                "met": None,
                "unit": "",
                "pairs": 0,
            }
        )
        print(f"  [{row}] {measure}: {note}", file=sys.stderr, flush=True)


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "x":
        return f"{v:.2f}x"
    if unit in ("us", "ms") or unit.startswith("us/"):
        return f"{v:.1f} {unit}"
    if unit == "B/task":
        return f"{v:,.0f} B"
    return f"{v:.3g} {unit}"


def size(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def grid(headers: list[str], rows: list[list[Any]], left: set[int]) -> str:
    """A text table; the columns in ``left`` are left-aligned, the others right."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, cells)])


def per_pair(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def median_us(xs: list[float], n: int) -> float:
    return statistics.median(xs) / n * 1e6


# -- the rows ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pairs: int = args.pairs
        self.n: int = args.n
        self.big: int = args.big
        self.clock = Clock()
        self.table = Table()
        self.tmp = Path(tempfile.mkdtemp(prefix="agspeed-"))

    def close(self) -> None:
        self.clock.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # 1 ---------------------------------------------------------------------------------------
    def row1_build(self) -> None:
        n = self.n
        builders: dict[str, Callable[[Deps], Any]] = {
            "Graph.add": build_add,
            "decorator": build_decorator,
            "create_graph": build_create_graph,
            "graphlib": build_graphlib,
        }
        for sh in ("wide", "chain", "layered"):
            deps = shape(sh, n)
            sides: dict[str, Callable[[], float]] = {
                k: functools.partial(self.clock.sync, functools.partial(b, deps))
                for k, b in builders.items()
            }
            got = paired(self.pairs, sides)
            gl = got["graphlib"]
            for k in ("Graph.add", "decorator", "create_graph"):
                self.table.add(
                    1,
                    f"build.{k}.{sh}",
                    f"build {k} / graphlib, {sh} {size(n)}",
                    per_pair(got[k], gl),
                    "x",
                    ("<=", 2.0),
                    us_per_task=median_us(got[k], n),
                    graphlib_us_per_task=median_us(gl, n),
                )

    # 2 ---------------------------------------------------------------------------------------
    def row2_run(self) -> None:
        cases = [("wide", self.n), ("chain", self.n), ("layered", self.n)]
        cases += [("wide", self.big), ("layered", self.big)]
        for sh, n in cases:
            deps = shape(sh, n)

            def ag_side(deps: Deps = deps, n: int = n) -> float:
                g = build_add(deps)
                return self.clock.aio(lambda: ag.run(g), lambda out: all_done(out, n))

            def hand_side(deps: Deps = deps, n: int = n) -> float:
                fns = dict.fromkeys(deps, noop)
                return self.clock.aio(lambda: run_hand(fns, deps), _count(n))

            def eager_side(deps: Deps = deps, n: int = n) -> float:
                fns = dict.fromkeys(deps, noop)

                async def go() -> int:
                    return run_eager(fns, deps)

                return self.clock.aio(go, _count(n))

            got = paired(self.pairs, {"ag": ag_side, "hand": hand_side, "eager": eager_side})
            label = f"{sh} {size(n)}"
            self.table.add(
                2,
                f"run.{sh}.{n}",
                f"run of a built graph / hand, {label}",
                per_pair(got["ag"], got["hand"]),
                "x",
                ("<=", 1.2),
                ag_us_per_task=median_us(got["ag"], n),
                hand_us_per_task=median_us(got["hand"], n),
            )
            self.table.add(
                2,
                f"eager.{sh}.{n}",
                f"eager limit / hand (information), {label}",
                per_pair(got["eager"], got["hand"]),
                "x",
                None,
                eager_us_per_task=median_us(got["eager"], n),
            )

    # 3 and 4 ---------------------------------------------------------------------------------
    def row34_build_run(self, rows: set[int]) -> None:
        dask_local = None
        if 4 in rows:
            try:
                dask_local = import_dask_local()
            except ImportError:
                self.table.note(
                    4,
                    "dask",
                    "build + run: Dask get_sync / asyncgraph",
                    "skipped: dask is not installed (pip install dask)",
                )
        n = self.n
        for sh in ("wide", "chain", "layered"):
            deps = shape(sh, n)

            async def ag_go(deps: Deps = deps) -> ag.Graph:
                return await ag.run(build_add(deps))

            def ag_side(ag_go: Any = ag_go, n: int = n) -> float:
                return self.clock.aio(ag_go, lambda out: all_done(out, n))

            def hand_side(deps: Deps = deps, n: int = n) -> float:
                return self.clock.aio(lambda: run_hand(dict.fromkeys(deps, noop), deps), _count(n))

            sides: dict[str, Callable[[], float]] = {"ag": ag_side}
            if 3 in rows:
                sides["hand"] = hand_side
            if dask_local is not None:
                get_sync = dask_local.get_sync

                def dask_side(deps: Deps = deps, get_sync: Any = get_sync) -> float:
                    def go() -> None:
                        dsk, sinks = build_dask(deps)
                        out = get_sync(dsk, sinks)
                        assert len(out) == len(sinks)

                    return self.clock.sync(go)

                sides["dask"] = dask_side
            got = paired(self.pairs, sides)
            if "hand" in got:
                self.table.add(
                    3,
                    f"build_run.{sh}",
                    f"build + run / hand, {sh} {size(n)}",
                    per_pair(got["ag"], got["hand"]),
                    "x",
                    ("<=", 2.0),
                    ag_us_per_task=median_us(got["ag"], n),
                    hand_us_per_task=median_us(got["hand"], n),
                )
            if "dask" in got:
                self.table.add(
                    4,
                    f"dask.{sh}",
                    f"build + run: Dask get_sync / ag, {sh} {size(n)}",
                    per_pair(got["dask"], got["ag"]),
                    "x",
                    (">=", 5.0),
                    ag_us_per_task=median_us(got["ag"], n),
                    dask_us_per_task=median_us(got["dask"], n),
                )

    # 5 ---------------------------------------------------------------------------------------
    def row5_sleep(self) -> None:
        n = self.n
        seconds = self.args.sleep_ms / 1000
        for sh, label in (
            ("wide", "wide"),
            (f"layered/{max(1, n // 10)}", "layered 10 layers"),
            (f"layered/{max(1, n // 100)}", "layered 100 layers"),
        ):
            deps = shape(sh, n)

            def ag_side(deps: Deps = deps) -> float:
                g = build_add(deps, make_sleeper(seconds))
                return self.clock.aio(lambda: ag.run(g), lambda out: all_done(out, n))

            def hand_side(deps: Deps = deps) -> float:
                fns = dict.fromkeys(deps, make_sleeper(seconds))
                return self.clock.aio(lambda: run_hand(fns, deps), _count(n))

            got = paired(self.pairs, {"ag": ag_side, "hand": hand_side})
            self.table.add(
                5,
                f"sleep.{label.replace(' ', '_')}",
                f"{n} x sleep({self.args.sleep_ms:g} ms) makespan / hand, {label}",
                per_pair(got["ag"], got["hand"]),
                "x",
                ("<=", 1.1),
                ag_s=statistics.median(got["ag"]),
                hand_s=statistics.median(got["hand"]),
            )

    # 6 ---------------------------------------------------------------------------------------
    def row6_resume(self) -> None:
        n = self.n
        base = self.tmp / "resume.db"
        switch = self.tmp / "switch"
        switch.touch()
        prep = child(["resume-prep", str(n), str(base), str(switch), str(self.args.work_ms)])
        switch.unlink()
        failed = prep["failed"]

        def resume_side() -> float:
            path = self.tmp / "resume-copy.db"
            for suffix in ("", "-wal"):
                if os.path.exists(f"{base}{suffix}"):
                    shutil.copyfile(f"{base}{suffix}", f"{path}{suffix}")
            out = child(["resume", str(n), str(path), str(switch), str(self.args.work_ms)])
            for suffix in ("", "-wal", "-shm", "-lock"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
            assert out["rerun"] == failed, out
            return float(out["seconds"])

        def plain_side() -> float:
            out = child(["plain", str(n), "-", str(switch), str(self.args.work_ms)])
            return float(out["seconds"])

        got = paired(self.pairs, {"resume": resume_side, "plain": plain_side})
        self.table.add(
            6,
            "resume",
            f"resume, {n} layered, {failed} failed, new process / plain run",
            per_pair(got["resume"], got["plain"]),
            "x",
            ("<=", 0.3),
            resume_s=statistics.median(got["resume"]),
            plain_s=statistics.median(got["plain"]),
            failed=failed,
            work_ms=self.args.work_ms,
        )

    # 7 ---------------------------------------------------------------------------------------
    def row7_store(self) -> None:
        n = self.n
        for sh in ("wide", "layered"):
            deps = shape(sh, n)
            count = [0]

            def plain_side(deps: Deps = deps) -> float:
                g = build_add(deps)
                return self.clock.aio(lambda: ag.run(g), lambda out: all_done(out, n))

            def store_side(deps: Deps = deps, count: list[int] = count) -> float:
                g = build_add(deps)
                count[0] += 1
                path = self.tmp / f"store{count[0]}.db"
                dt = self.clock.aio(lambda: ag.run(g, store=path), lambda out: all_done(out, n))
                for suffix in ("", "-wal", "-shm", "-lock"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{path}{suffix}")
                return dt

            got = paired(self.pairs, {"store": store_side, "plain": plain_side})
            self.table.add(
                7,
                f"store.{sh}",
                f"store on / off, {sh} {size(n)}",
                per_pair(got["store"], got["plain"]),
                "x",
                ("<=", 1.3),
                store_us_per_task=median_us(got["store"], n),
                plain_us_per_task=median_us(got["plain"], n),
            )

    # 8 ---------------------------------------------------------------------------------------
    def row8_memory(self) -> None:
        n = self.big
        deps = shape("layered", n)

        def traced(make: Callable[[], Awaitable[Any]], check: Callable[[Any], None]) -> float:
            async def go() -> tuple[int, Any]:
                gc.collect()
                tracemalloc.start()
                try:
                    out = await make()
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                return peak, out

            peak, out = self.clock.runner.run(go())
            check(out)
            del out
            return peak / n

        def ag_side() -> float:
            g = build_add(deps)
            return traced(lambda: ag.run(g), lambda out: all_done(out, n))

        def hand_side() -> float:
            fns = dict.fromkeys(deps, noop)
            return traced(lambda: run_hand(fns, deps), _count(n))

        got = paired(self.pairs, {"ag": ag_side, "hand": hand_side})
        self.table.add(
            8,
            "memory",
            f"run peak memory per task, layered {size(n)}",
            got["ag"],
            "B/task",
            ("<=", 600.0),
            hand_bytes_per_task=statistics.median(got["hand"]),
            ag_over_hand=statistics.median(per_pair(got["ag"], got["hand"])),
        )
        self.table.add(
            8,
            "memory.hand",
            f"hand's run peak memory per task (information), layered {size(n)}",
            got["hand"],
            "B/task",
            None,
        )

    # 9 ---------------------------------------------------------------------------------------
    def row9_progress(self) -> None:
        n = self.big
        deps = shape("layered", n)

        def side(options: dict[str, Any]) -> float:
            g = build_add(deps)
            sink = io.StringIO()
            with contextlib.redirect_stderr(sink):
                dt = self.clock.aio(lambda: ag.run(g, **options), lambda out: all_done(out, n))
            if options:
                assert f"{n}/{n}" in sink.getvalue(), "the bar did not reach its end"
            return dt

        got = paired(
            self.pairs, {"bar": lambda: side({"progress": "force"}), "plain": lambda: side({})}
        )
        self.table.add(
            9,
            "progress",
            f"progress bar on / off, layered {size(n)}",
            per_pair(got["bar"], got["plain"]),
            "x",
            ("<=", 1.05),
            bar_us_per_task=median_us(got["bar"], n),
            plain_us_per_task=median_us(got["plain"], n),
        )

    # 10 --------------------------------------------------------------------------------------
    def row10_cpu(self) -> None:
        got = paired(
            self.pairs,
            {
                "first": lambda: float(child(["first-cpu"])["seconds"]),
                "io50": lambda: float(child(["io50-cpu"])["seconds"]) - 0.05,
                "ppe": lambda: float(child(["first-ppe"])["seconds"]),
            },
        )
        ms = {k: [v * 1e3 for v in vs] for k, vs in got.items()}
        self.table.add(
            10,
            "cpu.first",
            "first CPU task of a run, wall (new process)",
            ms["first"],
            "ms",
            ("<=", 15.0),
            ppe_fork_ms=statistics.median(ms["ppe"]),
        )
        self.table.add(
            10,
            "cpu.first_behind_io",
            "50 ms of IO then one CPU task: wall - 50 ms (new process)",
            ms["io50"],
            "ms",
            ("<=", 15.0),
        )
        self.table.add(
            10,
            "cpu.first_ppe",
            "ProcessPoolExecutor (fork), first task wall (information)",
            ms["ppe"],
            "ms",
            None,
        )

        tasks = self.args.cpu_tasks
        speed = paired(self.pairs, {"cpu40": lambda: _speedup(tasks)})
        self.table.add(
            10,
            "cpu.speedup",
            f"{tasks} x 20 ms CPU tasks on 2 workers, speedup over serial (new process)",
            speed["cpu40"],
            "x",
            (">=", 1.8),
        )

        big: int = self.args.calls
        small = max(1, big // 10)

        def ag_calls(k: int) -> float:
            g = ag.Graph()
            for i in range(k):
                g.add(f"c{i}", cpu_noop, kind="cpu")
            return self.clock.aio(lambda: ag.run(g, cpu_workers=2), lambda out: all_done(out, k))

        def ppe_calls(k: int) -> float:
            from concurrent.futures import ProcessPoolExecutor, wait

            def go() -> None:
                with ProcessPoolExecutor(2) as ex:
                    done, _ = wait([ex.submit(cpu_noop) for _ in range(k)])
                    assert len(done) == k

            return self.clock.sync(go)

        def marginal(fn: Callable[[int], float]) -> float:
            return (fn(big) - fn(small)) / (big - small) * 1e6

        per_call = paired(
            self.pairs, {"ag": lambda: marginal(ag_calls), "ppe": lambda: marginal(ppe_calls)}
        )
        self.table.add(
            10,
            "cpu.marginal",
            f"marginal cost per CPU call, 2 workers, {big} pipelined",
            per_call["ag"],
            "us",
            ("<=", 60.0),
            ppe_us=statistics.median(per_call["ppe"]),
        )
        self.table.add(
            10,
            "cpu.marginal_ppe",
            "ProcessPoolExecutor, marginal per call (information)",
            per_call["ppe"],
            "us",
            None,
        )

        try:
            import numpy  # noqa: F401
            import pandas  # noqa: F401
        except ImportError:
            self.table.note(
                10,
                "cpu.frame",
                "DataFrame from a CPU task",
                "skipped: pandas/numpy are not installed",
            )
            return
        mb = self.args.mb

        def frame_run(fn: Callable[[int], Any]) -> float:
            g = ag.Graph()
            g.add("big", functools.partial(fn, mb), kind="cpu")

            def check(out: ag.Graph) -> None:
                all_done(out, 1)

            return self.clock.aio(lambda: ag.run(g, cpu_workers=1), check)

        got = paired(
            self.pairs, {"frame": lambda: frame_run(frame), "int": lambda: frame_run(frame_len)}
        )
        extra = [(f - i) * 1e3 for f, i in zip(got["frame"], got["int"], strict=True)]
        self.table.add(
            10,
            "cpu.frame",
            f"{mb} MB DataFrame from a CPU task: extra over returning its length",
            extra,
            "ms",
            ("<=", 150.0),
            int_run_s=statistics.median(got["int"]),
        )

        # The same, timed from the task's return in the worker to its record on the
        # driver (both wall clocks of one machine): the frame's making (0.3-0.6 s, with
        # page faults that vary by hundreds of ms) is out of both sides.
        def handed(fn: Callable[[int], Any]) -> float:
            g = ag.Graph()
            g.add("big", functools.partial(fn, mb), kind="cpu")
            gc.collect()
            out = self.clock.runner.run(ag.run(g, cpu_workers=1))
            all_done(out, 1)
            value = out.results["big"]
            returned = value.attrs["returned"] if hasattr(value, "attrs") else value[1]
            return float(out.records["big"].finished - returned)

        hand_over = paired(
            self.pairs,
            {"frame": lambda: handed(stamped_frame), "int": lambda: handed(stamped_len)},
        )
        self.table.add(
            10,
            "cpu.frame_handover",
            f"{mb} MB DataFrame: its return in the worker to its record, extra over an int",
            [(f - i) * 1e3 for f, i in zip(hand_over["frame"], hand_over["int"], strict=True)],
            "ms",
            ("<=", 150.0),
            int_ms=statistics.median(hand_over["int"]) * 1e3,
        )


def _count(n: int) -> Callable[[Any], None]:
    def check(k: Any) -> None:
        assert k == n, f"the runner ran {k} of {n} tasks"

    return check


def _speedup(tasks: int) -> float:
    out = child(["cpu-speedup", str(tasks)])
    return float(out["serial"]) / float(out["seconds"])


# -- children (rows that need a fresh process) -------------------------------------------------


def _env() -> dict[str, str]:
    """The children import the same asyncgraph as this process."""
    root = str(Path(ag.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": root}


def child(argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", *argv],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    if proc.returncode:
        raise RuntimeError(f"child {argv} failed:\n{proc.stdout}\n{proc.stderr}")
    got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return got


def resume_graph(n: int, switch: str, work_ms: float) -> tuple[ag.Graph, int]:
    """Layered n tasks; 1 % (at least one) from the last layer run ``make_work``."""
    import random

    deps = shape_layered(n)
    last = list(deps)[-min(100, n) :]
    failing = set(random.Random(SEED).sample(last, min(max(1, n // 100), len(last))))
    work = make_work(switch, work_ms / 1000)
    g = ag.Graph()
    for name, ds in deps.items():
        g.add(name, work if name in failing else noop, deps=ds)
    return g, len(failing)


def run_child(argv: list[str]) -> None:
    what, *rest = argv
    out: dict[str, Any] = {}

    if what in ("resume-prep", "resume", "plain"):
        n, path, switch, work_ms = int(rest[0]), rest[1], rest[2], float(rest[3])

        async def main() -> None:
            t0 = time.perf_counter()
            g, failed = resume_graph(n, switch, work_ms)
            if what == "resume":
                g = ag.reset_failed(ag.load(g, path))
                out["rerun"] = sum(1 for s in g.status.values() if s is ag.State.PENDING)
                res = await ag.run(g, store=path)
            elif what == "plain":
                res = await ag.run(g)
            else:
                res = await ag.run(g, store=path)
            out["seconds"] = time.perf_counter() - t0
            states = list(res.status.values())
            out["failed"] = states.count(ag.State.FAILED)
            if what == "resume-prep":
                assert out["failed"] == failed, out
            else:
                assert states.count(ag.State.DONE) == n, out

        uvloop.run(main())
    elif what in ("first-cpu", "io50-cpu"):

        async def main() -> None:
            g = ag.Graph()
            if what == "io50-cpu":
                g.add("io", make_sleeper(0.05))
                g.add("cpu", cpu_noop, deps=["io"], kind="cpu")
            else:
                g.add("cpu", cpu_one, kind="cpu")
            t0 = time.perf_counter()
            res = await ag.run(g)
            out["seconds"] = time.perf_counter() - t0
            all_done(res, len(g.status))

        uvloop.run(main())
    elif what == "first-ppe":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        t0 = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as ex:
            assert ex.submit(cpu_one).result() == 1
            out["seconds"] = time.perf_counter() - t0
    elif what == "cpu-speedup":
        tasks = int(rest[0])

        async def main() -> None:
            g = ag.Graph()
            for i in range(tasks):
                g.add(f"c{i}", busy, kind="cpu")
            t0 = time.perf_counter()
            res = await ag.run(g, cpu_workers=2)
            out["seconds"] = time.perf_counter() - t0
            all_done(res, tasks)

        uvloop.run(main())
        t0 = time.perf_counter()
        for _ in range(tasks):
            busy()
        out["serial"] = time.perf_counter() - t0
    else:
        raise SystemExit(f"unknown child {what!r}")
    print(json.dumps(out))


# -- the table ----------------------------------------------------------------------------------

ROWS = {
    1: "row1_build",
    2: "row2_run",
    5: "row5_sleep",
    6: "row6_resume",
    7: "row7_store",
    8: "row8_memory",
    9: "row9_progress",
    10: "row10_cpu",
}


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = parse_rows(args.only)
    bench = Bench(args)
    try:
        warm = shape("layered", 500)  # untimed: imports, code caches
        bench.clock.aio(lambda: ag.run(build_add(warm)), lambda out: all_done(out, 500))
        bench.clock.aio(lambda: run_hand(dict.fromkeys(warm, noop), warm), _count(500))
        for r in sorted(rows):
            if r in (3, 4) and r != min(rows & {3, 4}):
                continue  # one loop measures both
            try:
                if r in (3, 4):
                    bench.row34_build_run(rows)
                else:
                    getattr(bench, ROWS[r])()
            except Exception as exc:  # noqa: BLE001 - one row's failure is that row's note
                traceback.print_exc()
                what = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                bench.table.note(r, f"row{r}.failed", f"row {r}", f"failed: {what}")
    finally:
        bench.close()
    return sorted(bench.table.rows, key=lambda r: int(r["row"]))


def parse_rows(only: str | None) -> set[int]:
    every = set(range(1, 11))
    if not only:
        return every
    try:
        rows = {int(x) for x in only.split(",") if x.strip()}
    except ValueError:
        raise SystemExit(
            f"--only takes row numbers 1-10 separated by commas, not {only!r}"
        ) from None
    if not rows or rows - every:
        raise SystemExit(f"--only: no row {sorted(rows - every) or only!r}; rows are 1-10")
    return rows


def show(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}")
    body = []
    for r in rows:
        rng = (
            "-"
            if r["value"] is None
            else f"{fmt(r['min'], r['unit'])} - {fmt(r['max'], r['unit'])}"
        )
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        figure = (
            r["note"].split(":")[0] + " (below)" if r.get("note") else fmt(r["value"], r["unit"])
        )
        body.append([r["row"], r["measure"], figure, rng, r["target"] or "(info)", met])
    print(grid(["#", "measure", "figure", "min - max", "target", "met?"], body, {1}))
    for r in rows:
        if r.get("note"):
            print(f"row {r['row']}, {r['measure']}: {r['note']}")


# -- several checkouts ------------------------------------------------------------------------


def run_checkouts(args: argparse.Namespace, passthrough: list[str]) -> None:
    specs = []
    for spec in args.checkout:
        name, sep, rest = spec.partition("=")
        if not sep or not rest:
            raise SystemExit(f"--checkout takes NAME=DIR (or NAME=DIR=PYTHON), not {spec!r}")
        tree, _, python = rest.partition("=")
        root = Path(tree).resolve()
        if not (root / "asyncgraph" / "__init__.py").is_file():
            raise SystemExit(f"--checkout {name}: {root} has no asyncgraph/ package")
        if python and not (shutil.which(python) or Path(python).is_file()):
            raise SystemExit(f"--checkout {name}: no Python at {python!r}")
        specs.append((name, root, python or sys.executable))
    names = [s[0] for s in specs]
    if len(set(names)) != len(names):
        raise SystemExit(f"--checkout names must differ: {names}")
    got: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in names}
    machine_info = {}
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.rounds):
            order = specs if i % 2 == 0 else specs[::-1]
            for name, root, python in order:
                out = Path(d) / f"{name}-{i}.json"
                print(f"round {i + 1}/{args.rounds}: {name} ({root})", file=sys.stderr, flush=True)
                cmd = [
                    python,
                    str(HERE),
                    *passthrough,
                    "--json",
                    str(out),
                    "--expect-root",
                    str(root),
                ]
                # Its own table goes to stderr: stdout is for the side-by-side one.
                env = {**os.environ, "PYTHONPATH": str(root)}
                proc = subprocess.run(cmd, env=env, stdout=sys.stderr)
                if proc.returncode not in (0, ROW_FAILED) or not out.exists():
                    raise SystemExit(f"the run on {name} ({root}) failed: exit {proc.returncode}")
                payload = json.loads(out.read_text())
                got[name].append(payload["rows"])
                machine_info[name] = payload.get("machine")
    merged = {name: merge_rounds(rounds) for name, rounds in got.items()}
    keys: list[str] = []
    for rows in merged.values():
        keys += [k for k in rows if k not in keys]
    last = names[-1]
    body = []
    for key in keys:
        found = [merged[name].get(key) for name in names]
        ref = next(r for r in found if r is not None)
        cells = " -> ".join(
            "-"
            if r is None
            else (r["note"].split(":")[0] if r.get("note") else fmt(r["value"], r["unit"]))
            for r in found
        )
        final = merged[last].get(key)
        met = "-" if final is None else {True: "yes", False: "NO", None: "-"}[final["met"]]
        body.append([ref["row"], ref["measure"], cells, ref["target"] or "(info)", met])
    print(
        f"\nIssue 15's ratio table, {' -> '.join(names)} (median of {args.rounds} round(s); "
        f"each figure a median of per-pair ratios in one process)"
    )
    print(grid(["#", "measure", " -> ".join(names), "target", f"met? ({last})"], body, {1}))
    for name in names:
        for r in merged[name].values():
            if r.get("note"):
                print(f"{name}, row {r['row']}, {r['measure']}: {r['note']}")
    for name, root, _python in specs:
        info = machine_info.get(name) or {}
        commit = (info.get("asyncgraph_commit") or "?")[:10]
        dirty = " + uncommitted changes" if info.get("asyncgraph_dirty") else ""
        print(f"{name}: {root} at {commit}{dirty}")
    write_json(
        args.json,
        {
            "benchmark": "speed",
            "checkouts": {
                name: {
                    "dir": str(root),
                    "python": python,
                    "rounds": got[name],
                    "merged": list(merged[name].values()),
                    "machine": machine_info.get(name),
                }
                for name, root, python in specs
            },
        },
    )


def merge_rounds(rounds: list[list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for rows in rounds:
        for r in rows:
            out.setdefault(r["key"], {**r, "rounds": []})["rounds"].append(r["value"])
    for r in out.values():
        vals = [v for v in r["rounds"] if v is not None]
        if vals:
            r["value"] = statistics.median(vals)
            if r["target"]:
                op, t = r["target"].split()
                r["met"] = bool(OPS[op](r["value"], float(t)))
    return out


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=None, help="A/B pairs per row (default 5)")
    p.add_argument("--quick", action="store_true", help="tiny graphs, 1 pair: a smoke run")
    p.add_argument("--only", help="row numbers, e.g. 2,7 (default: all)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--n", type=int, default=None, help="the 10k rows' size (default 10000)")
    p.add_argument("--big", type=int, default=None, help="the 100k rows' size (default 100000)")
    p.add_argument("--sleep-ms", type=float, default=None, help="row 5's sleep (default 10)")
    p.add_argument("--work-ms", type=float, default=5.0, help="row 6's failed tasks' work")
    p.add_argument("--cpu-tasks", type=int, default=None, help="row 10's 20 ms tasks (40)")
    p.add_argument("--calls", type=int, default=None, help="row 10's pipelined calls (2000)")
    p.add_argument("--mb", type=int, default=None, help="row 10's DataFrame size (100)")
    p.add_argument(
        "--checkout",
        action="append",
        metavar="NAME=DIR",
        help="run the table on this checkout (repeat: side by side)",
    )
    p.add_argument("--rounds", type=int, default=1, help="with --checkout: runs per checkout")
    p.add_argument("--expect-root", help=argparse.SUPPRESS)
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        run_child(args.child)
        return
    if args.expect_root:
        got = Path(ag.__file__).resolve().parent.parent
        if got != Path(args.expect_root).resolve():
            raise SystemExit(f"asyncgraph came from {got}, not {args.expect_root}")
    q = args.quick
    defaults = {
        "pairs": (1, 5),
        "n": (300, 10_000),
        "big": (600, 100_000),
        "sleep_ms": (2.0, 10.0),
        "cpu_tasks": (4, 40),
        "calls": (40, 2000),
        "mb": (1, 100),
    }
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    wrong = [
        f"--{name.replace('_', '-')} must be >= {least:g}, not {getattr(args, name):g}"
        for name, least in (("pairs", 1), ("n", 100), ("big", 100), ("calls", 20),
                            ("cpu_tasks", 1), ("mb", 1), ("rounds", 1), ("sleep_ms", 0),
                            ("work_ms", 0))
        if getattr(args, name) < least
    ]  # fmt: skip
    if wrong:
        raise SystemExit("; ".join(wrong))
    parse_rows(args.only)
    if args.checkout:
        passthrough = _strip_checkout(sys.argv[1:])
        run_checkouts(args, passthrough)
        return
    t0 = time.perf_counter()
    rows = measure(args)
    show(
        rows,
        f"Issue 15's ratio table (median of {args.pairs} pair(s) per row, min - max "
        f"of the pairs; n = {args.n}, big = {args.big}; measured on a shared machine)",
    )
    info = machine()
    dirty = " + uncommitted changes" if info.get("asyncgraph_dirty") else ""
    print(
        f"asyncgraph: {info['asyncgraph_path']} at {(info['asyncgraph_commit'] or '?')[:10]}"
        f"{dirty}; load average at the start {_load(info)}"
        f" (total {time.perf_counter() - t0:.0f} s)"
    )
    write_json(args.json, {"benchmark": "speed", "args": vars(args), "rows": rows})
    failed = [r["row"] for r in rows if str(r.get("note", "")).startswith("failed:")]
    if failed:
        print(f"rows that failed (their traceback is above, on stderr): {failed}")
        sys.exit(ROW_FAILED)


def _load(info: dict[str, Any]) -> str:
    load = info.get("loadavg_at_start")
    return "?" if not load else " ".join(f"{x:.1f}" for x in load)


def _strip_checkout(argv: list[str]) -> list[str]:
    """The command line minus --checkout/--rounds/--json (the parent's own)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--checkout", "--rounds", "--json"):
            skip = True
            continue
        if a.startswith(("--checkout=", "--rounds=", "--json=")):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    main()
