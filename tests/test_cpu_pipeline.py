"""Two CPU calls in flight per worker (issue 15's per-call cost): a call may be sent to a
worker that still runs another one and wait there, in the worker's requests pipe.

    parent ── call 1 ──> worker: runs 1
           ── call 2 ──>         (2 waits in the pipe)
           <── reply 1 ─         starts 2 at once: no round trip in between

The guarantees a queued call keeps, each observed through what the workers do (a log
file each call appends to, FIFOs that hold a call until the test lets it go) and the
pool's own state, never through time (a call queues behind a long one once a timer
says it is near its expected end: the test sets what was measured): a queued call that
is cancelled is skipped and the call ahead runs on in the same worker; its timeout
counts from its own start; a worker that dies (or is killed for the call ahead) fails
only the running call, and the queued one moves to another worker, free; a big result's
memfd stays open until the parent has mapped it, though the next call is already in the
pipe.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import pytest
from test_clock import FakeClock

import asyncgraph as ag
from asyncgraph._exceptions import WorkerDiedError
from asyncgraph._executors import process
from asyncgraph._executors.process import ProcessExecutor, ProcessPool

GUARD = 60  # seconds: a guard against a hang, not a bound

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs hold the calls")


# -- what the workers run -----------------------------------------------------------------


def _note(log: str, text: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)


def _hold(fifo: str, log: str, name: str) -> int:
    """Note that it began, wait until the test writes the FIFO, note the end."""
    _note(log, f"{name}+")
    with open(fifo) as f:
        f.read()
    _note(log, f"{name}-")
    return os.getpid()


def _hold_then_die(fifo: str, log: str, name: str) -> int:
    _note(log, f"{name}+")
    with open(fifo) as f:
        f.read()
    os._exit(3)


def _mark(log: str, name: str) -> int:
    _note(log, name)
    return os.getpid()


def _signal_then_return(fifo: str, log: str, name: str) -> int:
    """Open the FIFO for writing (which waits for its reader) and say "go"."""
    _note(log, name)
    with open(fifo, "w") as f:
        f.write("go")
    return os.getpid()


def _big(fifo: str, log: str) -> Any:
    import numpy as np

    _hold(fifo, log, "big")
    return np.arange(1 << 18, dtype=np.float64)  # 2 MiB: through a memfd


def _release(fifo: Path) -> None:
    with open(fifo, "w") as f:
        f.write("go")


def _log(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


NO_ARGS: tuple[Any, ...] = ([], {})


def _value(data: bytes | process.Mapped) -> Any:
    assert isinstance(data, bytes)
    return pickle.loads(data)


@pytest.fixture
def queue_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a call queue behind any running call, measured or not (the mechanism is
    under test here, not the rule that picks short calls)."""
    monkeypatch.setattr(process, "PIPELINE_BELOW", math.inf)
    monkeypatch.setattr(process, "PIPELINE_UNMEASURED", True)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    fifo, log = tmp_path / "fifo", tmp_path / "log"
    os.mkfifo(fifo)
    return fifo, log


def _fn(f: Callable[..., Any], *args: Any) -> bytes:
    return cloudpickle.dumps(functools.partial(f, *args))


def _only_worker(pool: ProcessPool) -> process._Worker:
    (worker,) = pool._busy
    return worker


async def _call(
    pool: ProcessPool, name: str, fn: bytes, started: asyncio.Event | None = None
) -> asyncio.Task[Any]:
    """Start a call; once this returns, it has its worker (running or queued there)."""
    task = asyncio.ensure_future(
        pool.call(name, fn, NO_ARGS, None if started is None else (lambda _: started.set()))
    )
    await asyncio.sleep(0)  # its first step places it (nothing to wait for: no warming)
    return task


# -- a queued call's cancellation ------------------------------------------------------------


