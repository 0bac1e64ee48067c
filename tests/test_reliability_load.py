r"""Load: many tasks, many at once, deep chains.

* a graph of no-op tasks (10,000 by default, 100,000 with ``--long``) runs in a fresh
  process, which reports its peak RSS and the memory per task (docs/reliability.md);
* 10,000 IO coroutines ready at once under ``max_io=50``: the high-water mark of tasks
  running at once, measured by the tasks themselves, is exactly 50;
* a 1,000-deep chain (10,000 with ``--long``) of coroutines and of threads runs on a
  store, and ``ag.load`` / ``ag.plan`` of it (the fingerprints walk upstream) work: no
  recursion limit is hit.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from conftest import Probe

import asyncgraph as ag

ROOT = Path(__file__).resolve().parents[1]
GUARD = 600  # seconds: a guard against a hang, not a bound

MEMORY_SCRIPT = """
import gc, json, resource, sys
import psutil
import asyncgraph as ag

n = int(sys.argv[1])
me = psutil.Process()
gc.collect()
base = me.memory_info().rss

async def noop():
    return None

g = ag.Graph()
for i in range(n):
    g.add(f"t{i}", noop, deps=[])
built = me.memory_info().rss
out = ag.run_sync(g)
after = me.memory_info().rss
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
assert len(out.results) == n, len(out.results)
json.dump({"n": n, "base": base, "built": built, "after": after, "peak": peak}, sys.stdout)
"""


def memory_figures(n: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMORY_SCRIPT), str(n)],
        capture_output=True,
        text=True,
        timeout=GUARD,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    f = json.loads(proc.stdout)
    per_task = {
        "graph_bytes_per_task": (f["built"] - f["base"]) / n,
        "peak_bytes_per_task": (f["peak"] - f["base"]) / n,
        "kept_bytes_per_task": (f["after"] - f["base"]) / n,
    }
    print(f"\n{n} no-op tasks: peak RSS {f['peak'] / 2**20:.0f} MiB; per task: "
          + ", ".join(f"{k} {v:.0f}" for k, v in per_task.items()))
    return per_task


def test_many_tasks_memory_per_task() -> None:
    figures = memory_figures(10_000)
    # A leak guard, not a benchmark: a task costs a few KiB (see docs/reliability.md).
    assert figures["peak_bytes_per_task"] < 64 * 1024


@pytest.mark.long
def test_100k_tasks_memory_per_task() -> None:
    figures = memory_figures(100_000)
    assert figures["peak_bytes_per_task"] < 64 * 1024


async def test_10k_concurrent_io_tasks_never_exceed_max_io(probe: Probe) -> None:
    g = ag.Graph()
    for i in range(10_000):

        async def t(name: str = f"t{i}") -> int:
            probe.enter(name)
            for _ in range(3):
                await asyncio.sleep(0)
            probe.leave(name)
            return 1

        g.add(f"t{i}", t)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, max_io=50)
    assert len(out.results) == 10_000
    assert len(probe.started) == 10_000
    assert probe.high_water == 50  # the cap was reached and never exceeded
    print(f"\n10,000 IO tasks under max_io=50: high-water mark {probe.high_water}")


def test_2k_thread_tasks_never_exceed_max_io(probe: Probe) -> None:
    import threading

    lock = threading.Lock()
    g = ag.Graph()
    for i in range(2_000):

        def t(name: str = f"t{i}") -> int:
            with lock:
                probe.enter(name)
            with lock:
                probe.leave(name)
            return 1

        g.add(f"t{i}", t)
    out = ag.run_sync(g, max_io=8)
    assert len(out.results) == 2_000
    assert 1 <= probe.high_water <= 8


def chain(n: int, *, threads: bool) -> ag.Graph:
    g = ag.Graph()
    if threads:

        def inc(x: int = 0) -> int:
            return x + 1

    else:

        async def inc(x: int = 0) -> int:  # type: ignore[misc]
            return x + 1

    g.add("t0", inc, deps=[])
    for i in range(1, n):
        g.add(f"t{i}", inc, deps=[f"t{i - 1}"])
    return g


def check_chain(tmp_path: Path, n: int, threads: bool) -> None:
    db = tmp_path / f"chain-{threads}.db"
    out = ag.run_sync(chain(n, threads=threads), store=db)
    assert out.results[f"t{n - 1}"] == n
    loaded = ag.load(chain(n, threads=threads), db)
    assert set(loaded.status.values()) == {ag.State.DONE}
    assert loaded.results[f"t{n - 1}"] == n
    plan = ag.plan(chain(n, threads=threads), db)
    assert set(plan["action"]) == {"reuse"}
    # A change at the root reruns the whole chain: the fingerprints walk upstream.
    again = ag.plan(ag.reset(loaded, "t0"), db)
    assert set(again["action"]) == {"run"}


@pytest.mark.parametrize("threads", [False, True], ids=["coroutines", "threads"])
def test_a_1000_deep_chain_on_a_store(tmp_path: Path, threads: bool) -> None:
    check_chain(tmp_path, 1000, threads)


@pytest.mark.long
@pytest.mark.parametrize("threads", [False, True], ids=["coroutines", "threads"])
def test_a_10000_deep_chain_on_a_store(tmp_path: Path, threads: bool) -> None:
    check_chain(tmp_path, 10_000, threads)
