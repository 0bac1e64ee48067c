"""Eager submission on Dask: a CPU task whose inputs are CPU tasks goes to the cluster with
their futures before they finish, so Dask starts it worker to worker (no result fetch
and no submission round trip per link), and the run takes that submission over when it
starts the task.

``DaskBackend(eager=True)``; off by default. What must hold: results and failures as
data, a failed input cancels what was submitted with its future (the run skips or
retries as always), a retried input's dependent gets the retry's value, cancellation
leaves nothing on the scheduler, a task the run must decide on first (a timeout,
resources) is not sent ahead, ``eager=False`` sends nothing ahead, a store run commits
bytes made on the worker. A LocalCluster of threads (processes=False) in this process,
so the test reads the scheduler's tasks directly. Skipped without ``distributed``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dask_fixtures import clean, scheduler_keys, shared_threads_client

import asyncgraph as ag

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STARTED = threading.Event()
RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def gates() -> Iterator[None]:
    STARTED.clear()
    RELEASE.clear()
    yield
    RELEASE.set()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[Any]:
    async for c in shared_threads_client():  # one cluster per loop backend (dask_fixtures)
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def client(shared: Any) -> Any:
    return await clean(shared)


def hold(log: str) -> int:
    """Notes that it ran, then blocks its worker thread until the test releases it."""
    noted(log, "hold")
    STARTED.set()
    RELEASE.wait(30)
    return 1


def hold_on(log: str, x: int) -> int:
    """``hold`` as a dependent: takes its input's result."""
    return hold(log) + x


def hold_then_fail(log: str) -> int:
    noted(log, "hold")
    STARTED.set()
    RELEASE.wait(30)
    raise ValueError("the input failed")


def noted(log: str, text: str) -> None:
    with open(log, "a") as f:
        f.write(text + "\n")


def inc(log: str, x: int) -> int:
    noted(log, "inc")
    return x + 1


def lines(log: str) -> list[str]:
    p = Path(log)
    return p.read_text().split() if p.exists() else []


class Watch:
    """Every task transition on the (in-process) scheduler, in order, from a plugin."""

    def __init__(self, client: Any) -> None:
        self.sched = client.cluster.scheduler
        self.order: list[tuple[str, str]] = []
        self.changed = asyncio.Event()
        watch = self

        class Plugin(distributed.diagnostics.plugin.SchedulerPlugin):  # type: ignore[misc]
            def transition(self, key: Any, start: str, finish: str, *a: Any, **k: Any) -> None:
                watch.order.append((str(key), finish))
                watch.changed.set()

        self.sched.add_plugin(Plugin(), name="asyncgraph-eager-watch")

    def close(self) -> None:
        self.sched.remove_plugin("asyncgraph-eager-watch")

    def has(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k, _ in self.order)

    async def until(self, prefixes: list[str]) -> None:
        """Wait until the scheduler has had a key for each of ``prefixes`` (event-driven;
        a test whose keys never come fails after 30 s)."""

        async def wait() -> None:
            while not all(self.has(p) for p in prefixes):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), 30)

    def first(self, prefix: str, finish: str | None = None) -> int:
        return next(
            i
            for i, (k, f) in enumerate(self.order)
            if k.startswith(prefix) and (finish is None or f == finish)
        )


@pytest.fixture
def watch(client: Any) -> Iterator[Watch]:
    w = Watch(client)
    yield w
    w.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_chain_goes_to_the_cluster_before_its_inputs_finish(
    tmp_path: Path, client: Any, watch: Watch
) -> None:
    log = str(tmp_path / "log")
    g = ag.Graph()
    g.add("a", functools.partial(hold, log), kind="cpu")
    g.add("b", functools.partial(inc, log), deps=["a"], kind="cpu")
    g.add("c", functools.partial(inc, log), deps=["b"], kind="cpu")
    g.add("d", functools.partial(inc, log), deps=["c"], kind="cpu")
    events: list[ag.Event] = []
    run = asyncio.ensure_future(
        ag.run(g, backend=ag.DaskBackend(client, eager=True), on_event=events.append)
    )
    await asyncio.to_thread(STARTED.wait, 30)
    await watch.until(["b-", "c-", "d-"])  # all on the scheduler while "a" is held
    RELEASE.set()
    done = await run
    assert done.results == {"a": 1, "b": 2, "c": 3, "d": 4}
    assert {n: done.records[n].attempts for n in "abcd"} == dict.fromkeys("abcd", 1)
    assert lines(log).count("inc") == 3  # each ran once
    # The run's events are as before: each task started, then done, in chain order.
    order = [(e.kind.value, e.task) for e in events if e.kind.value in ("started", "done")]
    assert order == [(k, n) for n in "abcd" for k in ("started", "done")]
    assert await scheduler_keys(client) == []
    assert not client.futures