async def test_a_queued_call_that_is_cancelled_leaves_the_running_one_alone(
    files: tuple[Path, Path], queue_anything: None
) -> None:
    fifo, log = files
    pool = ProcessPool(1, depth=2)
    try:
        with anyio.fail_after(GUARD):
            a_started, b_started = asyncio.Event(), asyncio.Event()
            a = await _call(pool, "a", _fn(_hold, str(fifo), str(log), "a"), a_started)
            await a_started.wait()
            b = await _call(pool, "b", _fn(_mark, str(log), "b"), b_started)
            worker = _only_worker(pool)
            assert worker.inflight == 2  # b waits in the worker, behind a
            b.cancel()
            with pytest.raises(asyncio.CancelledError):
                await b
            assert not a.done()
            await asyncio.to_thread(_release, fifo)
            pid = _value(await a)
            assert pid == worker.pid and not worker.killed  # a ran to its end, there
            # The same worker serves the next call: b was skipped, not run, and its
            # reply ("skipped") was read, so the replies stay in step.
            c = await pool.call("c", _fn(_mark, str(log), "c"), NO_ARGS)
            assert _value(c) == pid
            assert _log(log) == ["a+", "a-", "c"]
            assert not b_started.is_set()
            assert not pool._skips
    finally:
        await pool.aclose()


async def test_a_call_of_an_unmeasured_function_does_not_queue_and_leaves_cleanly(
    files: tuple[Path, Path],
) -> None:
    """By default a call queues only behind calls of functions measured short: behind
    a call of unknown length it waits in the pool for a free worker (a queued call
    waits for the call ahead even when another worker frees up first)."""
    fifo, log = files
    pool = ProcessPool(1, depth=2)
    try:
        with anyio.fail_after(GUARD):
            a_started = asyncio.Event()
            a = await _call(pool, "a", _fn(_hold, str(fifo), str(log), "a"), a_started)
            await a_started.wait()
            b = await _call(pool, "b", _fn(_mark, str(log), "b"))
            assert _only_worker(pool).inflight == 1
            assert len(pool._waiting) == 1  # b waits for a worker, in the pool
            b.cancel()
            with pytest.raises(asyncio.CancelledError):
                await b
            assert not pool._waiting
            await asyncio.to_thread(_release, fifo)
            await a
            assert _log(log) == ["a+", "a-"]
    finally:
        await pool.aclose()


async def test_a_call_queues_behind_a_function_measured_short(files: tuple[Path, Path]) -> None:
    fifo, log = files
    pool = ProcessPool(1, depth=2)
    try:
        with anyio.fail_after(GUARD):
            hold = _fn(_hold, str(fifo), str(log), "a")
            pool._times[hold] = process.PIPELINE_BELOW / 2  # as if measured short
            a_started = asyncio.Event()
            a = await _call(pool, "a", hold, a_started)
            await a_started.wait()
            b = await _call(pool, "b", _fn(_mark, str(log), "b"))
            assert _only_worker(pool).inflight == 2 and not pool._waiting
            await asyncio.to_thread(_release, fifo)
            assert _value(await a) == _value(await b)
            assert _log(log) == ["a+", "a-", "b"]
            pool._times[hold] = process.PIPELINE_BELOW * 2  # measured long: no more
            a = await _call(pool, "a", hold)
            b = await _call(pool, "b", _fn(_mark, str(log), "b"))
            assert len(pool._waiting) == 1
            await asyncio.to_thread(_release, fifo)
            await asyncio.gather(a, b)
    finally:
        await pool.aclose()


async def test_a_call_queues_behind_a_long_one_only_near_its_expected_end(
    files: tuple[Path, Path],
) -> None:
    """Behind a call of a function measured longer than PIPELINE_BELOW, a call waits in
    the pool until the running one is that close to its expected end (a timer wakes it
    then), and queues there: it starts without the round trip, on the same worker."""
    fifo, log = files
    pool = ProcessPool(1, depth=2)
    try:
        with anyio.fail_after(GUARD):
            hold = _fn(_hold, str(fifo), str(log), "a")
            pool._times[hold] = 1000.0  # measured: 1000 s a call
            a_started = asyncio.Event()
            a = await _call(pool, "a", hold, a_started)
            await a_started.wait()
            worker = _only_worker(pool)
            running = worker.running
            assert running is not None and running.near_end is not None
            b = await _call(pool, "b", _fn(_mark, str(log), "b"))
            assert worker.inflight == 1 and len(pool._waiting) == 1  # far from a's end
            await asyncio.to_thread(_release, fifo)
            assert _value(await a) == _value(await b)
            assert running.near_end.cancelled()  # a's timer went with it
            assert _log(log) == ["a+", "a-", "b"]

            # Measured a little longer than PIPELINE_BELOW: its timer fires soon after
            # it starts, and the waiting call queues behind it while it still runs.
            pool._times[hold] = process.PIPELINE_BELOW + 0.05
            queued = asyncio.Event()
            send = worker.send

            def send_and_see(message: Any) -> None:
                send(message)
                if message[0] == "call" and worker.inflight == 2:
                    queued.set()  # b went to the worker that still runs a

            worker.send = send_and_see  # type: ignore[method-assign]
            a_started.clear()
            a = await _call(pool, "a", hold, a_started)
            await a_started.wait()
            b = await _call(pool, "b", _fn(_mark, str(log), "b"))
            await queued.wait()
            assert not pool._waiting and not a.done()
            assert _log(log) == ["a+", "a-", "b", "a+"]  # b waits in the worker, behind a
            await asyncio.to_thread(_release, fifo)
            assert _value(await a) == _value(await b) == worker.pid
            assert _log(log) == ["a+", "a-", "b", "a+", "a-", "b"]
    finally:
        await pool.aclose()


