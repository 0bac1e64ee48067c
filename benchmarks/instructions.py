"""Instructions per task of a run of a built graph, counted by cachegrind (load-proof).

    python benchmarks/instructions.py [--shapes wide,chain,layered] [--n 3000] [--runs 3]
                                      [--tree DIR ...]

On a shared machine a wall-clock ratio moves by 30 % from one measurement to the next;
the number of instructions a run executes hardly moves (about 1 % between two counts of
the same code). For each tree (``--tree``, repeatable; default: this checkout) and each
shape, this runs ``valgrind --tool=cachegrind --cache-sim=no`` on a child process twice:
once building ``--runs`` graphs without running them, once building and running them
(``ag.run`` of each, and the hand runner ``overhead.run_hand`` alike); both first run a
60-task graph, so imports and first-run set-up are not counted. The difference over
``runs * n`` is a run's instructions a task; the hand runner's is printed beside it.
Needs valgrind; a count is about 50 times slower than the run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(shape_name: str, n: int, runs: int, who: str) -> None:
    """The counted process: build ``runs`` graphs, then run them (unless ``who`` is none)."""
    sys.path.insert(0, str(HERE))
    import uvloop
    from overhead import run_hand
    from speed import build_add, noop, shape

    import asyncgraph as ag

    deps = shape(shape_name, n)
    graphs = [build_add(deps) for _ in range(runs)]

    async def main() -> None:
        small = shape(shape_name, 60)
        await ag.run(build_add(small))
        await run_hand(dict.fromkeys(small, noop), small)
        for g in graphs:
            if who == "ag":
                await ag.run(g)
            elif who == "hand":
                await run_hand(dict.fromkeys(deps, noop), deps)

    uvloop.run(main())


def count(tree: Path, shape_name: str, n: int, runs: int, who: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(tree))
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=cachegrind",
                "--cache-sim=no",
                f"--cachegrind-out-file={tmp}/cg.out",
                sys.executable,
                __file__,
                "--child",
                shape_name,
                str(n),
                str(runs),
                who,
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, shape_name, n, runs, who = sys.argv
        child(shape_name, int(n), int(runs), who)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="wide,chain,layered")
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", action="append", type=Path)
    args = parser.parse_args()
    trees = args.tree or [HERE.parent]
    print(f"instructions a task of a run of a built graph, {args.n} tasks, {args.runs} runs")
    for sh in args.shapes.split(","):
        base = {t: count(t, sh, args.n, args.runs, "none") for t in trees}
        for t in trees:
            ag_ = (count(t, sh, args.n, args.runs, "ag") - base[t]) / (args.runs * args.n)
            print(f"  {sh:8} {t!s:40} ag {ag_:9,.0f}")
        t = trees[0]
        hand = (count(t, sh, args.n, args.runs, "hand") - base[t]) / (args.runs * args.n)
        print(f"  {sh:8} {'hand':40}    {hand:9,.0f}")


if __name__ == "__main__":
    main()