@pytest.mark.asyncio(loop_scope="module")
async def test_a_failed_input_cancels_what_went_ahead_and_its_dependents_skip(
    tmp_path: Path, client: Any, watch: Watch
) -> None:
    log = str(tmp_path / "log")
    g = ag.Graph()
    g.add("a", functools.partial(hold_then_fail, log), kind="cpu")
    g.add("b", functools.partial(inc, log), deps=["a"], kind="cpu")
    g.add("c", functools.partial(inc, log), deps=["b"], kind="cpu")
    g.add("other", functools.partial(inc, log, 10), kind="cpu")
    run = asyncio.ensure_future(ag.run(g, backend=ag.DaskBackend(client, eager=True)))
    await asyncio.to_thread(STARTED.wait, 30)
    await watch.until(["b-", "c-"])
    RELEASE.set()
    done = await run
    assert done.status["a"] is ag.State.FAILED
    assert str(done.records["a"].error) == "the input failed"
    assert done.status["b"] is ag.State.SKIPPED
    assert done.status["c"] is ag.State.SKIPPED
    assert done.results == {"other": 11}
    assert lines(log).count("inc") == 1  # only "other": b and c never ran
    assert await scheduler_keys(client) == []
    assert not client.futures


def fails_first(counter: str) -> int:
    path = Path(counter)
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + 1))
    if n == 0:
        raise ZeroDivisionError("first attempt")
    return 100


@pytest.mark.asyncio(loop_scope="module")
async def test_a_retried_input_feeds_its_dependent_the_retrys_value(
    tmp_path: Path, client: Any
) -> None:
    log = str(tmp_path / "log")
    g = ag.Graph()
    g.add(
        "a",
        functools.partial(fails_first, str(tmp_path / "n")),
        kind="cpu",
        retries=1,
        retry_delay=0.001,
    )
    g.add("b", functools.partial(inc, log), deps=["a"], kind="cpu")
    g.add("c", functools.partial(inc, log), deps=["b"], kind="cpu")
    done = await ag.run(g, backend=ag.DaskBackend(client, eager=True))
    assert done.results == {"a": 100, "b": 101, "c": 102}
    assert done.records["a"].attempts == 2
    assert done.records["b"].attempts == 1  # its first submission was dropped, not failed
    assert lines(log).count("inc") == 2
    assert await scheduler_keys(client) == []


@pytest.mark.asyncio(loop_scope="module")
async def test_a_cancelled_run_leaves_nothing_on_the_scheduler(
    tmp_path: Path, client: Any, watch: Watch
) -> None:
    log = str(tmp_path / "log")
    g = ag.Graph()
    g.add("a", functools.partial(hold, log), kind="cpu")
    g.add("b", functools.partial(inc, log), deps=["a"], kind="cpu")
    run = asyncio.ensure_future(ag.run(g, backend=ag.DaskBackend(client, eager=True)))
    await asyncio.to_thread(STARTED.wait, 30)
    await watch.until(["b-"])
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    RELEASE.set()  # "a" returns now, on a cancelled future
    assert await scheduler_keys(client) == []
    assert not client.futures
    # Not asserted: that "b" never ran. Dask's cancel is a message on its batched
    # stream; if "a" finishes before the scheduler has it, Dask starts "b" at once (a
    # task sent ahead runs when its inputs finish). A run that returns its graph
    # records such a task as begun: test_a_stopped_run_records_what_went_ahead_and_began_as_begun.


@pytest.mark.asyncio(loop_scope="module")
async def test_a_task_the_run_decides_on_first_is_not_sent_ahead(
    tmp_path: Path, client: Any, watch: Watch
) -> None:
    log = str(tmp_path / "log")
    g = ag.Graph()
    g.add("a", functools.partial(hold, log), kind="cpu")
    g.add("timed", functools.partial(inc, log), deps=["a"], kind="cpu", timeout=60)
    g.add("limited", functools.partial(inc, log), deps=["a"], kind="cpu", resources=("db",))
    g.add("plain", functools.partial(inc, log), deps=["a"], kind="cpu")
    g.add("after_io", functools.partial(inc, log), deps=["io"], kind="cpu")
    g.add("io", lambda: 5)
    run = asyncio.ensure_future(
        ag.run(g, backend=ag.DaskBackend(client, eager=True), limits={"db": 1})
    )
    await asyncio.to_thread(STARTED.wait, 30)
    await watch.until(["plain-"])
    # Had they gone ahead, they would have gone in the same message as "plain".
    assert not watch.has("timed-") and not watch.has("limited-")
    RELEASE.set()
    done = await run
    assert done.results == {"a": 1, "timed": 2, "limited": 2, "plain": 2, "io": 5, "after_io": 6}
    assert await scheduler_keys(client) == []