# -- the timeout of a queued call --------------------------------------------------------------


def _task(name: str, timeout: float | None = None) -> ag.Task:
    g = ag.Graph()
    g.add(name, lambda: 1, kind="cpu", timeout=timeout)
    return g.tasks[name]


async def test_a_queued_calls_timeout_counts_from_its_own_start(
    files: tuple[Path, Path], queue_anything: None
) -> None:
    fifo, log = files
    clock = FakeClock()
    ex = ProcessExecutor(1, clock, depth=2)
    assert ex.capacity == 2  # the lane admits a call to queue behind the running one
    pool = ProcessPool(1, depth=2)
    ex.pool = pool
    ex.fn_bytes = {"a": _fn(_hold, str(fifo), str(log), "a"), "b": _fn(_mark, str(log), "b")}
    began: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
    try:
        with anyio.fail_after(GUARD):
            a = ex.start(_task("a"), [], {}, lambda n, _: began[n].set())
            await began["a"].wait()
            b = ex.start(_task("b", timeout=1.0), [], {}, lambda n, _: began[n].set())
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # the executor's task, then the pool's placement
            assert _only_worker(pool).inflight == 2
            assert not clock._timers  # queued: its timeout has not started
            clock.advance(3600)  # an hour behind the call ahead is not its time
            await asyncio.sleep(0)
            assert not b.done()
            await asyncio.to_thread(_release, fifo)
            assert await a == await b  # the same worker, and b in time
            assert began["b"].is_set()
            assert len(clock._timers) == 1  # armed once, when b began
    finally:
        await ex.aclose()


# -- a worker that dies with a call queued ------------------------------------------------------


async def test_a_worker_that_dies_fails_the_running_call_and_the_queued_one_reruns_free(
    files: tuple[Path, Path], queue_anything: None
) -> None:
    fifo, log = files
    pool = ProcessPool(1, depth=2)
    try:
        with anyio.fail_after(GUARD):
            a_started = asyncio.Event()
            a = await _call(pool, "a", _fn(_hold_then_die, str(fifo), str(log), "a"), a_started)
            await a_started.wait()
            first = _only_worker(pool).pid
            b_starts: list[float] = []
            b = asyncio.ensure_future(
                pool.call("b", _fn(_mark, str(log), "b"), NO_ARGS, b_starts.append)
            )
            await asyncio.sleep(0)
            assert _only_worker(pool).inflight == 2
            await asyncio.to_thread(_release, fifo)
            with pytest.raises(WorkerDiedError):
                await a
            pid = _value(await b)  # not failed: it never started there
            assert pid != first
            assert len(b_starts) == 1  # and it ran once
            assert _log(log) == ["a+", "b"]
    finally:
        await pool.aclose()


async def test_a_queued_call_behind_a_cancelled_one_moves_to_a_fresh_worker(
    files: tuple[Path, Path], queue_anything: None
) -> None:
    fifo, log = files
    pool = ProcessPool(1, depth=2)
    try:
        with anyio.fail_after(GUARD):
            a_started = asyncio.Event()
            a = await _call(pool, "a", _fn(_hold, str(fifo), str(log), "a"), a_started)
            await a_started.wait()
            first = _only_worker(pool)
            b = await _call(pool, "b", _fn(_mark, str(log), "b"))
            assert first.inflight == 2
            a.cancel()  # kills a's worker: the only way to stop a running call
            with pytest.raises(asyncio.CancelledError):
                await a
            pid = _value(await b)
            assert first.killed and pid != first.pid
            # (a may have been killed before it noted its start: "started" comes first)
            assert [x for x in _log(log) if x != "a+"] == ["b"]
    finally:
        await pool.aclose()


