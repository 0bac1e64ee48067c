"""The driver that tests/test_trust_workers.py kills while a CPU task is busy.

    python -c "import trust_workers_driver as d; d.main()" MODE DIR

runs one CPU task in a pool of one worker. The task starts ``sleep 300`` (a program of its
own, in the worker's process group), writes ``WORKER_PID CHILD_PID`` to ``DIR/busy``
(fsynced, then renamed into place), prints ``worker WORKER_PID CHILD_PID`` and then keeps
busy until someone kills it:

    sleep   in ``time.sleep`` (C code: the interpreter is blocked in a system call)
    spin    in a pure-Python loop (the interpreter runs bytecode all the time)
    fork    as ``sleep``; and a thread task of the driver forks a child of the driver
            (after the worker started) that sleeps, holding a copy of every descriptor
            the driver had, the pool's watchdog pipe included. It prints
            ``fork FORK_PID``. Killing only the driver then closes no pipe: the worker
            must learn of its driver's death from the kernel (``PR_SET_PDEATHSIG``).

Imported by name (never run as ``__main__``); the task functions are closures, so they
travel to the worker by value.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncgraph as ag


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def busy_task(where: str, spin: bool = False, block: int | None = None) -> Callable[[], None]:
    """The busy task of the module's docstring; with ``block``, that signal blocked in
    the worker's main thread first (tests/test_trust_workers.py)."""

    def busy() -> None:
        if block is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, [block])
        child = subprocess.Popen(["sleep", "300"])
        write_atomically(Path(where) / "busy", f"{os.getpid()} {child.pid}")
        print(f"worker {os.getpid()} {child.pid}", flush=True)
        if spin:
            n = 0
            while True:
                n += 1
        time.sleep(3600)

    return busy


def holder_task(where: str) -> Callable[[], None]:
    def hold() -> None:
        marker = Path(where) / "busy"
        for _ in range(6000):  # test code: wait (at most 60 s) for the worker's marker
            if marker.exists():
                break
            time.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            time.sleep(300)
            os._exit(0)
        print(f"fork {pid}", flush=True)
        time.sleep(3600)

    return hold


def main() -> None:
    mode, where = sys.argv[1], sys.argv[2]
    g = ag.Graph()
    g.add("busy", busy_task(where, spin=mode == "spin"), kind="cpu")
    if mode == "fork":
        g.add("holder", holder_task(where))
    ag.run_sync(g, cpu_workers=1)
