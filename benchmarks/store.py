"""What the durable store costs: a 10k no-op task graph with and without a store, and
the time to resume a 10k-task graph of which 1 % failed.

**overhead** - every task is ``async def noop(*a): return None``, so the run is nothing
but scheduling and whatever the store adds shows at its largest. Shapes wide, chain and
layered (as in overhead.py). Two runners on the same graph, on uvloop, interleaved within
each repetition so background load hits both alike:

* plain - ``await ag.run(g)``;
* store - ``await ag.run(g, store=PATH)`` on a fresh file each time (so nothing is
  reused: every task runs and is recorded).

Only the ``ag.run`` await is timed (inside the coroutine, as in overhead.py), wall and
process CPU time (the latter includes the store's writer thread). The store run's time
is split with timers wrapped around the store's own steps (each called once per run,
so the timers cost nothing measurable):

* fingerprint - ``_fingerprint.digests`` (every task's fingerprint);
* load        - the rest of ``_store.resume.for_run``: reading the stored state
  (``SQLiteStore.tasks``) and comparing it with the graph;
* start       - ``StoreSink.open``: loading the stored results pending tasks need,
  recording the run's start;
* flush       - ``StoreSink.close`` (the writer commits what is still queued, then the
  run's end is recorded) and ``SQLiteStore.close`` (SQLite folds its WAL back);
* run         - everything else: opening and locking the store, the scheduler's set-up
  and the run itself, with the writer thread committing batches alongside.

The writer thread's busy time (``SQLiteStore.write``) and its number of batches are
reported too; it overlaps the run. Afterwards one more store run (layered) is profiled
with cProfile, on the loop's thread and on the writer's thread separately (each
thread's CPU time), and the top functions by own time are printed, so we know where
the store's time goes.

Target: store / plain <= 1.5.

**resume** - a layered graph of N tasks (10k) in which 1 % of the tasks, drawn from the
last layer (so no task downstream of them is skipped: the resume reruns exactly those),
fail while a switch file exists, and otherwise sleep ``--work-ms`` (5 ms) as their own
work. The switch is a file, not a variable, because a task's closure and globals are
part of its fingerprint: the failing tasks must be the same code in both runs. Each
repetition:

1. builds the graph and runs it on a fresh store with the switch on (1 % fail);
2. removes the switch, builds the graph again from scratch (new Graph, new functions,
   as a new process would) and times ``await ag.run(g, store=PATH)``, which reuses the
   99 % done and reruns the 1 %. Twice, on two copies of the store from step 1:
   *concurrent* (default options: the failed tasks all sleep at once) and *sequential*
   (``max_io=1``: they sleep one after another, so their own work is their total work).

The resume's time is split as above (load = reading state + fingerprints). The failed
tasks' own work is ``--work-ms`` at full concurrency and ``failed x --work-ms`` in
sequence; the figure of merit is resume / own work in each mode (target: dominated by
the failed tasks' own work, not by loading). Also reported: the store file's size
after the first run and after the resume.

Each figure is the median of N repetitions (5, or 2 with --quick); ``gc.collect()``
before each timed run. --quick also shrinks the graphs to 2000 tasks.

**process** (issue 15) - the resume above as a user's next process pays it: a fresh
interpreter builds the graph and runs it on a copy of the store with 1 % failed (load,
reset, rerun), against a fresh interpreter that builds the same graph and runs all of
it without a store; each timed after its imports, in pairs of alternating order, the
figure the median of the per-pair ratios resume / plain (target <= 0.3).

**fanout** (issue 13) - ``plan`` + a rerun of 1 failed element of a family of N (10k) on
a store, in a fresh interpreter (pandas imported before ``plan``), in seconds (target
<= 1 s).

``--against DIR`` runs every child of process/fanout with DIR's asyncgraph too (a before
tree), alternating, so one command gives before and after.

Usage:  python benchmarks/store.py [--quick] [--json PATH] [--sizes 10000] [--dir DIR]
                                   [--only overhead|resume|process|fanout] [--against DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import io
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvloop
from _common import median, table, write_json  # first: it may put the repo on sys.path
from overhead import LAYER, SEED, SHAPES, build_asyncgraph, shape_layered

import asyncgraph as ag
from asyncgraph import _store
from asyncgraph._store import resume as _resume
from asyncgraph._store import session as _session

# -- timers around the store's steps ------------------------------------------------------

#: (owner, attribute, key, is_async): each is called once per run, except write (once
#: per batch, on the writer thread).
_STEPS = [
    (_resume, "digests", "fingerprint", False),
    (_resume, "for_run", "for_run", False),
    (_store.SQLiteStore, "tasks", "read_state", False),
    (_session.StoreSink, "open", "start", True),
    (_session.StoreSink, "close", "finish", True),
    (_store.SQLiteStore, "close", "close", False),
    (_store.SQLiteStore, "write", "writer_busy", False),
]


class Split:
    """Seconds spent in each wrapped step during one run, and calls of each."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, key: str, dt: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + dt
        self.calls[key] = self.calls.get(key, 0) + 1

    def parts(self, total: float) -> dict[str, float]:
        s = self.seconds.get
        fingerprint = s("fingerprint", 0.0)
        load = s("for_run", 0.0) - fingerprint
        start = s("start", 0.0)
        flush = s("finish", 0.0) + s("close", 0.0)
        return {
            "fingerprint": fingerprint,
            "load": load,
            "read_state": s("read_state", 0.0),
            "start": start,
            "run": total - fingerprint - load - start - flush,
            "flush": flush,
            "writer_busy": s("writer_busy", 0.0),
            "batches": float(self.calls.get("writer_busy", 0)),
        }