async def test_a_run_whose_worker_dies_reruns_the_queued_task_without_a_retry(
    tmp_path: Path, queue_anything: None
) -> None:
    """In a run (cpu_workers=1, so the lane admits 2): the task that kills its worker
    fails with WorkerDiedError; the task queued behind it is done, with no retry."""
    fifo, log = tmp_path / "fifo", tmp_path / "log"
    os.mkfifo(fifo)
    g = ag.Graph()
    g.add("dies", functools.partial(_hold_then_die, str(fifo), str(log), "dies"), kind="cpu")
    g.add("next", functools.partial(_mark, str(log), "next"), kind="cpu")
    events: list[ag.Event] = []
    dies_started = asyncio.Event()

    def on_event(event: ag.Event) -> None:
        events.append(event)
        if event.kind is ag.EventKind.STARTED and event.task == "dies":
            dies_started.set()

    async def body() -> ag.Graph:
        run = asyncio.ensure_future(ag.run(g, cpu_workers=1, on_event=on_event))
        await dies_started.wait()
        await asyncio.to_thread(_release, fifo)
        return await run

    done = await asyncio.wait_for(body(), GUARD)
    assert done.status["dies"] is ag.State.FAILED
    assert isinstance(done.errors["dies"], WorkerDiedError)
    assert done.status["next"] is ag.State.DONE
    assert done.records["next"].attempts == 1
    assert _log(log) == ["dies+", "next"]


# -- a big result with a call queued behind it ---------------------------------------------------


