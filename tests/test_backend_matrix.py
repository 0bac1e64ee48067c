r"""The CPU-task cases of the suite, on every backend (tests/backends.py), with the
differences each backend is known to have written next to the assertion.

Ported from tests/test_runner.py (failures as data, retries, limits, order),
tests/test_process.py (what ships, dead workers, timeouts, cancellation, no process
left), tests/test_reliability_workers.py (every worker fault in one run) and
tests/test_reliability_cancel.py (cancel with CPU tasks in flight on a store, resume).
At most two workers; waits are on files and events, never on the clock. The one-worker
death cases stand in for the whole fault graph where a backend cannot survive a death.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from backends import BACKENDS, IDS, RELEASES, Case, children_now, own_processes
from conftest import run_until_deadline, statuses

import asyncgraph as ag

GUARD = 120  # seconds: a guard against a hang, not a bound

# The default loop only: five backends times two loops would double a minute of CPU
# work; tests/test_backends.py runs the shared pool on uvloop too.
pytestmark = pytest.mark.asyncio(loop_factories=["asyncio"])


@pytest.fixture(params=BACKENDS, ids=IDS)
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def backend(case: Case) -> Any:
    with case.make() as made:
        yield made


async def wait_for(path: Path) -> None:
    while not path.exists():  # noqa: ASYNC110 - test-side wait for a worker's file
        await anyio.sleep(0.01)


def released(path: Path) -> None:
    """Register the release of abandoned calls waiting for ``path``."""
    RELEASES.append(lambda: path.touch())


def where() -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


def no_process_left(backend: Any, before: set[int]) -> None:
    """Nothing the run started is alive: only what the backend keeps between runs."""
    assert {p.pid for p in children_now()} <= before


# -- results, what ships, failures ------------------------------------------------------


async def test_lambdas_closures_and_async_functions(case: Case, backend: Any) -> None:
    factor = 7

    def closure(x: int) -> int:
        return x * factor  # a closure: plain pickle could not send it

    async def async_cpu(x: int) -> tuple[int, int, int]:
        await asyncio.sleep(0)
        return (x, *where())

    g = ag.Graph()
    g.add("base", lambda: 6, kind="cpu")
    g.add("scaled", closure, deps=["base"], kind="cpu")
    g.add("where", where, kind="cpu")
    g.add("aio", async_cpu, deps=["scaled"], kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend)
    assert out.results["scaled"] == 42
    pid, thread = out.results["where"]
    assert out.results["aio"][0] == 42
    if case.processes:
        assert pid != os.getpid()
    else:
        assert pid == os.getpid()
        if case.calling_thread:  # inline: this very thread
            assert thread == threading.get_ident()
        else:
            assert thread != threading.get_ident()


async def test_failure_is_data_descendants_skipped_independent_branch_runs(
    case: Case, backend: Any
) -> None:
    def bad() -> None:
        raise KeyError("missing-key")

    g = ag.Graph()
    g.add("bad", bad, kind="cpu")
    g.add("below", lambda b: b, deps=["bad"], kind="cpu")
    g.add("fine", lambda: 1, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend)
    assert statuses(out) == {"bad": "failed", "below": "skipped", "fine": "done"}
    err = out.errors["bad"]
    assert type(err) is KeyError
    assert err.args == ("missing-key",)
    assert "in bad" in (out.records["bad"].traceback or "")


async def test_retries_then_success_and_retries_exhausted(
    case: Case, backend: Any, tmp_path: Path
) -> None:
    def flaky(root: str = str(tmp_path), fails: int = 2) -> str:
        tries = len(os.listdir(root))
        open(os.path.join(root, f"try{tries}"), "w").close()
        if tries < fails:
            raise ZeroDivisionError(f"attempt {tries + 1}")
        return "third time"

    g = ag.Graph()
    g.add("flaky", flaky, kind="cpu", retries=2, retry_delay=0)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend)
    assert out.results["flaky"] == "third time"
    assert out.records["flaky"].attempts == 3
    for p in tmp_path.iterdir():
        p.unlink()
    g = ag.Graph()
    g.add("flaky", flaky, kind="cpu", retries=1, retry_delay=0)
    out = await ag.run(g, backend=backend)
    assert isinstance(out.errors["flaky"], ZeroDivisionError)
    assert out.records["flaky"].attempts == 2


async def test_what_cannot_be_pickled(case: Case, backend: Any) -> None:
    class HoldsALock(Exception):
        def __init__(self) -> None:
            super().__init__("holding a lock")
            self.lock = threading.Lock()

    def raise_lock() -> None:
        raise HoldsALock()

    g = ag.Graph()
    g.add("lock_result", lambda: threading.Lock(), kind="cpu")
    g.add("lock", lambda: threading.Lock())  # io: fine in-process
    g.add("lock_argument", lambda lock: 1, deps=["lock"], kind="cpu")
    g.add("lock_exception", raise_lock, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend)
    if case.processes:
        assert "task 'lock_result' (lock) cannot be pickled" in str(out.errors["lock_result"])
        assert "arguments of task 'lock_argument' cannot be pickled" in str(
            out.errors["lock_argument"]
        )
        assert isinstance(out.errors["lock_exception"], ag.RemoteError)
        assert "HoldsALock: holding a lock" in str(out.errors["lock_exception"])
    else:  # nothing is pickled: the objects arrive as they are
        assert out.status["lock_result"] is ag.State.DONE
        if case.pickles_arguments:
            assert "the arguments of task 'lock_argument' cannot be pickled" in str(
                out.errors["lock_argument"]
            )
            assert isinstance(out.errors["lock_exception"], ag.RemoteError)
            assert "HoldsALock: holding a lock" in str(out.errors["lock_exception"])
        else:
            assert out.results["lock_argument"] == 1
            assert type(out.errors["lock_exception"]).__name__ == "HoldsALock"

    held = threading.Lock()
    ran: list[int] = []
    g = ag.Graph()
    g.add("first", lambda: ran.append(1))
    g.add("holds_lock", lambda: held.locked(), kind="cpu")
    if case.processes or case.pickles_arguments:  # refused before anything runs
        with pytest.raises(ag.PicklingError, match="'holds_lock'"):
            await ag.run(g, backend=backend)
        assert ran == []
    else:
        out = await ag.run(g, backend=backend)
        assert out.results["holds_lock"] is False
        assert ran == [1]


# -- limits and order -------------------------------------------------------------------


async def test_cpu_workers_caps_the_run(case: Case, backend: Any, tmp_path: Path) -> None:
    """cpu_workers=1: two CPU tasks never run at once (each claims a file exclusively)."""

    def claim(name: str, root: str = str(tmp_path)) -> str:
        import time

        busy = os.path.join(root, "busy")
        fd = os.open(busy, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails on overlap
        os.close(fd)
        time.sleep(0.05)  # long enough for a second task to start, if it could
        os.unlink(busy)
        return name

    g = ag.Graph()
    for i in range(4):
        g.add(f"t{i}", lambda i=i: claim(f"t{i}"), kind="cpu")
    if not case.cpu_workers_caps:  # Dask: the backend's capacity is the run's cap
        backend = ag.DaskBackend(processes=False, n_workers=2, capacity=1)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend, cpu_workers=1)
    assert out.results == {f"t{i}": f"t{i}" for i in range(4)}


async def test_calling_thread_runs_in_scheduler_order(case: Case, backend: Any) -> None:
    """Inline: CPU tasks one at a time, in the scheduler's order (priority, then the
    critical path: issue 16); the other backends run them in parallel, so only the set is fixed."""
    order: list[str] = []
    g = ag.Graph()
    g.add("low", lambda: order.append("low") or "low", kind="cpu", priority=1)
    g.add("high", lambda: order.append("high") or "high", kind="cpu", priority=5)
    g.add("head", lambda: order.append("head") or "head", kind="cpu")
    g.add("tail", lambda h: order.append("tail") or "tail", deps=["head"], kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend)
    assert set(out.results) == {"low", "high", "head", "tail"}
    if case.calling_thread:
        # by priority first; head (the longest path) before tail, which needs it
        assert order == ["high", "low", "head", "tail"]


# -- timeouts and cancellation ----------------------------------------------------------


async def test_cpu_timeout(case: Case, backend: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    release = tmp_path / "release"
    finished = tmp_path / "finished"

    def stuck(pid: str = str(pid_file), rel: str = str(release), fin: str = str(finished)):
        import time

        with open(pid, "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(rel):
            time.sleep(0.01)
        open(fin, "w").close()

    def slow_plain() -> str:
        import time

        time.sleep(0.3)
        return "ran to its end"

    g = ag.Graph()
    if case.calling_thread:
        # A plain function on the calling thread cannot be interrupted: it runs to its
        # end, then fails with TimeoutError that says so.
        g.add("stuck", slow_plain, kind="cpu", timeout=0.05)
    else:
        g.add("stuck", stuck, kind="cpu", timeout=0.5)
        released(release)
    g.add("after", lambda: "still served", kind="cpu")
    before = own_processes(backend)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend, cpu_workers=1)
    assert isinstance(out.errors["stuck"], TimeoutError)
    assert out.results == {"after": "still served"}
    if case.calling_thread:
        assert "cannot be interrupted" in str(out.errors["stuck"])
        return
    if case.stops_running:  # its worker was killed: the work really stopped
        worker = int(pid_file.read_text())
        assert worker not in {p.pid for p in children_now()}
        no_process_left(backend, before)
    else:  # abandoned: the call goes on in the executor until it is released
        assert not finished.exists()
        release.touch()
        with anyio.fail_after(GUARD):
            await wait_for(finished)


async def test_cancelling_the_run_stops_or_abandons_cpu_tasks(
    case: Case, backend: Any, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    release = tmp_path / "release"
    finished = tmp_path / "finished"

    def block(s: str = str(started), rel: str = str(release), fin: str = str(finished)):
        import time

        open(s, "w").close()
        while not os.path.exists(rel):
            time.sleep(0.01)
        open(fin, "w").close()

    async def block_async(s: str = str(started)) -> None:
        open(s, "w").close()
        await asyncio.Event().wait()

    g = ag.Graph()
    # On the calling thread a plain function that waits would block the run (and the
    # test) until it returns: there, the blocked CPU task is a coroutine.
    g.add("block", block_async if case.calling_thread else block, kind="cpu")
    g.add("thread", lambda: 1)
    released(release)
    before = own_processes(backend)
    run = asyncio.ensure_future(ag.run(g, backend=backend))
    with anyio.fail_after(GUARD):
        await wait_for(started)
    run.cancel()
    with anyio.fail_after(GUARD), pytest.raises(asyncio.CancelledError):
        await run
    if case.stops_running:
        no_process_left(backend, before)
    elif not case.calling_thread:  # abandoned: it goes on until released
        assert not finished.exists()
        release.touch()
        with anyio.fail_after(GUARD):
            await wait_for(finished)


async def test_deadline_records_cpu_tasks_cancelled(
    case: Case, backend: Any, tmp_path: Path
) -> None:
    release = tmp_path / "release"

    async def wait_forever(rel: str = str(release)) -> None:
        while not os.path.exists(rel):  # noqa: ASYNC110 - the task's own wait
            await asyncio.sleep(0.01)

    released(release)  # where it cannot be stopped (an executor), it ends at the test's end
    g = ag.Graph()
    g.add("quick", lambda: 1, kind="cpu")
    g.add("forever", wait_forever, kind="cpu")
    g.add("below", lambda f: f, deps=["forever"], kind="cpu")
    # Inline runs one CPU task at a time: 'forever' (the longer path) goes first and
    # 'quick' waits behind it until the deadline. The deadline passes once 'forever' has
    # started and, elsewhere, 'quick' is done: not after a second that a loaded machine
    # may spend starting the pool.
    awaited = {("started", "forever")} | (set() if case.calling_thread else {("done", "quick")})
    with anyio.fail_after(GUARD):
        out = await run_until_deadline(g, awaited, backend=backend)
    quick = "cancelled" if case.calling_thread else "done"
    assert statuses(out) == {"quick": quick, "forever": "cancelled", "below": "cancelled"}
    assert "deadline" in str(out.errors["forever"])


# -- dead workers -----------------------------------------------------------------------


async def test_a_worker_killed_by_a_signal_fails_its_task(case: Case, backend: Any) -> None:
    if not case.isolates_crashes:
        pytest.skip(f"{case.id}: a task that kills its process kills the test process")
    g = ag.Graph()
    g.add("killer", lambda: os.kill(os.getpid(), signal.SIGKILL), kind="cpu")
    g.add("after_killer", lambda k: k, deps=["killer"], kind="cpu")
    for i in range(4):
        g.add(f"fine_{i}", lambda i=i: i * i, kind="cpu", deps=[])
    before = own_processes(backend)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend)
    err = out.errors["killer"]
    assert isinstance(err, ag.WorkerDiedError)
    assert "'killer'" in str(err)
    assert out.status["after_killer"] is ag.State.SKIPPED
    if case.survives_worker_death:  # only the killer fails; a fresh worker serves
        assert err.exitcode == -signal.SIGKILL
        assert statuses(out) == {
            "killer": "failed", "after_killer": "skipped",
            **{f"fine_{i}": "done" for i in range(4)},
        }
        no_process_left(backend, before | {p.pid for p in children_now()})
    else:  # a broken executor: what was in flight or came later fails the same way
        for i in range(4):
            if out.status[f"fine_{i}"] is not ag.State.DONE:
                assert isinstance(out.errors[f"fine_{i}"], ag.WorkerDiedError)
        assert "make a new one" in str(err)


async def test_a_transient_worker_death_is_retried(
    case: Case, backend: Any, tmp_path: Path
) -> None:
    if not case.isolates_crashes:
        pytest.skip(f"{case.id}: a task that kills its process kills the test process")
    marker = tmp_path / "died-once"

    def dies_once(path: str = str(marker)) -> str:
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(3)
        return "second attempt"

    g = ag.Graph()
    g.add("transient", dies_once, kind="cpu", retries=1, retry_delay=0)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend)
    assert out.records["transient"].attempts == 2
    if case.survives_worker_death:
        assert out.results["transient"] == "second attempt"
    else:  # the executor stays broken: the retry fails too
        assert isinstance(out.errors["transient"], ag.WorkerDiedError)


async def test_every_worker_fault_in_one_run(case: Case, backend: Any, tmp_path: Path) -> None:
    """tests/test_reliability_workers.py's graph (exit, SIGTERM, out of memory, bad
    result, bad exception, and their transient twins), on the pools that survive it."""
    if not case.survives_worker_death:
        pytest.skip(
            f"{case.id}: the first dead worker breaks a stdlib executor (or kills the test "
            "process); the single-death cases above show what happens"
        )
    from test_reliability_workers import fault_graph

    g = fault_graph(tmp_path)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=backend, cpu_workers=2)
    for bad in ("exit_7", "sigterm", "out_of_memory", "bad_result", "bad_exception"):
        assert out.status[bad] is ag.State.FAILED, bad
        assert out.status[f"after_{bad}"] is ag.State.SKIPPED
    for ok in ("exit_once", "sigterm_once", "memory_once"):
        assert out.status[ok] is ag.State.DONE, ok
        assert out.records[ok].attempts == 2
    assert {out.results[f"served_{i}"][1] for i in range(1, 5)} - {os.getpid()}
    assert out.errors["exit_7"].exitcode == 7


# -- a store, cancellation in flight, resume --------------------------------------------


async def test_cancel_with_cpu_tasks_in_flight_then_resume(
    case: Case, backend: Any, tmp_path: Path
) -> None:
    """tests/test_reliability_cancel.py, smaller: IO, thread and CPU tasks in flight on a
    store; the run is cancelled; every one is recorded cancelled; a resume runs exactly
    those and finishes."""
    if case.calling_thread:
        pytest.skip(
            "inline: a CPU task waiting for a file would block the calling thread, so the "
            "run could not be cancelled while it waits (see test_cancelling_the_run_*)"
        )
    db = tmp_path / "store.db"
    root = str(tmp_path)
    io_gate = asyncio.Event()
    thread_gate = threading.Event()

    def cpu(name: str, root: str = root) -> str:
        import time

        open(os.path.join(root, f"{name}.started"), "a").close()
        while not os.path.exists(os.path.join(root, "release")):
            time.sleep(0.01)
        return name

    async def io() -> str:
        await io_gate.wait()
        return "io"

    def thread() -> str:
        thread_gate.wait()
        return "thread"

    g = ag.Graph()
    g.add("warm", lambda: "warm", kind="cpu", priority=10)
    g.add("cpu_0", lambda w: cpu("cpu_0"), deps=["warm"], kind="cpu")
    g.add("cpu_1", lambda w: cpu("cpu_1"), deps=["warm"], kind="cpu")
    g.add("io", io)
    g.add("thread", thread)
    g.add("after", lambda *xs: len(xs), deps=["cpu_0", "io", "thread"])
    released(tmp_path / "release")
    run = asyncio.create_task(ag.run(g, store=db, backend=backend, cpu_workers=2))
    try:
        with anyio.fail_after(GUARD):
            await wait_for(tmp_path / "cpu_0.started")
            await wait_for(tmp_path / "cpu_1.started")
        run.cancel()
        with anyio.fail_after(GUARD), pytest.raises(asyncio.CancelledError):
            await run
    finally:
        thread_gate.set()
    loaded = ag.load(g, db)
    assert loaded.status["warm"] is ag.State.DONE
    assert {loaded.status[n] for n in ("cpu_0", "cpu_1", "io", "thread", "after")} == {
        ag.State.CANCELLED
    }
    (tmp_path / "release").touch()
    io_gate.set()
    with anyio.fail_after(GUARD):
        out = await ag.run(g, store=db, backend=backend, cpu_workers=2)
    assert set(out.status.values()) == {ag.State.DONE}
    assert out.results["after"] == 3
    assert ag.history(db)["reused"].iloc[-1] == 1  # warm, done before the cancel


async def test_open_run_yields_each_cpu_task_once(case: Case, backend: Any) -> None:
    g = ag.Graph()
    for i in range(5):
        g.add(f"t{i}", lambda i=i: i, kind="cpu")
    seen = []
    with anyio.fail_after(GUARD):
        async with ag.open_run(g, backend=backend) as r:
            async for name, value in r.as_completed():
                seen.append(name)
                assert value == int(name[1:])
    assert sorted(seen) == [f"t{i}" for i in range(5)]
    assert r.graph.results == {f"t{i}": i for i in range(5)}