@contextlib.contextmanager
def timers(split: Split) -> Iterator[None]:
    saved = []
    for owner, attr, key, is_async in _STEPS:
        fn = owner.__dict__[attr]
        saved.append((owner, attr, fn))
        setattr(owner, attr, _timed_async(fn, key, split) if is_async else _timed(fn, key, split))
    try:
        yield
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)


def _timed(fn: Callable[..., Any], key: str, split: Split) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            split.add(key, time.perf_counter() - t0)

    return wrapper


def _timed_async(fn: Callable[..., Any], key: str, split: Split) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await fn(*a, **k)
        finally:
            split.add(key, time.perf_counter() - t0)

    return wrapper


# -- store files ----------------------------------------------------------------------------


class Files:
    """Fresh store paths in one directory, removed with their -wal/-shm/-lock files."""

    def __init__(self, where: str | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agstore-", dir=where))
        self.count = 0

    def fresh(self) -> Path:
        self.count += 1
        return self.dir / f"s{self.count}.db"

    @staticmethod
    def remove(path: Path) -> None:
        for suffix in ("", "-wal", "-shm", "-lock", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def size_of(path: Path) -> int:
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


# -- timing one run ---------------------------------------------------------------------------


async def _timed_run(g: ag.Graph, options: dict[str, Any], box: list[Any]) -> tuple[float, float]:
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    box.append(await ag.run(g, **options))
    return time.perf_counter() - t0, time.process_time() - c0


def count(out: ag.Graph, state: ag.State) -> int:
    return sum(1 for s in out.status.values() if s is state)


# -- overhead ---------------------------------------------------------------------------------


def bench_overhead(
    runner: asyncio.Runner, files: Files, shapes: list[str], n: int, reps: int
) -> list[dict[str, Any]]:
    rows = []
    for shape in shapes:
        g = build_asyncgraph(SHAPES[shape](n))
        wall: dict[str, list[float]] = {"plain": [], "store": []}
        cpu: dict[str, list[float]] = {"plain": [], "store": []}
        parts: list[dict[str, float]] = []
        sizes: list[int] = []
        for _ in range(reps):  # interleaved: background load hits both alike
            box: list[Any] = []
            dt, ct = runner.run(_timed_run(g, {}, box))
            assert count(box[0], ag.State.DONE) == n, "the plain run did not run every task"
            wall["plain"].append(dt)
            cpu["plain"].append(ct)
            path = files.fresh()
            split = Split()
            with timers(split):
                dt, ct = runner.run(_timed_run(g, {"store": path}, box))
            assert count(box[1], ag.State.DONE) == n, "the store run did not run every task"
            wall["store"].append(dt)
            cpu["store"].append(ct)
            parts.append(split.parts(dt))
            sizes.append(size_of(path))
            files.remove(path)
        med = {k: median(v) for k, v in wall.items()}
        row = {
            "shape": shape,
            "n": n,
            "reps": reps,
            "raw_s": wall,
            "raw_cpu_s": cpu,
            "us_per_task": {k: v / n * 1e6 for k, v in med.items()},
            "cpu_us_per_task": {k: median(v) / n * 1e6 for k, v in cpu.items()},
            "ratio": med["store"] / med["plain"],
            "ratio_range": _range(
                [s / p for s, p in zip(wall["store"], wall["plain"], strict=True)]
            ),
            "cpu_ratio": median(cpu["store"]) / median(cpu["plain"]),
            "split_s": {k: median([p[k] for p in parts]) for k in parts[0]},
            "raw_split_s": parts,
            "store_bytes": median([float(s) for s in sizes]),
        }
        rows.append(row)
        print(
            f"  {shape:7} n={n}: plain {row['us_per_task']['plain']:.1f} store "
            f"{row['us_per_task']['store']:.1f} us/task, store/plain {row['ratio']:.2f}",
            file=sys.stderr,
            flush=True,
        )
    return rows


def _range(xs: list[float]) -> list[float]:
    return [min(xs), max(xs)]


def profile_store_run(
    runner: asyncio.Runner, files: Files, shape: str, n: int, top: int
) -> dict[str, Any]:
    """cProfile one store run: the loop's thread and the writer's thread apart."""
    g = build_asyncgraph(SHAPES[shape](n))
    path = files.fresh()
    # Each thread's CPU time, so the loop's idle waits (for the writer's last commit)
    # do not show up as the own time of whatever awaited them.
    loop_prof = cProfile.Profile(time.thread_time)
    writer_prof = cProfile.Profile(time.thread_time)
    write = _store.SQLiteStore.write

    def profiled_write(self: Any, run_id: int, rows: Any) -> None:
        writer_prof.enable()  # per thread: this profiles the writer's thread only
        try:
            write(self, run_id, rows)
        finally:
            writer_prof.disable()

    _store.SQLiteStore.write = profiled_write  # type: ignore[method-assign]
    try:
        wall = runner.run(_profiled_run(g, path, loop_prof))
    finally:
        _store.SQLiteStore.write = write  # type: ignore[method-assign]
        files.remove(path)
    return {
        "shape": shape,
        "n": n,
        "wall_s_profiled": wall,
        "loop_thread": _top(loop_prof, top),
        "writer_thread": _top(writer_prof, top),
    }


async def _profiled_run(g: ag.Graph, path: Path, prof: cProfile.Profile) -> float:
    # Inside the coroutine, as the timings: on Python 3.11 asyncio.Runner.run formats
    # the main task, hence Graph.__repr__ of the result, which is not the store's cost.
    gc.collect()
    prof.enable()
    t0 = time.perf_counter()
    await ag.run(g, store=path)
    wall = time.perf_counter() - t0
    prof.disable()
    return wall


def _top(prof: cProfile.Profile, top: int) -> dict[str, Any]:
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = []
    for (file, line, fn), (_cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(file).name}:{line}({fn})" if line else fn
        entries.append(
            {
                "function": where,
                "calls": nc,
                "tottime_s": tt,
                "cumtime_s": ct,
                "share": tt / total if total else 0.0,
            }
        )
    entries.sort(key=lambda e: -e["tottime_s"])
    return {"total_s": total, "top": entries[:top]}


# -- resume -----------------------------------------------------------------------------------


def make_work(switch: str, seconds: float) -> Callable[..., Any]:
    """A failing-or-working task: fails while ``switch`` exists, else sleeps ``seconds``.

    The switch path and the duration are in the closure, so they are part of the
    fingerprint: both runs must (and do) use the same ones.
    """

    async def work(*deps: Any) -> str:
        if os.path.exists(switch):  # noqa: ASYNC240 - one stat, as cheap as it gets
            raise RuntimeError("switched off for the benchmark")
        await asyncio.sleep(seconds)
        return "ok"

    return work


async def noop(*a: Any) -> None:
    return None


def failing_names(n: int, deps: dict[str, list[str]]) -> list[str]:
    """1 % of the tasks (at least one), drawn from the last layer: nothing downstream."""
    last = list(deps)[-min(LAYER, n) :]
    k = max(1, n // 100)
    return sorted(random.Random(SEED).sample(last, min(k, len(last))))


def build_resume_graph(n: int, switch: str, seconds: float) -> tuple[ag.Graph, list[str]]:
    """From scratch each time, as a new process would: new Graph, new functions."""
    deps = shape_layered(n)
    failing = set(failing_names(n, deps))
    work = make_work(switch, seconds)
    g = ag.Graph()
    for name, ds in deps.items():
        g.add(name, work if name in failing else noop, deps=ds)
    g.validate()
    return g, sorted(failing)


MODES: dict[str, dict[str, Any]] = {"concurrent": {}, "sequential": {"max_io": 1}}


def bench_resume(
    runner: asyncio.Runner, files: Files, n: int, reps: int, work_ms: float
) -> list[dict[str, Any]]:
    seconds = work_ms / 1000
    switch = files.dir / "switch"
    first: list[float] = []
    sizes_first: list[int] = []
    per_mode: dict[str, dict[str, list[Any]]] = {
        m: {"wall": [], "parts": [], "sizes": []} for m in MODES
    }
    failed = 0
    for _ in range(reps):
        switch.touch()
        g, failing = build_resume_graph(n, str(switch), seconds)
        failed = len(failing)
        path = files.fresh()
        box: list[Any] = []
        dt, _ = runner.run(_timed_run(g, {"store": path}, box))
        assert count(box[0], ag.State.FAILED) == failed, "the first run did not fail 1 %"
        assert count(box[0], ag.State.DONE) == n - failed
        first.append(dt)
        sizes_first.append(size_of(path))
        switch.unlink()
        copies = {}
        for mode in MODES:
            copies[mode] = files.fresh()
            shutil.copyfile(path, copies[mode])
        files.remove(path)
        for mode, options in MODES.items():
            g2, _ = build_resume_graph(n, str(switch), seconds)
            split = Split()
            box = []
            with timers(split):
                dt, _ = runner.run(_timed_run(g2, {"store": copies[mode], **options}, box))
            assert count(box[0], ag.State.DONE) == n, "the resume did not finish the graph"
            per_mode[mode]["wall"].append(dt)
            per_mode[mode]["parts"].append(split.parts(dt))
            per_mode[mode]["sizes"].append(size_of(copies[mode]))
            files.remove(copies[mode])
    rows = []
    for mode, got in per_mode.items():
        own = seconds if mode == "concurrent" else failed * seconds
        wall = got["wall"]
        parts = got["parts"]
        split = {k: median([p[k] for p in parts]) for k in parts[0]}
        rows.append(
            {
                "mode": mode,
                "n": n,
                "failed": failed,
                "work_ms": work_ms,
                "reps": reps,
                "first_run_s": median(first),
                "resume_s": median(wall),
                "resume_range_s": _range(wall),
                "raw_resume_s": wall,
                "own_work_s": own,
                "total_work_s": failed * seconds,
                "resume_over_own_work": median(wall) / own,
                "resume_over_total_work": median(wall) / (failed * seconds),
                "split_s": split,
                "raw_split_s": parts,
                # What is not the failed tasks' own work: everything but the run's own
                # span, plus the run's span beyond the work itself.
                "not_own_work_s": median(wall) - own,
                "store_bytes_first": median([float(s) for s in sizes_first]),
                "store_bytes_after_resume": median([float(s) for s in got["sizes"]]),
            }
        )
        print(
            f"  resume {mode:10} n={n}: {median(wall):.3f} s, own work {own:.3f} s, "
            f"load {split['fingerprint'] + split['load']:.3f} s",
            file=sys.stderr,
            flush=True,
        )
    return rows


# -- in new processes: resume x plain, and fan-out's plan + rerun (issues 15, 13) ------------
#
# Each figure here is timed inside a fresh interpreter (``--child``), after its imports,
# as a user's next process would do it; the parent alternates the two sides of each
# pair (A B, B A, ...) and quotes the median of the per-pair ratios with min-max. With
# ``--against DIR`` every child runs once with this checkout's asyncgraph and once with
# DIR's (a before tree), so the same command gives the before/after ratio too.


def _child(argv: list[str]) -> None:
    """One measurement in this (fresh) process; prints its seconds as JSON."""
    import json

    if argv[0] == "resume-prepare":  # resume-prepare STORE N WORK_MS SWITCH: 1 % failed
        store_path, n, work_ms, switch = argv[1], int(argv[2]), float(argv[3]), argv[4]
        g, failing = build_resume_graph(n, switch, work_ms / 1000)
        out = asyncio.run(ag.run(g, store=store_path))
        assert count(out, ag.State.FAILED) == len(failing)
        print(json.dumps({}))
        return
    if argv[0] == "fanout-prepare":  # fanout-prepare STORE N FLAG: the failed family
        store_path, n, flag = argv[1], int(argv[2]), Path(argv[3])
        out = ag.run_sync(fanout_graph(n, flag), store=store_path)
        assert out.status["t[0]"] is ag.State.FAILED
        print(json.dumps({}))
        return
    if argv[0] == "overhead":  # overhead SHAPE N REPS: bench_overhead here, in one process
        shape, n, reps = argv[1], int(argv[2]), int(argv[3])
        files = Files(None)
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        try:
            _warm(runner, files)
            (row,) = bench_overhead(runner, files, [shape], n, reps)
        finally:
            runner.close()
            files.close()
        keep = ("ratio", "ratio_range", "cpu_ratio", "us_per_task", "split_s", "store_bytes")
        print(json.dumps({k: row[k] for k in keep}))
        return
    kind, store_path, n, work_ms, flag = argv[0], argv[1], int(argv[2]), float(argv[3]), argv[4]
    out: dict[str, float] = {}
    if kind in ("resume", "plain"):
        t0 = time.perf_counter()
        g, _ = build_resume_graph(n, flag, work_ms / 1000)  # flag: a switch that is off
        t1 = time.perf_counter()
        options = {"store": store_path} if kind == "resume" else {}
        result = asyncio.run(ag.run(g, **options))
        t2 = time.perf_counter()
        assert count(result, ag.State.DONE) == n, f"{kind}: not every task is done"
        out = {"build": t1 - t0, "run": t2 - t1, "total": t2 - t0}
    elif kind == "fanout":
        import pandas  # noqa: F401 - imported first: plan's own time, not pandas's import

        t0 = time.perf_counter()
        plan = ag.plan(fanout_graph(n, Path(flag)), store_path)
        t1 = time.perf_counter()
        result = ag.run_sync(fanout_graph(n, Path(flag)), store=store_path)
        t2 = time.perf_counter()
        assert int((plan["action"] == "run").sum()) == 2, "plan: not 1 element and its family"
        assert result.status["t"] is ag.State.DONE
        out = {"plan": t1 - t0, "rerun": t2 - t1, "total": t2 - t0}
    print(json.dumps(out))


def fanout_graph(n: int, flag: Path) -> ag.Graph:
    """items -> t over items (n elements); element 0 fails while ``flag`` exists."""

    async def work(i: int) -> int:
        if i == 0 and flag.exists():  # noqa: ASYNC240 - one stat
            raise ValueError("the first element fails")
        return i

    g = ag.Graph()
    g.add("items", functools.partial(list, range(n)), deps=[])
    g.add("t", work, deps=["items"], over="items")
    return g


def _spawn(tree: str | None, argv: list[str]) -> dict[str, float]:
    import json
    import subprocess

    env = dict(os.environ)
    if tree is not None:  # that checkout's asyncgraph first on the path
        env["PYTHONPATH"] = os.pathsep.join([tree, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *argv],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {argv[0]} failed:\n{proc.stdout}{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_overhead_against(
    shapes: list[str], n: int, pairs: int, reps: int, against: str
) -> list[dict[str, Any]]:
    """The overhead on this tree and on ``against``, each in fresh processes taken in
    turns (A B, B A, ...): each child measures plain and store runs side by side
    (``reps`` of each, interleaved) and gives its median ratio; the figures are the
    medians over the children, and after / before of the store run's us per task per
    pair of children."""
    rows = []
    trees = _trees(against)
    for shape in shapes:
        got: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
        for p in range(pairs):
            for label, tree in trees if p % 2 == 0 else trees[::-1]:
                got[label].append(_spawn(tree, ["overhead", shape, str(n), str(reps)]))
        this, before = got["this"], got["against"]
        per_pair = [
            a["us_per_task"]["store"] / b["us_per_task"]["store"]
            for a, b in zip(this, before, strict=True)
        ]
        for label, children in got.items():
            ratios = [c["ratio"] for c in children]
            row = {
                "shape": shape,
                "tree": label,
                "n": n,
                "reps": f"{pairs}x{reps}",
                "ratio": median(ratios),
                "ratio_range": _range(ratios),
                "cpu_ratio": median([c["cpu_ratio"] for c in children]),
                "us_per_task": {
                    k: median([c["us_per_task"][k] for c in children]) for k in ("plain", "store")
                },
                "split_s": {
                    k: median([c["split_s"][k] for c in children]) for k in children[0]["split_s"]
                },
                "store_bytes": median([c["store_bytes"] for c in children]),
                "store_after_over_before": median(per_pair),
                "store_after_over_before_range": _range(per_pair),
            }
            rows.append(row)
            print(
                f"  {shape:7} ({label}) n={n}: store/plain {row['ratio']:.2f}",
                file=sys.stderr,
                flush=True,
            )
    return rows


def _warm(runner: asyncio.Runner, files: Files) -> None:
    """Untimed: imports, code caches, a first store."""
    warm = build_asyncgraph(SHAPES["wide"](500))
    runner.run(ag.run(warm))
    path = files.fresh()
    runner.run(ag.run(warm, store=path))
    files.remove(path)


def _trees(against: str | None) -> list[tuple[str, str | None]]:
    here = str(Path(__file__).resolve().parent.parent)
    return [("this", here)] + ([("against", str(Path(against).resolve()))] if against else [])


def bench_process_resume(
    files: Files, n: int, pairs: int, work_ms: float, against: str | None
) -> list[dict[str, Any]]:
    """Resume of n tasks with 1 % failed in a new process x a plain run of all n in a
    new process (each: build + run; the resume's run loads, resets and reruns)."""
    switch = files.dir / "switch"
    switch.touch()
    trees = _trees(against)
    # Each tree writes its own store (two trees may write different schema versions).
    firsts: dict[str, str] = {}
    for label, tree in trees:
        firsts[label] = str(files.fresh())
        _spawn(tree, ["resume-prepare", firsts[label], str(n), str(work_ms), str(switch)])
    switch.unlink()
    got: dict[str, dict[str, list[dict[str, float]]]] = {
        label: {"resume": [], "plain": []} for label, _ in trees
    }
    # Pair by pair, both trees (in alternating order), so that a change of the
    # machine's load moves both sides of every comparison alike.
    for p in range(pairs):
        for label, tree in trees if p % 2 == 0 else trees[::-1]:
            copy = files.fresh()
            first = firsts[label]
            for suffix in ("", "-wal"):
                if os.path.exists(f"{first}{suffix}"):
                    shutil.copyfile(f"{first}{suffix}", f"{copy}{suffix}")
            for kind in ("resume", "plain") if p % 2 == 0 else ("plain", "resume"):
                argv = [kind, str(copy), str(n), str(work_ms), str(switch)]
                got[label][kind].append(_spawn(tree, argv))
            files.remove(copy)
    rows = []
    for label, _ in trees:
        resumes, plains = got[label]["resume"], got[label]["plain"]
        ratios = [r["total"] / q["total"] for r, q in zip(resumes, plains, strict=True)]
        row = {
            "tree": label,
            "n": n,
            "failed": len(failing_names(n, shape_layered(n))),
            "pairs": pairs,
            "ratio": median(ratios),
            "ratio_range": _range(ratios),
            "resume_s": median([r["total"] for r in resumes]),
            "resume_build_s": median([r["build"] for r in resumes]),
            "resume_run_s": median([r["run"] for r in resumes]),
            "plain_s": median([r["total"] for r in plains]),
            "plain_build_s": median([r["build"] for r in plains]),
            "plain_run_s": median([r["run"] for r in plains]),
            "raw_ratios": ratios,
        }
        if against and label == "this":
            other = got["against"]["resume"]
            row["resume_this_over_against"] = median(
                [a["total"] / b["total"] for a, b in zip(resumes, other, strict=True)]
            )
        rows.append(row)
        print(
            f"  process resume ({label}) n={n}: resume/plain {row['ratio']:.2f}",
            file=sys.stderr,
            flush=True,
        )
    for path in firsts.values():
        files.remove(Path(path))
    return rows


def bench_fanout_rerun(
    files: Files, n: int, reps: int, against: str | None
) -> list[dict[str, Any]]:
    """plan + rerun of 1 failed element of n on a store, in a new process each time."""
    flag = files.dir / "fanout-fail"
    flag.touch()
    trees = _trees(against)
    # Each tree writes its own store (two trees may write different schema versions).
    first: dict[str, str] = {}
    for label, tree in trees:
        first[label] = str(files.fresh())
        _spawn(tree, ["fanout-prepare", first[label], str(n), str(flag)])
    flag.unlink()
    per: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
    for r in range(reps):
        for label, tree in trees if r % 2 == 0 else trees[::-1]:
            copy = files.fresh()
            for suffix in ("", "-wal"):
                if os.path.exists(f"{first[label]}{suffix}"):
                    shutil.copyfile(f"{first[label]}{suffix}", f"{copy}{suffix}")
            per[label].append(_spawn(tree, ["fanout", str(copy), str(n), "0", str(flag)]))
            files.remove(copy)
    for path in first.values():
        files.remove(Path(path))
    rows = []
    for label, got in per.items():
        row = {
            "tree": label,
            "n": n,
            "reps": reps,
            "plan_s": median([g["plan"] for g in got]),
            "rerun_s": median([g["rerun"] for g in got]),
            "total_s": median([g["total"] for g in got]),
            "total_range_s": _range([g["total"] for g in got]),
            "raw": got,
        }
        if against and label == "this":
            this, other = got, per["against"]
            row["this_over_against"] = median(
                [a["total"] / b["total"] for a, b in zip(this, other, strict=True)]
            )
        rows.append(row)
        print(
            f"  fan-out plan + rerun ({label}) n={n}: {row['total_s']:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    return rows


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2 repetitions, 2000 tasks (~15 s)")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--sizes", default=None, help="task counts (default 10000; --quick 2000)")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--work-ms", type=float, default=5.0, help="each failed task's own work")
    p.add_argument("--dir", default=None, help="where the store files go (default: tmp)")
    p.add_argument("--top", type=int, default=15, help="functions shown per profile")
    p.add_argument(
        "--only",
        default=None,
        help="one figure or several, comma-separated: overhead, resume, process, fanout",
    )
    p.add_argument(
        "--against",
        metavar="DIR",
        help="also run with DIR's asyncgraph (a before tree): process/fanout children "
        "alternate, overhead runs in fresh processes of each tree in turns",
    )
    p.add_argument("--pairs", type=int, default=None, help="process: pairs (default reps)")
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    args = p.parse_args()
    figures = {"overhead", "resume", "process", "fanout"}
    only = figures if args.only is None else set(args.only.split(","))
    if not only <= figures:
        p.error(f"--only: unknown {sorted(only - figures)}; choose among {sorted(figures)}")
    reps = args.reps or (2 if args.quick else 5)
    sizes = [int(s) for s in (args.sizes or ("2000" if args.quick else "10000")).split(",")]
    shapes = args.shapes.split(",")
    files = Files(args.dir)
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    t_start = time.perf_counter()
    overhead_rows: list[dict[str, Any]] = []
    resume_rows: list[dict[str, Any]] = []
    process_rows: list[dict[str, Any]] = []
    fanout_rows: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    try:
        _warm(runner, files)
        for n in sizes:
            if "overhead" in only and args.against:
                pairs = args.pairs or reps
                overhead_rows += bench_overhead_against(shapes, n, pairs, 3, args.against)
            elif "overhead" in only:
                overhead_rows += bench_overhead(runner, files, shapes, n, reps)
            if "resume" in only:
                resume_rows += bench_resume(runner, files, n, reps, args.work_ms)
            if "process" in only:
                pairs = args.pairs or reps
                process_rows += bench_process_resume(files, n, pairs, args.work_ms, args.against)
            if "fanout" in only:
                fanout_rows += bench_fanout_rerun(files, n, reps, args.against)
        if "overhead" in only and not args.against:
            profile = profile_store_run(runner, files, "layered", max(sizes), args.top)
    finally:
        runner.close()
        files.close()

    if overhead_rows:
        print(f"\nStore overhead on no-op tasks (median of {reps}; us = microseconds)")
        print(
            table(
                [
                    "shape",
                    "tree",
                    "tasks",
                    "plain us",
                    "store us",
                    "store/plain",
                    "range",
                    "cpu ratio",
                    "fingerprint ms",
                    "load ms",
                    "start ms",
                    "run ms",
                    "flush ms",
                    "writer busy ms",
                    "batches",
                    "file MB",
                ],
                [
                    [
                        r["shape"],
                        r.get("tree", "this"),
                        r["n"],
                        r["us_per_task"]["plain"],
                        r["us_per_task"]["store"],
                        r["ratio"],
                        "{:.2f}-{:.2f}".format(*r["ratio_range"]),
                        r["cpu_ratio"],
                        *(
                            r["split_s"][k] * 1e3
                            for k in ("fingerprint", "load", "start", "run", "flush", "writer_busy")
                        ),
                        r["split_s"]["batches"],
                        r["store_bytes"] / 1e6,
                    ]
                    for r in overhead_rows
                ],
            )
        )
        for r in overhead_rows:
            if r.get("tree") == "this" and "store_after_over_before" in r:
                lo, hi = r["store_after_over_before_range"]
                print(
                    f"{r['shape']}: store run us/task, this / against: "
                    f"{r['store_after_over_before']:.2f} ({lo:.2f}-{hi:.2f}), per pair of children"
                )
        print("\ntarget: store/plain <= 1.3 (issue 15; 1.5 before it)")
    if profile is not None:
        for thread in ("loop_thread", "writer_thread"):
            prof = profile[thread]
            print(
                f"\nProfile of one store run ({profile['shape']}, {profile['n']} tasks), "
                f"{thread.replace('_', ' ')}: {prof['total_s']:.3f} s of own time in all"
            )
            print(
                table(
                    ["function", "calls", "own s", "share", "cum s"],
                    [
                        [
                            e["function"],
                            e["calls"],
                            e["tottime_s"],
                            f"{e['share']:.1%}",
                            e["cumtime_s"],
                        ]
                        for e in prof["top"]
                    ],
                )
            )
    if resume_rows:
        print(
            f"\nResume with 1 % failed (median of {reps}; s = seconds; each failed task "
            f"works {args.work_ms:g} ms)"
        )
        print(
            table(
                [
                    "mode",
                    "tasks",
                    "failed",
                    "first run s",
                    "resume s",
                    "range s",
                    "own work s",
                    "resume/own",
                    "fingerprint s",
                    "load s",
                    "start s",
                    "run s",
                    "flush s",
                    "file MB",
                    "after MB",
                ],
                [
                    [
                        r["mode"],
                        r["n"],
                        r["failed"],
                        r["first_run_s"],
                        r["resume_s"],
                        "{:.3f}-{:.3f}".format(*r["resume_range_s"]),
                        r["own_work_s"],
                        r["resume_over_own_work"],
                        *(
                            r["split_s"][k]
                            for k in ("fingerprint", "load", "start", "run", "flush")
                        ),
                        r["store_bytes_first"] / 1e6,
                        r["store_bytes_after_resume"] / 1e6,
                    ]
                    for r in resume_rows
                ],
            )
        )
        print("\ntarget: the resume is dominated by the failed tasks' own work, not by loading")
    if process_rows:
        print(
            "\nResume with 1 % failed in a new process (build + load + reset + run) x a plain "
            "run of all tasks in a new process (build + run); median of per-pair ratios"
        )
        print(
            table(
                [
                    "tree",
                    "tasks",
                    "failed",
                    "pairs",
                    "resume/plain",
                    "range",
                    "resume s",
                    "build s",
                    "run s",
                    "plain s",
                    "build s",
                    "run s",
                    "resume this/against",
                ],
                [
                    [
                        r["tree"],
                        r["n"],
                        r["failed"],
                        r["pairs"],
                        r["ratio"],
                        "{:.2f}-{:.2f}".format(*r["ratio_range"]),
                        r["resume_s"],
                        r["resume_build_s"],
                        r["resume_run_s"],
                        r["plain_s"],
                        r["plain_build_s"],
                        r["plain_run_s"],
                        r.get("resume_this_over_against", ""),
                    ]
                    for r in process_rows
                ],
            )
        )
        print("\ntarget: resume/plain <= 0.3")
    if fanout_rows:
        print(
            "\nFan-out: plan + rerun of 1 failed element on a store, in a new process "
            "(pandas imported before plan; seconds, median)"
        )
        print(
            table(
                [
                    "tree",
                    "elements",
                    "reps",
                    "plan s",
                    "rerun s",
                    "plan+rerun s",
                    "range s",
                    "this/against",
                ],
                [
                    [
                        r["tree"],
                        r["n"],
                        r["reps"],
                        r["plan_s"],
                        r["rerun_s"],
                        r["total_s"],
                        "{:.2f}-{:.2f}".format(*r["total_range_s"]),
                        r.get("this_over_against", ""),
                    ]
                    for r in fanout_rows
                ],
            )
        )
        print("\ntarget: plan + rerun <= 1 s")
    print(f"(total {time.perf_counter() - t_start:.0f} s)")
    write_json(
        args.json,
        {
            "benchmark": "store",
            "reps": reps,
            "overhead": overhead_rows,
            "profile": profile,
            "resume": resume_rows,
            "process_resume": process_rows,
            "fanout_rerun": fanout_rows,
        },
    )


if __name__ == "__main__":
    main()