async def test_a_big_results_memfd_stays_open_until_the_parent_mapped_it(
    tmp_path: Path, queue_anything: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker used to close a big result's memfd at its next request, which with a
    call queued is in the pipe already. Here the parent maps it only after the queued
    call has begun (the mapping waits on a FIFO the queued call writes): the memfd is
    still there, and is closed once the parent says it mapped it."""
    pytest.importorskip("numpy")
    import numpy as np

    hold, go, log = tmp_path / "hold", tmp_path / "go", tmp_path / "log"
    os.mkfifo(hold)
    os.mkfifo(go)
    real = process.outcome
    order: list[str] = []

    def late_outcome(task: str, reply: Any, pid: int | None = None) -> Any:
        if reply[0] == "oob":
            with open(go) as f:  # returns once the queued call is running
                f.read()
            order.append("mapped")
        return real(task, reply, pid)

    monkeypatch.setattr(process, "outcome", late_outcome)
    pool = ProcessPool(1, depth=2)
    try:
        with anyio.fail_after(GUARD):
            a_started = asyncio.Event()
            a = await _call(pool, "a", _fn(_big, str(hold), str(log)), a_started)
            await a_started.wait()
            worker = _only_worker(pool)
            if not pool._maps:
                pytest.skip("this process may not open a worker's descriptors")
            b = await _call(pool, "b", _fn(_signal_then_return, str(go), str(log), "b"))
            assert worker.inflight == 2
            await asyncio.to_thread(_release, hold)
            mapped = await a
            assert isinstance(mapped, process.Mapped)
            assert np.array_equal(mapped.load(), np.arange(1 << 18, dtype=np.float64))
            assert _value(await b) == worker.pid
            assert order == ["mapped"] and _log(log) == ["big+", "big-", "b"]
            await pool.call("c", _fn(_mark, str(log), "c"), NO_ARGS)  # "release" read by now
            links = [os.readlink(f"/proc/{worker.pid}/fd/{fd}") for fd in _fds(worker.pid)]
            assert not [x for x in links if "asyncgraph-result" in x]
    finally:
        await pool.aclose()


def _fds(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []


# -- the same results as one call at a time -----------------------------------------------------


def _combine(name: str, *parents: int) -> int:
    """A task's value from its name and its parents' values (fails for some names)."""
    if name.endswith("7"):
        raise ValueError(f"{name} fails on purpose")
    total = sum(ord(c) for c in name)
    for p in parents:
        total = (total * 31 + p) % 1_000_003
    return total


def _random_graph(seed: int) -> ag.Graph:
    import random

    rng = random.Random(seed)
    g = ag.Graph()
    names: list[str] = []
    for i in range(rng.randint(5, 25)):
        name = f"t{seed}_{i}"
        parents = rng.sample(names, k=min(len(names), rng.randint(0, 3)))
        g.add(
            name,
            functools.partial(_combine, name),
            deps=parents,
            kind="cpu" if rng.random() < 0.8 else "io",
            priority=rng.randint(0, 2),
        )
        names.append(name)
    return g


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_results_are_those_of_one_call_at_a_time_on_random_graphs(
    seed: int, queue_anything: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = _random_graph(seed)
    outs = {}
    for depth in (1, 2):
        monkeypatch.setattr(process, "DEPTH", depth)
        outs[depth] = await asyncio.wait_for(ag.run(g, cpu_workers=2), GUARD)
    one, two = outs[1], outs[2]
    assert one.status == two.status
    assert one.results == two.results
    assert {k: str(v) for k, v in one.errors.items()} == {k: str(v) for k, v in two.errors.items()}


def _ordered(log: str, name: str) -> str:
    _note(log, name)
    return name


@pytest.mark.parametrize("seed", [5, 6])
async def test_tasks_ready_together_start_in_the_same_order_as_one_at_a_time(
    seed: int, tmp_path: Path, queue_anything: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Independent CPU tasks of random priorities on one worker: the worker runs them
    in the run's order at either depth (a queued call is the next in order anyway)."""
    import random

    rng = random.Random(seed)
    orders = {}
    for depth in (1, 2):
        monkeypatch.setattr(process, "DEPTH", depth)
        log = tmp_path / f"log{depth}"
        g = ag.Graph()
        for i in range(12):
            g.add(f"t{i}", functools.partial(_ordered, str(log), f"t{i}"), kind="cpu",
                  priority=rng.randint(0, 3))  # fmt: skip
        rng = random.Random(seed)  # the same priorities for the second depth
        done = await asyncio.wait_for(ag.run(g, cpu_workers=1), GUARD)
        assert set(done.status.values()) == {ag.State.DONE}
        orders[depth] = _log(log)
    assert orders[1] == orders[2]
    assert len(orders[1]) == 12


# -- a shared pool ----------------------------------------------------------------------------


def _one_task(name: str, fn: Callable[..., Any], priority: int = 0) -> ag.Graph:
    g = ag.Graph()
    g.add(name, fn, kind="cpu", priority=priority)
    return g


async def test_on_a_shared_pool_a_queued_calls_cancel_leaves_the_running_one_alone(
    files: tuple[Path, Path], queue_anything: None
) -> None:
    """Run A holds the only worker; run B's call is granted a place queued behind it
    (the pool promised one); B is cancelled: A ends in the same worker, which then
    serves run C, and the pool's queue is left empty."""
    from test_shared_pool_priority import _on_pool, _until

    fifo, log = files
    async with ag.ProcessBackend(workers=1) as pool:

        async def body() -> None:
            a = asyncio.ensure_future(
                ag.run(_one_task("a", functools.partial(_hold, str(fifo), str(log), "a")),
                       backend=pool)
            )  # fmt: skip
            await _until(pool, lambda s: s.used == 1)
            b = asyncio.ensure_future(
                ag.run(_one_task("b", functools.partial(_mark, str(log), "b")), backend=pool)
            )
            await _until(pool, lambda s: s.used == 2)  # granted: queued behind a
            b.cancel()
            with pytest.raises(asyncio.CancelledError):
                await b
            await _until(pool, lambda s: s.used == 1)
            await asyncio.to_thread(_release, fifo)
            first = await a
            assert first.status["a"] is ag.State.DONE, first.errors
            third = await ag.run(
                _one_task("c", functools.partial(_mark, str(log), "c")), backend=pool
            )
            assert third.results["c"] == first.results["a"]  # nobody's worker was killed
            assert _log(log) == ["a+", "a-", "c"]
            assert await _on_pool(pool, lambda s: (s.used, len(s), s.held)) == (0, 0, {})

        await asyncio.wait_for(body(), GUARD)
