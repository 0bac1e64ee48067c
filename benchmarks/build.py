"""Building a graph: asyncgraph's three forms against graphlib, and fan-out's expansion.

Usage:  python benchmarks/build.py [--sizes 10000 100000] [--pairs 5] [--json PATH]

Every task is a no-op coroutine that receives its parents' results; the shapes are
``overhead.py``'s (*wide*: no dependencies; *chain*: each on the one before; *layered*:
layers of 100, each task on 1-3 random tasks of the layer before, seed 12345). A build
is timed from an empty graph to a validated one:

* ``add``          - ``g.add(name, noop, deps=[...])`` per task, then ``g.validate()``;
* ``decorator``    - ``g.task(name=..., deps=[...])(fn)`` per task, each task with a
                     function of its own (closures of one ``def``, made before the clock
                     starts), then ``g.validate()``;
* ``create_graph`` - ``ag.create_graph(funcs, dependencies)`` (taskmap's dict style;
                     it validates itself);
* ``graphlib``     - ``TopologicalSorter.add(name, *deps)`` per task, then ``prepare()``
                     (which checks for cycles): the reference, the standard library's
                     own graph, in pure Python.

Each form is measured in pairs with graphlib on the same dependencies, in one process,
the order alternating (form then graphlib, graphlib then form); the figure is the
median over the pairs of the per-pair ratio form / graphlib, with its min-max, and the
median µs per task. The issue's target: <= 2x graphlib.

``expand``: fan-out's expansion of one family of N elements (its parent's list split
into items, the elements built, the scheduler told), µs per element (target <= 5 µs),
and ``elements``, the building of the elements alone; the best of --pairs.

The machine may be loaded (other work on it): the ratios, measured side by side, are
the figures to quote.
"""

from __future__ import annotations

import argparse
import gc
import graphlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # first: it may put the checkout on sys.path

import asyncgraph as ag
from asyncgraph import _fan
from asyncgraph._scheduler import Scheduler

Deps = dict[str, list[str]]


async def noop(*a: Any) -> None:
    return None


def make_noop() -> Callable[..., Any]:
    async def task(*a: Any) -> None:
        return None

    return task


def shape(name: str, n: int) -> Deps:
    if name == "wide":
        return {f"t{i}": [] for i in range(n)}
    if name == "chain":
        return {f"t{i}": ([f"t{i - 1}"] if i else []) for i in range(n)}
    rnd = random.Random(12345)
    deps: Deps = {}
    prev: list[str] = []
    for start in range(0, n, 100):
        cur = [f"t{i}" for i in range(start, min(n, start + 100))]
        for c in cur:
            deps[c] = rnd.sample(prev, rnd.randint(1, min(3, len(prev)))) if prev else []
        prev = cur
    return deps


def build_add(deps: Deps, _: Any) -> None:
    g = ag.Graph()
    add = g.add
    for name, ds in deps.items():
        add(name, noop, deps=ds)
    g.validate()


def build_decorator(deps: Deps, fns: list[Callable[..., Any]]) -> None:
    g = ag.Graph()
    task = g.task
    for (name, ds), fn in zip(deps.items(), fns, strict=True):
        task(name=name, deps=ds)(fn)
    g.validate()


def build_create_graph(deps: Deps, funcs: dict[str, Callable[..., Any]]) -> None:
    ag.create_graph(funcs, deps)


def build_graphlib(deps: Deps, _: Any) -> None:
    ts: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    add = ts.add
    for name, ds in deps.items():
        add(name, *ds)
    ts.prepare()


FORMS: dict[str, Callable[[Deps, Any], None]] = {
    "add": build_add,
    "decorator": build_decorator,
    "create_graph": build_create_graph,
}


def timed(build: Callable[[Deps, Any], None], deps: Deps, extra: Any) -> float:
    gc.collect()
    t0 = time.perf_counter()
    build(deps, extra)
    return time.perf_counter() - t0


def compare(form: str, deps: Deps, pairs: int) -> dict[str, float]:
    n = len(deps)
    extra: Any = None
    if form == "decorator":
        extra = [make_noop() for _ in deps]
    elif form == "create_graph":
        extra = dict.fromkeys(deps, noop)
    build = FORMS[form]
    ratios, ours, theirs = [], [], []
    for p in range(pairs):
        if p % 2 == 0:
            a = timed(build, deps, extra)
            b = timed(build_graphlib, deps, None)
        else:
            b = timed(build_graphlib, deps, None)
            a = timed(build, deps, extra)
        ratios.append(a / b)
        ours.append(a / n * 1e6)
        theirs.append(b / n * 1e6)
    return {
        "us_per_task": statistics.median(ours),
        "graphlib_us_per_task": statistics.median(theirs),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def expansion(n: int, pairs: int) -> tuple[float, float]:
    """(µs per element: items, elements and the scheduler's registration; µs per
    element for building the elements alone), the best of ``pairs``."""
    g = ag.Graph()
    g.add("items", lambda: list(range(n)), deps=[])
    template = g.add("t", noop, deps=["items"], over="items")
    dag = g._dag
    value = list(range(n))
    best_all = best_build = float("inf")
    for _ in range(max(pairs, 1)):
        core = Scheduler(
            dag.tasks, dag.topological_order(), {"items": ag.State.DONE, "t": ag.State.PENDING}
        )
        core.get_ready()
        gc.collect()
        t0 = time.perf_counter()
        found = _fan.items(template, value)
        t1 = time.perf_counter()
        elements = _fan.elements(template, found)
        t2 = time.perf_counter()
        core.expand("t", elements, ())
        t3 = time.perf_counter()
        best_all = min(best_all, t3 - t0)
        best_build = min(best_build, t2 - t1)
        del elements, found, core
    return best_all / n * 1e6, best_build / n * 1e6


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--shapes", nargs="+", default=["wide", "chain", "layered"])
    ap.add_argument("--forms", nargs="+", default=list(FORMS))
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        for shape_name in args.shapes:
            deps = shape(shape_name, n)
            for form in args.forms:
                rows.append(
                    {"form": form, "shape": shape_name, "n": n} | compare(form, deps, args.pairs)
                )
    headers = ["form", "shape", "n", "ag µs/task", "graphlib µs/task", "ag / graphlib", "min-max"]
    table = [
        [
            r["form"],
            r["shape"],
            r["n"],
            r["us_per_task"],
            r["graphlib_us_per_task"],
            r["ratio"],
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}",
        ]
        for r in rows
    ]
    print(_common.table(headers, table))
    expand = []
    for n in args.sizes:
        total, alone = expansion(n, args.pairs)
        expand.append({"n": n, "expand_us_per_element": total, "elements_us_per_element": alone})
    print()
    print(
        _common.table(
            ["n", "expand µs/element", "of which building the elements"],
            [[e["n"], e["expand_us_per_element"], e["elements_us_per_element"]] for e in expand],
        )
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"(measured with load average {load}: other work on the machine counts)")
    _common.write_json(str(args.json) if args.json else None, {"build": rows, "expand": expand})


if __name__ == "__main__":
    main()