def test_eager_is_on_by_default() -> None:
    # Since a stopped run records truthfully what went ahead (the workers' gate).
    assert ag.DaskBackend().eager is True


@pytest.mark.asyncio(loop_scope="module")
async def test_eager_false_sends_nothing_ahead(tmp_path: Path, client: Any, watch: Watch) -> None:
    log = str(tmp_path / "log")
    g = ag.Graph()
    g.add("a", functools.partial(hold, log), kind="cpu")
    g.add("b", functools.partial(inc, log), deps=["a"], kind="cpu")
    run = asyncio.ensure_future(ag.run(g, backend=ag.DaskBackend(client, eager=False)))
    await asyncio.to_thread(STARTED.wait, 30)
    RELEASE.set()
    done = await run
    assert done.results == {"a": 1, "b": 2}
    # "b" reached the scheduler only once "a" had finished.
    assert watch.first("b-") > watch.first("a-", "memory")


def test_eager_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="eager must be True or False"):
        ag.DaskBackend(eager="yes")  # type: ignore[arg-type]


async def test_a_store_run_sends_nothing_ahead_and_commits_every_result(tmp_path: Path) -> None:
    # With a store each result is loaded here (its bytes), which can fail after Dask
    # finished the task: nothing goes ahead (see the next test), and every result is
    # committed, in the run's order.
    log = str(tmp_path / "log")
    store = tmp_path / "s.db"
    g = ag.Graph()
    g.add("a", lambda: [1, 2], kind="cpu")
    g.add("b", lambda a: [*a, 3], deps=["a"], kind="cpu")
    g.add("c", lambda b: [*b, 4], deps=["b"], kind="cpu")
    g.add("d", functools.partial(inc, log), deps=["e"], kind="cpu")
    g.add("e", lambda c: len(c), deps=["c"], kind="cpu")
    done_events: list[str] = []
    backend = ag.DaskBackend(processes=False, n_workers=2, eager=True)
    done = await ag.run(
        g,
        backend=backend,
        store=store,
        on_event=lambda e: done_events.append(e.task) if e.kind.value == "done" else None,
    )
    assert done.results == {"a": [1, 2], "b": [1, 2, 3], "c": [1, 2, 3, 4], "e": 4, "d": 5}
    assert done_events == ["a", "b", "c", "e", "d"]
    loaded = ag.load(g, store)
    assert loaded.results == done.results
    assert all(s is ag.State.DONE for s in loaded.status.values())


