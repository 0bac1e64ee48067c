"""Two checkouts' runs side by side in ONE process, with the hand-written runner.

Usage:  python benchmarks/ab_inprocess.py OLD_TREE [NEW_TREE] [--n 10000] [--pairs 7]
        [--shapes wide,chain,layered] [--gc on|off] [--json PATH]

Each tree's ``asyncgraph/`` package is copied into a temporary directory under another
name (``ag_old``, ``ag_new``; NEW_TREE defaults to this checkout) and both are imported
into this process, so the two runs and ``overhead.run_hand`` take turns on one uvloop
loop (order rotating each round): what the machine's load does to one, it does to all.
The figure is the median of the per-round ratios new/old, new/hand and old/hand, with
their min-max (``benchmarks/compare.py`` does the same across fresh processes).
The package's modules import each other relatively, so the copy runs as it is; only
``__module__`` names still read ``asyncgraph`` (nothing here pickles).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from _common import table, write_json  # first: it may put the repo on sys.path
from overhead import SHAPES, noop, run_hand

HERE = Path(__file__).resolve().parent.parent


def load(tree: Path, as_name: str, into: Path) -> Any:
    src = tree / "asyncgraph"
    if not (src / "__init__.py").exists():
        raise SystemExit(f"{tree}: no asyncgraph/ package there (give a checkout's root)")
    shutil.copytree(src, into / as_name, ignore=shutil.ignore_patterns("__pycache__"))
    return importlib.import_module(as_name)


def build(mod: Any, deps: dict[str, list[str]]) -> Any:
    g = mod.Graph()
    for name, ds in deps.items():
        g.add(name, noop, deps=ds)
    g.validate()
    return g


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old")
    p.add_argument("new", nargs="?", default=str(HERE))
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--gc", choices=["on", "off"], default="on")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ab_inprocess_"))
    sys.path.insert(0, str(tmp))
    try:
        old = load(Path(args.old).resolve(), "ag_old", tmp)
        new = load(Path(args.new).resolve(), "ag_new", tmp)
        rows = run(old, new, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nrun of a built graph, {args.n} no-op tasks, median of {args.pairs} rounds (min-max)")
    print(
        table(
            ["shape", "old us", "new us", "hand us", "new/old", "range", "new/hand", "old/hand"],
            [
                [
                    r["shape"],
                    r["us"]["old"],
                    r["us"]["new"],
                    r["us"]["hand"],
                    r["new/old"],
                    f"{r['new/old range'][0]:.2f}-{r['new/old range'][1]:.2f}",
                    r["new/hand"],
                    r["old/hand"],
                ]
                for r in rows
            ],
        )
    )
    write_json(args.json, {"benchmark": "ab_inprocess", "rows": rows})


def run(old: Any, new: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    gc_off = args.gc == "off"
    n = args.n

    async def timed(fn: Any) -> float:
        gc.collect()
        if gc_off:
            gc.disable()
        try:
            t0 = time.perf_counter()
            await fn()
            return time.perf_counter() - t0
        finally:
            gc.enable()

    rows = []
    for shape in args.shapes.split(","):
        deps = SHAPES[shape](n)
        g_old, g_new = build(old, deps), build(new, deps)
        fns = dict.fromkeys(deps, noop)
        cands = {
            "old": lambda g=g_old: old.run(g),
            "new": lambda g=g_new: new.run(g),
            "hand": lambda f=fns, d=deps: run_hand(f, d),
        }
        for fn in cands.values():  # warm
            runner.run(fn())
        t: dict[str, list[float]] = {k: [] for k in cands}
        keys = list(cands)
        for i in range(args.pairs):
            for k in keys[i % 3 :] + keys[: i % 3]:
                t[k].append(runner.run(timed(cands[k])))

        def ratios(a: str, b: str, t: dict[str, list[float]] = t) -> list[float]:
            return [x / y for x, y in zip(t[a], t[b], strict=True)]

        r_no = ratios("new", "old")
        rows.append(
            {
                "shape": shape,
                "n": n,
                "us": {k: statistics.median(v) / n * 1e6 for k, v in t.items()},
                "new/old": statistics.median(r_no),
                "new/old range": (min(r_no), max(r_no)),
                "new/hand": statistics.median(ratios("new", "hand")),
                "old/hand": statistics.median(ratios("old", "hand")),
                "raw_s": t,
            }
        )
        print(f"  {shape}: new/old {rows[-1]['new/old']:.3f}", file=sys.stderr, flush=True)
    runner.close()
    return rows


if __name__ == "__main__":
    main()
