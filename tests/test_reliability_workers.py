r"""Worker faults: every way a CPU task can break its worker, all in one run of 2 workers.

    exit_7      sigterm      out_of_memory     bad_result     bad_exception   (always)
    exit_once   sigterm_once memory_once                                      (first try)
        \           |           /
         served_1 .. served_4 (cpu)    <- the pool serves after all of them

Each permanent fault fails only its own task, with an error that names it; the transient
ones recover on their retry; the tasks downstream of the recovered ones run in the same
pool, and no worker process is left when the run returns. tests/test_process.py covers
SIGKILL, a fault during cancellation and timeouts; this module adds the memory limit and
proves all the faults together leave the pool serving.
"""

from __future__ import annotations

import os
import resource
import signal
import threading
from pathlib import Path

import anyio
import psutil
from conftest import statuses

import asyncgraph as ag

GUARD = 120  # seconds: a guard against a hang, not a bound


def children_now() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]


class HoldsALock(Exception):
    def __init__(self) -> None:
        super().__init__("holding a lock")
        self.lock = threading.Lock()


def first_time(marker: str) -> bool:
    """True on the first call with this marker (a file), across processes."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def exhaust_memory(headroom: int = 64 << 20) -> None:
    """Cap this process's address space a little above what it uses, then allocate
    until the cap stops it (MemoryError here, or the worker dies: both are fine)."""
    used = psutil.Process().memory_info().vms
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + headroom, hard))
    try:
        hoard = []
        for _ in range(1 << 12):  # 256 GiB at most: the cap stops it long before
            hoard.append(bytearray(64 << 20))
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def fault_graph(tmp: Path) -> ag.Graph:
    marks = {k: str(tmp / k) for k in ("exit", "sigterm", "memory")}

    def exit_once() -> str:
        if first_time(marks["exit"]):
            os._exit(7)
        return "exit recovered"

    def sigterm_once() -> str:
        if first_time(marks["sigterm"]):
            os.kill(os.getpid(), signal.SIGTERM)
        return "sigterm recovered"

    def memory_once() -> str:
        if first_time(marks["memory"]):
            exhaust_memory()
        return "memory recovered"

    def raise_lock() -> None:
        raise HoldsALock()

    g = ag.Graph()
    g.add("exit_7", lambda: os._exit(7), kind="cpu")
    g.add("sigterm", lambda: os.kill(os.getpid(), signal.SIGTERM), kind="cpu")
    g.add("out_of_memory", exhaust_memory, kind="cpu")
    g.add("bad_result", lambda: threading.Lock(), kind="cpu", retries=1, retry_delay=0)
    g.add("bad_exception", raise_lock, kind="cpu", retries=1, retry_delay=0)
    for name, fn in [
        ("exit_once", exit_once),
        ("sigterm_once", sigterm_once),
        ("memory_once", memory_once),
    ]:
        g.add(name, fn, kind="cpu", retries=2, retry_delay=0)
    recovered = ["exit_once", "sigterm_once", "memory_once"]
    for i in range(1, 5):
        g.add(f"served_{i}", lambda *r, i=i: (i, os.getpid()), deps=recovered, kind="cpu")
    # Downstream of each permanent fault: skipped, never run.
    for bad in ("exit_7", "sigterm", "out_of_memory", "bad_result", "bad_exception"):
        g.add(f"after_{bad}", lambda x: x, deps=[bad], kind="cpu")
    return g


async def test_every_worker_fault_fails_only_its_task_and_the_pool_serves(tmp_path: Path):
    g = fault_graph(tmp_path)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=2)
    assert statuses(out) == {
        "exit_7": "failed",
        "sigterm": "failed",
        "out_of_memory": "failed",
        "bad_result": "failed",
        "bad_exception": "failed",
        "exit_once": "done",
        "sigterm_once": "done",
        "memory_once": "done",
        **{f"served_{i}": "done" for i in range(1, 5)},
        **{
            f"after_{b}": "skipped"
            for b in ("exit_7", "sigterm", "out_of_memory", "bad_result", "bad_exception")
        },
    }
    err = out.errors
    assert isinstance(err["exit_7"], ag.WorkerDiedError)
    assert err["exit_7"].exitcode == 7
    assert "task 'exit_7' exited with status 7" in str(err["exit_7"])
    assert isinstance(err["sigterm"], ag.WorkerDiedError)
    assert err["sigterm"].exitcode == -signal.SIGTERM
    assert "task 'sigterm' was killed by signal SIGTERM" in str(err["sigterm"])
    oom = err["out_of_memory"]
    assert isinstance(oom, MemoryError) or (
        isinstance(oom, ag.WorkerDiedError) and "'out_of_memory'" in str(oom)
    ), repr(oom)
    if isinstance(oom, MemoryError):  # the worker's traceback shows where it stopped
        assert "exhaust_memory" in (out.records["out_of_memory"].traceback or "")
    assert isinstance(err["bad_result"], TypeError)
    assert "result of task 'bad_result' (lock) cannot be pickled" in str(err["bad_result"])
    assert isinstance(err["bad_exception"], ag.RemoteError)
    assert "HoldsALock: holding a lock" in str(err["bad_exception"])
    # Deterministic faults are retried like any other and fail again.
    assert out.records["bad_result"].attempts == 2
    assert out.records["bad_exception"].attempts == 2
    # Transient faults recover on the retry.
    assert out.results["exit_once"] == "exit recovered"
    assert out.results["sigterm_once"] == "sigterm recovered"
    assert out.results["memory_once"] == "memory recovered"
    assert out.records["exit_once"].attempts == 2
    assert out.records["sigterm_once"].attempts == 2
    assert out.records["memory_once"].attempts == 2
    # The pool served after the faults, with at most two live workers at a time.
    served = {out.results[f"served_{i}"][1] for i in range(1, 5)}
    assert 1 <= len(served) <= 2
    assert os.getpid() not in served
    assert children_now() == []