class _NoLoad:
    """Pickles on a worker; its unpickling raises (on the driver, here)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse_to_load, ())


def _refuse_to_load() -> None:
    raise RuntimeError("this value cannot be loaded on the driver")


def _unloadable() -> _NoLoad:
    return _NoLoad()


@pytest.mark.asyncio(loop_scope="module")
async def test_nothing_runs_ahead_of_an_input_the_driver_must_load(
    tmp_path: Path, client: Any
) -> None:
    """Found trying eager=True from outside: with a store, an input whose value cannot be
    loaded on the driver fails there after Dask finished it; its dependent, sent ahead,
    had run on the cluster, recorded skipped. Now nothing goes ahead of an input whose
    value the driver loads (and the failed load's ``-bytes`` future is released: it was
    left to the client as long as the error's traceback lived)."""
    log = str(tmp_path / "log")
    g = ag.Graph()
    g.add("a", _unloadable, kind="cpu")
    g.add("b", functools.partial(inc, log), deps=["a"], kind="cpu")
    done = await ag.run(
        g, backend=ag.DaskBackend(client, eager=True), store=tmp_path / "s.db"
    )
    assert done.status["a"] is ag.State.FAILED
    assert "cannot be loaded on the driver" in str(done.errors["a"])
    assert done.status["b"] is ag.State.SKIPPED
    assert "inc" not in lines(log)  # b never ran
    assert await scheduler_keys(client) == []
    assert not client.futures


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("how", ["input timeout", "open run"])
async def test_nothing_goes_ahead_of_an_input_that_may_fail_on_the_driver(
    tmp_path: Path, client: Any, watch: Watch, how: str
) -> None:
    # An input with a timeout may time out here after Dask finished it; an open run
    # loads every value here as it comes. What went ahead would have run.
    log = str(tmp_path / "log")
    g = ag.Graph()
    timeout = 600 if how == "input timeout" else None
    g.add("a", functools.partial(hold, log), kind="cpu", timeout=timeout)
    g.add("b", functools.partial(inc, log), deps=["a"], kind="cpu")
    backend = ag.DaskBackend(client, eager=True)
    if how == "open run":
        async with ag.open_run(g, backend=backend) as run:
            await asyncio.to_thread(STARTED.wait, 30)
            assert not watch.has("b-")  # sent ahead, it would have gone with "a"
            RELEASE.set()
            done = await run.wait()
    else:
        sent = asyncio.ensure_future(ag.run(g, backend=backend))
        await asyncio.to_thread(STARTED.wait, 30)
        assert not watch.has("b-")
        RELEASE.set()
        done = await sent
    assert done.results == {"a": 1, "b": 2}


# -- what a stopped run records of what went ahead (the workers' gate) --------------------


async def _stopped_once(g: ag.Graph, client: Any, monkeypatch: pytest.MonkeyPatch) -> ag.Graph:
    """Run ``g`` with ``eager=True``; the driver never hears that "a" finished (its
    report is held back, as on a slow link), and the run's deadline passes once "b",
    sent ahead behind "a", has begun on the cluster (STARTED)."""
    from conftest import DeadlineAtSignal

    from asyncgraph._executors.dask import DaskExecutor
    from asyncgraph._lifetime import start
    from asyncgraph._options import RunOptions

    landed = DaskExecutor._landed
    never = asyncio.Event()

    async def held_back(self: Any, name: str, future: Any) -> Any:
        if name == "a":
            await never.wait()
        return await landed(self, name, future)

    monkeypatch.setattr(DaskExecutor, "_landed", held_back)
    clock = DeadlineAtSignal()

    async def when_b_began() -> None:
        await asyncio.to_thread(STARTED.wait, 30)
        clock.passed.set()

    signal = asyncio.ensure_future(when_b_began())
    try:
        backend = ag.DaskBackend(client, eager=True)
        return await start(g, RunOptions(deadline=clock.DEADLINE, clock=clock, backend=backend))
    finally:
        signal.cancel()
        for waiter in clock._waiters:
            waiter.cancel()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_stopped_run_records_what_went_ahead_and_began_as_begun(
    tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was the price of eager=True: a run stopped as an input finished on the cluster
    recorded the task sent behind it "did not start", though it had begun there. The
    run now closes the workers' gate and asks them."""
    log = str(tmp_path / "log")
    g = ag.Graph()
    g.add("a", functools.partial(inc, log, 0), kind="cpu")
    g.add("b", functools.partial(hold_on, log), deps=["a"], kind="cpu")
    g.add("c", functools.partial(inc, log), deps=["b"], kind="cpu")
    done = await _stopped_once(g, client, monkeypatch)
    RELEASE.set()
    b = done.records["b"]
    assert b.status is ag.State.CANCELLED
    assert b.attempts == 1 and b.started is not None
    assert "had begun on the Dask cluster" in str(b.error), b.error
    c = done.records["c"]  # sent ahead behind "b": it cannot have begun
    assert c.status is ag.State.CANCELLED and c.attempts == 0
    assert "did not start" in str(c.error), c.error
    assert done.status["a"] is ag.State.CANCELLED
    assert await scheduler_keys(client) == []
    assert lines(log) == ["inc", "hold"]  # "c" never ran, though "b" returned meanwhile


@pytest.mark.asyncio(loop_scope="module")
async def test_workers_that_cannot_be_asked_leave_what_went_ahead_as_may_have_begun(
    tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncgraph._executors import _dask_worker

    def broken(token: str) -> list[str]:
        raise OSError("the worker cannot answer")

    monkeypatch.setattr(_dask_worker, "close_gate", broken)  # these workers: threads here
    log = str(tmp_path / "log")
    g = ag.Graph()
    g.add("a", functools.partial(inc, log, 0), kind="cpu")
    g.add("b", functools.partial(hold_on, log), deps=["a"], kind="cpu")
    done = await _stopped_once(g, client, monkeypatch)
    RELEASE.set()
    b = done.records["b"]
    assert b.status is ag.State.CANCELLED and b.attempts == 0  # not known to have begun
    assert "may have begun there: the workers could not be asked" in str(b.error), b.error
    assert "the worker cannot answer" in str(b.error)
    assert await scheduler_keys(client) == []
