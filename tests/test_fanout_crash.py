"""SIGKILL a run in the middle of a 50-element family; the next run reruns only the
elements that never finished and the reducer gets all 50 results (Prefect #5170,
Dagster #19490: a collector that ran with 2 of 3 inputs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: An upper bound for waits on processes, not a measurement: only hit when stuck.
PATIENCE = 120.0
N = 50

DRIVER = textwrap.dedent(
    f"""
    import asyncio, os, sys
    import asyncgraph as ag

    N = {N}


    def mark(name):
        fd = os.open(os.environ["FANOUT_CRASH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (name + "\\n").encode())
        finally:
            os.close(fd)


    g = ag.Graph()


    @g.task
    async def items():
        mark("items")
        return list(range(N))


    @g.task(over="items", key=lambda i: f"e{{i}}")
    async def square(items):
        mark(f"square:{{items}}")
        await asyncio.sleep(0.02)
        return items * items


    @g.task(over="square")
    def half(square):
        mark(f"half:{{square}}")
        return square // 2


    @g.task
    def total(square, half):
        mark(f"total:{{len(square)}}:{{len(half)}}")
        return sum(square), sum(half)


    def said(event):
        if event.kind.value == "done":
            print("done", event.task, flush=True)


    out = ag.run_sync(g, store=sys.argv[1], max_io=3, on_event=said)
    print("total", out.results["total"], flush=True)
    """
)


def _start(driver: Path, store: Path, log: Path, **kw):
    env = dict(os.environ, FANOUT_CRASH_LOG=str(log))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.Popen(
        [sys.executable, str(driver), str(store)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def test_sigkill_mid_family_reruns_only_the_unfinished_elements(tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    store = tmp_path / "s.db"
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"

    proc = _start(driver, store, log1)
    reported: set[str] = set()
    assert proc.stdout is not None
    for line in proc.stdout:
        kind, _, name = line.strip().partition(" ")
        if kind == "done" and name.startswith("square["):
            reported.add(name)
            if len(reported) == 12:  # mid-family: 12 of 50 reported done
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=PATIENCE)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    ran1 = log1.read_text().split()
    assert "total:50:50" not in " ".join(ran1)
    assert len([r for r in ran1 if r.startswith("square:")]) < N

    proc = _start(driver, store, log2)
    out, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, err
    want = (sum(i * i for i in range(N)), sum(i * i // 2 for i in range(N)))
    assert f"total {want}" in out  # the reducer got all 50 results
    ran2 = log2.read_text().split()
    assert "items" not in ran2  # the parent was done and committed: reused
    squares2 = {int(r.split(":")[1]) for r in ran2 if r.startswith("square:")}
    # No element reported done (committed) in the killed run ran again ...
    assert not squares2 & {int(n[len("square[e") : -1]) for n in reported}
    # ... and every element ran in one of the two runs.
    squares1 = {int(r.split(":")[1]) for r in ran1 if r.startswith("square:")}
    assert squares1 | squares2 == set(range(N))
    assert ran2.count("total:50:50") == 1

    # A third run reruns nothing.
    log3 = tmp_path / "run3.log"
    proc = _start(driver, store, log3)
    out, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, err
    assert f"total {want}" in out
    assert not log3.exists() or log3.read_text().split() == []
