r"""Cancelling a run on a store with 100 tasks in flight, then resuming it.

    warm_0 .. warm_9          done before the cancellation: reused by the resume
    io_0 .. io_89             coroutines waiting on an asyncio.Event
    thread_0 .. thread_7      plain functions blocked on a threading.Event
    cpu_0, cpu_1              sleeping in the two workers until a file appears
    after_0 .. after_4        depend on in-flight tasks: never started

Once all 100 have started (counted by the tasks themselves, and the CPU tasks' marker
files), the task awaiting ``ag.run`` is cancelled. The run ends while the threads are
still blocked (it does not wait for them), every in-flight task is recorded
``cancelled``, no worker process remains, the store's history and state agree, and a
resume on the same store runs exactly the cancelled tasks and finishes.

A timeout on a CPU task kills its worker (really stopping the work):
tests/test_process.py::test_cpu_timeout_kills_the_worker.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import anyio
import psutil
import pytest

import asyncgraph as ag
from asyncgraph._store import SQLiteStore

GUARD = 120  # seconds: a guard against a hang, not a bound
N_IO, N_THREAD, N_CPU, N_WARM, N_AFTER = 90, 8, 2, 10, 5
IN_FLIGHT = N_IO + N_THREAD + N_CPU


def children_now() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]


class Gates:
    """What the in-flight tasks wait on, and how many have started (loop thread only)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop = asyncio.get_running_loop()
        self.io = asyncio.Event()
        self.threads = threading.Event()
        self.started = 0
        self.threads_returned = 0
        self.all_local_started = asyncio.Event()  # every IO and thread task

    def __reduce_ex__(self, protocol: object) -> tuple[object, ...]:
        # What the fingerprint sees of the tasks' closures: the directory only. Without
        # it, fingerprinting walks the event loop's own state (see
        # test_reliability_crash.py::test_a_closure_over_the_loop_keeps_its_fingerprint).
        return (Path, (str(self.root),))

    def enter(self) -> None:
        self.started += 1
        if self.started == N_IO + N_THREAD:
            self.all_local_started.set()

    def ran(self, name: str) -> None:
        with open(self.root / "ran.log", "a") as log:
            log.write(name + "\n")

    def log(self) -> list[str]:
        path = self.root / "ran.log"
        return path.read_text().split() if path.exists() else []


def build(gates: Gates) -> ag.Graph:
    g = ag.Graph()
    root = str(gates.root)
    for i in range(N_WARM):

        async def warm(i: int = i) -> int:
            return i

        g.add(f"warm_{i}", warm, priority=10)
    for i in range(N_IO):

        async def io(name: str = f"io_{i}") -> str:
            gates.ran(name)
            gates.enter()
            await gates.io.wait()
            return name

        g.add(f"io_{i}", io)
    for i in range(N_THREAD):

        def thread(name: str = f"thread_{i}") -> str:
            gates.ran(name)
            gates.loop.call_soon_threadsafe(gates.enter)
            gates.threads.wait()
            gates.threads_returned += 1  # only after the release below
            return name

        g.add(f"thread_{i}", thread)
    for i in range(N_CPU):

        def cpu(name: str = f"cpu_{i}", root: str = root) -> str:
            import os
            import time

            open(os.path.join(root, f"{name}.started"), "a").close()
            while not os.path.exists(os.path.join(root, "release")):
                time.sleep(0.01)  # the worker's own wait; the run does not poll
            return name

        g.add(f"cpu_{i}", cpu, kind="cpu")
    for i in range(N_AFTER):
        g.add(f"after_{i}", lambda *xs: len(xs), deps=[f"io_{i}", f"thread_{i}", "cpu_0"])
    return g


async def wait_for_files(paths: list[Path]) -> None:
    while not all(p.exists() for p in paths):  # noqa: ASYNC110 - test-side wait
        await anyio.sleep(0.01)


async def test_cancel_100_in_flight_then_resume(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    gates = Gates(tmp_path)
    g = build(gates)
    kinds: dict[str, int] = {}

    def on_event(event: ag.Event) -> None:
        kinds[event.kind.value] = kinds.get(event.kind.value, 0) + 1

    run = asyncio.create_task(ag.run(g, store=db, cpu_workers=2, on_event=on_event))
    try:
        with anyio.fail_after(GUARD):
            await gates.all_local_started.wait()
            await wait_for_files([tmp_path / f"cpu_{i}.started" for i in range(N_CPU)])
        assert len(children_now()) == N_CPU
        run.cancel()
        with anyio.fail_after(GUARD), pytest.raises(asyncio.CancelledError):
            await run
        # The run returned although the threads are still blocked: it did not wait on
        # them (a thread cannot be stopped; it is abandoned).
        assert gates.threads_returned == 0
        assert children_now() == []
        assert kinds.get("cancelled") == IN_FLIGHT + N_AFTER
        assert kinds.get("done") == N_WARM
    finally:
        gates.threads.set()  # let the abandoned threads end
        gates.io.set()

    # The store agrees with itself: nothing is left running, the run is recorded
    # cancelled with the right counts.
    store = SQLiteStore(db)
    try:
        state = {n: t.status.value for n, t in store.tasks().items()}
        runs = store.runs()
    finally:
        store.close()
    in_flight = [n for n in g if n.split("_")[0] in ("io", "thread", "cpu")]
    assert len(in_flight) == IN_FLIGHT
    assert {state[n] for n in in_flight} == {"cancelled"}
    assert {state[f"after_{i}"] for i in range(N_AFTER)} == {"cancelled"}
    assert {state[f"warm_{i}"] for i in range(N_WARM)} == {"done"}
    (last,) = runs
    assert (last.status, last.done, last.cancelled) == ("cancelled", N_WARM, IN_FLIGHT + N_AFTER)
    loaded = ag.load(g, db)
    assert loaded.status["io_0"] is ag.State.CANCELLED
    assert "was cancelled" in str(loaded.errors["io_0"])
    plan = ag.plan(g, db).set_index("name")
    assert (plan["action"] == "run").sum() == IN_FLIGHT + N_AFTER
    assert plan.loc["cpu_1", "reason"] == "cancelled last time"

    # The resume runs exactly what was cancelled, and finishes.
    (tmp_path / "release").touch()
    ran_before = len(gates.log())
    with anyio.fail_after(GUARD):
        out = await ag.run(g, store=db, cpu_workers=2)
    assert set(out.status.values()) == {ag.State.DONE}
    assert out.results["io_3"] == "io_3" and out.results["after_0"] == 3
    assert sorted(gates.log()[ran_before:]) == sorted(
        n for n in in_flight if not n.startswith("cpu")
    )
    assert list(ag.history(db)["status"]) == ["cancelled", "done"]
    assert ag.history(db)["reused"].iloc[-1] == N_WARM
    assert children_now() == []
