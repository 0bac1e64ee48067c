"""Two checkouts of asyncgraph side by side: is B slower than A on any shape?

Usage:  python benchmarks/compare.py A_DIR B_DIR [--pairs 7] [--n 10000] [--json PATH]

A_DIR and B_DIR are source checkouts (their ``asyncgraph/`` is put first on the path;
each may name the Python to use as ``DIR=PYTHON``, e.g. ``../old=../old/.venv/bin/python``).
Every measurement runs in a fresh process, in pairs A B, B A, A B, ... (the order
alternates so a drift in the machine's load hits both alike), and the figure quoted is
the median over the pairs of the per-pair ratio B / A: above 1.0, B is slower.

What is measured, on no-op coroutine tasks that receive their parents' results (the
graph shapes of ``overhead.py``), each in one process:

* ``build <shape>``    - ``g.add`` of every task, then ``validate()``: µs per task;
* ``run <shape>``      - ``await ag.run(g)`` of the built graph on uvloop: µs per task;
* ``store <shape>``    - the same run with a fresh SQLite store (``store=``);
* ``cpu 40x20ms``      - 40 CPU tasks of 20 ms busy work on 2 workers, pool start
  included: wall seconds.

A process measures each of its cases ``--inner`` times (3) and keeps the best, so one
descheduling does not decide a pair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import asyncio, gc, json, os, random, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import uvloop
import asyncgraph as ag
here = os.path.dirname(os.path.dirname(os.path.abspath(ag.__file__)))
assert here == os.path.abspath(sys.argv[1]), ag.__file__
n, inner, cases = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")

async def noop(*a):
    return None

def busy(*a):
    end = time.perf_counter() + 0.02
    while time.perf_counter() < end:
        pass

def shape(name):
    if name == "wide":
        return {f"t{i}": [] for i in range(n)}
    if name == "chain":
        return {f"t{i}": ([f"t{i-1}"] if i else []) for i in range(n)}
    rnd = random.Random(12345); deps = {}; prev = []
    for start in range(0, n, 100):
        cur = [f"t{i}" for i in range(start, min(n, start + 100))]
        for c in cur:
            deps[c] = rnd.sample(prev, rnd.randint(1, min(3, len(prev)))) if prev else []
        prev = cur
    return deps

def build(deps):
    g = ag.Graph()
    for name, ds in deps.items():
        g.add(name, noop, deps=ds)
    g.validate()
    return g

def timed_build(deps):
    gc.collect(); t = time.perf_counter(); build(deps); return (time.perf_counter() - t) / n * 1e6

def timed_run(deps, store):
    g = build(deps)
    async def main():
        with tempfile.TemporaryDirectory() as d:
            s = os.path.join(d, "s.db") if store else None
            gc.collect(); t = time.perf_counter()
            out = await ag.run(g, store=s)
            el = time.perf_counter() - t
        assert all(v is ag.State.DONE for v in out.status.values())
        return el / n * 1e6
    return uvloop.run(main())

def timed_cpu():
    g = ag.Graph()
    for i in range(40):
        g.add(f"c{i}", busy, kind="cpu")
    t = time.perf_counter()
    out = ag.run_sync(g, cpu_workers=2)
    el = time.perf_counter() - t
    assert all(v is ag.State.DONE for v in out.status.values())
    return el

out = {}
for case in cases:
    what, _, sh = case.partition(" ")
    best = None
    for _ in range(inner):
        if what == "build":
            v = timed_build(shape(sh))
        elif what == "run":
            v = timed_run(shape(sh), False)
        elif what == "store":
            v = timed_run(shape(sh), True)
        else:
            v = timed_cpu()
        best = v if best is None else min(best, v)
    out[case] = best
print(json.dumps(out))
"""

CASES = [
    "build wide",
    "build layered",
    "run wide",
    "run chain",
    "run layered",
    "store layered",
    "cpu 40x20ms",
]


def measure(tree: str, python: str, n: int, inner: int, cases: list[str]) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CHILD)
    try:
        res = subprocess.run(
            [python, f.name, tree, str(n), str(inner), ",".join(cases)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": tree},
        )
    finally:
        os.unlink(f.name)
    values: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return values


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--inner", type=int, default=3)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    trees = []
    for spec in (args.a, args.b):
        tree, _, python = spec.partition("=")
        trees.append((str(Path(tree).resolve()), python or sys.executable))
    cases = args.cases.split(",")
    ratios: dict[str, list[float]] = {c: [] for c in cases}
    values: dict[str, tuple[list[float], list[float]]] = {c: ([], []) for c in cases}
    for i in range(args.pairs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        got: dict[int, dict[str, float]] = {}
        for k in order:
            got[k] = measure(*trees[k], args.n, args.inner, cases)
        for c in cases:
            values[c][0].append(got[0][c])
            values[c][1].append(got[1][c])
            ratios[c].append(got[1][c] / got[0][c])
        print(f"pair {i + 1}/{args.pairs} done", file=sys.stderr, flush=True)
    unit = {"cpu": "s"}
    print(f"{'case':<16} {'A':>10} {'B':>10} {'B/A (median of pairs)':>24}")
    report = {}
    for c in cases:
        a, b = statistics.median(values[c][0]), statistics.median(values[c][1])
        r = statistics.median(ratios[c])
        u = unit.get(c.split()[0], "us/task")
        print(f"{c:<16} {a:>8.3f}{u[:2]:>2} {b:>8.3f}{u[:2]:>2} {r:>24.3f}")
        report[c] = {"a": a, "b": b, "ratio": r, "ratios": ratios[c], "unit": u}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
