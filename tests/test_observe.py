"""Watching a run: on_event (sync and async), progress bars, logging, open_run."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import sys

import pytest

import asyncgraph as ag
from asyncgraph import EventKind as K


def small_graph() -> ag.Graph:
    r"""
      a
      |
      b  (fails twice: one retry, then failed)
      |
      c  (skipped)
    """
    g = ag.Graph()

    @g.task
    async def a() -> int:
        return 1

    @g.task(retries=1, retry_delay=0.001)
    async def b(a: int) -> int:
        raise ValueError("boom")

    @g.task
    async def c(b: int) -> int:
        return 2

    return g


EXPECTED = [
    (K.QUEUED, "a", 0), (K.QUEUED, "b", 0), (K.QUEUED, "c", 0),
    (K.STARTED, "a", 1), (K.DONE, "a", 1),
    (K.STARTED, "b", 1), (K.RETRYING, "b", 1), (K.STARTED, "b", 2), (K.FAILED, "b", 2),
    (K.SKIPPED, "c", 0),
]


async def test_on_event_sync_sees_every_transition_in_order() -> None:
    events: list[ag.Event] = []
    out = await ag.run(small_graph(), on_event=events.append)
    assert [(e.kind, e.task, e.attempt) for e in events] == EXPECTED
    assert isinstance(events[6].error, ValueError)  # retrying carries the error
    assert isinstance(events[-2].error, ValueError)
    times = [e.time for e in events]
    assert times == sorted(times)
    assert out.status["c"] is ag.State.SKIPPED


async def test_on_event_async_is_awaited_in_order_before_run_returns() -> None:
    seen: list[tuple[K, str, int]] = []

    async def record(event: ag.Event) -> None:
        await asyncio.sleep(0)  # yields: later events queue up meanwhile
        await asyncio.sleep(0)
        seen.append((event.kind, event.task, event.attempt))

    out = await ag.run(small_graph(), on_event=record)
    assert seen == EXPECTED  # all of them, in order, by the time run() returns
    assert out.status["a"] is ag.State.DONE


async def test_run_does_not_block_on_an_async_callback() -> None:
    release = asyncio.Event()
    delivered: list[str] = []

    async def hold(event: ag.Event) -> None:
        await release.wait()
        delivered.append(event.task)

    g = ag.Graph()
    probe = asyncio.Event()

    @g.task
    async def only() -> None:
        probe.set()  # the task ran while the callback for 'queued' was still held

    run = asyncio.ensure_future(ag.run(g, on_event=hold))
    await probe.wait()
    assert delivered == []
    release.set()
    await run
    assert delivered == ["only", "only", "only"]  # queued, started, done


async def test_a_failing_callback_is_logged_and_the_run_goes_on(caplog) -> None:
    def bad(event: ag.Event) -> None:
        raise RuntimeError("observer bug")

    async def bad_async(event: ag.Event) -> None:
        raise RuntimeError("async observer bug")

    with caplog.at_level(logging.ERROR, logger="asyncgraph"):
        out = await ag.run(small_graph(), on_event=bad)
        out2 = await ag.run(small_graph(), on_event=bad_async)
    assert out.status["a"] is ag.State.DONE and out2.status["a"] is ag.State.DONE
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 * len(EXPECTED)
    assert all("on_event callback failed" in m for m in messages)
    assert caplog.records[0].exc_info is not None


async def test_logging_is_opt_in_and_adds_no_handler(caplog) -> None:
    logger = logging.getLogger("asyncgraph")
    assert logger.handlers == []
    with caplog.at_level(logging.INFO, logger="asyncgraph"):
        await ag.run(small_graph())
    assert [r.getMessage() for r in caplog.records] == [
        "task 'b' retrying (attempt 1): ValueError: boom",
        "task 'b' failed (attempt 2): ValueError: boom",
    ]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="asyncgraph"):
        await ag.run(small_graph())
    assert len(caplog.records) == len(EXPECTED)
    assert logger.handlers == []


def test_options_are_checked_with_their_names() -> None:
    g = small_graph()
    with pytest.raises(ValueError, match="progress"):
        ag.run_sync(g, progress="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="progress"):
        ag.run_sync(g, progress=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_event"):
        ag.run_sync(g, on_event="print")  # type: ignore[arg-type]


def test_progress_true_is_silent_when_stderr_is_not_a_terminal() -> None:
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink):
        out = ag.run_sync(small_graph(), progress=True)
    assert out.status["a"] is ag.State.DONE
    assert sink.getvalue() == ""


def test_progress_force_draws_counts_on_a_non_terminal() -> None:
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink):
        out = ag.run_sync(small_graph(), progress="force")
    text = sink.getvalue()
    assert out.status["b"] is ag.State.FAILED
    assert "3/3" in text
    assert "done 1 · failed 1 · skipped 1" in text


def test_progress_on_graph_methods_and_in_a_running_loop() -> None:
    sink = io.StringIO()

    async def inside() -> ag.Graph:
        return small_graph().run_sync(progress="force")  # helper thread

    with contextlib.redirect_stderr(sink):
        out = asyncio.run(inside())
    assert out.status["a"] is ag.State.DONE
    assert "3/3" in sink.getvalue()


def test_progress_needs_tqdm_and_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    with pytest.raises(ImportError, match=r"asyncgraph\[progress\]"):
        ag.run_sync(small_graph(), progress="force")


def test_progress_shows_running_tasks() -> None:
    from asyncgraph._observe import _Progress

    class Bar:
        total = 0
        postfix = ""

        def set_postfix_str(self, text: str, refresh: bool = True) -> None:
            self.postfix = text

        def update(self, n: int) -> None:
            pass

        def refresh(self) -> None:
            pass

        def close(self) -> None:
            pass

    p = _Progress(Bar)
    p.start()
    for i in range(5):
        p(ag.Event(K.QUEUED, f"t{i}", 0, 1.0))
    for i in range(5):
        p(ag.Event(K.STARTED, f"t{i}", 1, 1.0))
    p(ag.Event(K.DONE, "t0", 1, 2.0))
    assert p.bar.total == 5
    assert p.bar.postfix == "done 1 · failed 0 · skipped 0 · running t1, t2, t3 +1"


# -- open_run ----------------------------------------------------------------------------


async def test_open_run_events_end_with_the_run() -> None:
    async with ag.open_run(small_graph()) as r:
        seen = [(e.kind, e.task, e.attempt) async for e in r.events()]
    assert seen == EXPECTED
    assert r.graph.status["b"] is ag.State.FAILED
    # Iterating after the end replays the history.
    assert len([e async for e in r.events()]) == len(EXPECTED)


async def test_as_completed_yields_early_results_before_the_graph_ends() -> None:
    r"""
      fast      slow (waits until the consumer has seen fast's result)
    """
    g = ag.Graph()
    fast_seen = asyncio.Event()

    @g.task
    async def fast() -> str:
        return "early"

    @g.task
    async def slow() -> str:
        await fast_seen.wait()
        return "late"

    got = []
    async with ag.open_run(g) as r:
        async for name, value in r.as_completed():
            got.append((name, value))
            if name == "fast":
                assert not r.done  # slow is still running: an early result
                fast_seen.set()
    assert got == [("fast", "early"), ("slow", "late")]
    assert r.graph.results == {"fast": "early", "slow": "late"}


async def test_an_error_in_the_block_cancels_the_run() -> None:
    g = ag.Graph()
    started = asyncio.Event()

    @g.task
    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    with pytest.raises(KeyError):
        async with ag.open_run(g) as r:
            await started.wait()
            raise KeyError("in the block")
    assert r.done
    assert r.graph.status["forever"] is ag.State.CANCELLED


async def test_open_run_cancel_and_fail_fast() -> None:
    g = ag.Graph()
    started = asyncio.Event()

    @g.task
    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async with ag.open_run(g) as r:
        await started.wait()
        r.cancel()
        out = await r.wait()
    assert out.status["forever"] is ag.State.CANCELLED
    assert r.graph.status["forever"] is ag.State.CANCELLED
    with pytest.raises(ag.TaskFailures):
        async with ag.open_run(small_graph(), fail_fast=True):
            pass


async def test_open_run_misuse_is_explained() -> None:
    r = ag.open_run(small_graph())
    with pytest.raises(RuntimeError, match="async with"):
        r.graph  # noqa: B018 - the property raises
    with pytest.raises(ValueError, match="progress"):
        ag.open_run(small_graph(), progress="maybe")  # type: ignore[arg-type]
    async with ag.open_run(small_graph(), max_io=2) as r:
        with pytest.raises(RuntimeError, match="not ended"):
            r.graph  # noqa: B018


# -- found by review ------------------------------------------------------------------------


async def test_a_callback_awaiting_something_cancelled_does_not_cancel_the_run(caplog) -> None:
    async def callback(event: ag.Event) -> None:
        if event.kind is K.DONE:
            cancelled = asyncio.get_running_loop().create_future()
            cancelled.cancel()
            await cancelled  # raises CancelledError inside the callback only

    g = ag.Graph()
    g.add("a", lambda: 1, deps=[])
    with caplog.at_level(logging.ERROR, logger="asyncgraph"):
        out = await ag.run(g, on_event=callback)
    assert out.results["a"] == 1
    assert "on_event callback failed" in caplog.text


async def test_a_stuck_async_callback_cannot_hold_a_run_past_its_deadline(caplog) -> None:
    never = asyncio.Event()

    async def stuck(event: ag.Event) -> None:
        await never.wait()

    g = ag.Graph()
    for i in range(3):
        g.add(f"t{i}", lambda: None, deps=[])
    with caplog.at_level(logging.WARNING, logger="asyncgraph"), anyio_guard():
        out = await ag.run(g, on_event=stuck, deadline=0.2)
    assert set(out.status.values()) == {ag.State.DONE}
    assert "deadline passed" in caplog.text and "not delivered" in caplog.text


def anyio_guard() -> contextlib.AbstractContextManager[object]:
    import anyio

    return anyio.fail_after(60)  # a hang fails the test instead of the whole suite


async def test_a_failed_store_write_still_settles_every_task(tmp_path) -> None:
    from asyncgraph._store import SQLiteStore

    class Failing(SQLiteStore):
        def write(self, run_id: int, rows: object) -> None:
            raise OSError("disk full")

    events: list[ag.Event] = []
    g = ag.Graph()
    g.add("a", lambda: 1, deps=[])
    g.add("b", lambda a: a + 1, deps=["a"])
    store = Failing(tmp_path / "s.db")
    with pytest.raises(ag.StoreError, match="disk full"):
        await ag.run(g, store=store, on_event=events.append)
    store.close()
    terminal = {K.DONE, K.FAILED, K.SKIPPED, K.CANCELLED}
    ended = {e.task for e in events if e.kind in terminal}
    started = {e.task for e in events if e.kind is K.STARTED}
    assert started <= ended  # every task that started got its terminal event
    assert all(e.kind is not K.DONE for e in events)  # nothing was durable


# -- Watch: the listeners' lifetime is an async with around the run ------------------------


class Recorder:
    """An async on_event callback that waits for the test between events."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, event: ag.Event) -> None:
        await self.gate.wait()
        self.got.append(event.task)


def queued(name: str) -> ag.Event:
    return ag.Event(K.QUEUED, name, 0, 1.0)


async def test_watch_delivers_what_is_queued_when_the_run_ends() -> None:
    from asyncgraph._observe import Watch

    recorder = Recorder()
    recorder.gate.clear()  # nothing is delivered while the run goes on
    watch = Watch(False, recorder)
    assert watch.emit is not None
    async with watch:
        watch.emit(queued("a"))
        watch.emit(queued("b"))
        await asyncio.sleep(0)
        assert recorder.got == []
        recorder.gate.set()
    assert recorder.got == ["a", "b"]  # drained before the block is left


async def test_watch_still_delivers_after_a_run_that_raised() -> None:
    from asyncgraph._observe import Watch

    recorder = Recorder()
    recorder.gate.clear()
    watch = Watch(False, recorder)
    assert watch.emit is not None
    with pytest.raises(KeyError):
        async with watch:
            watch.emit(queued("a"))
            recorder.gate.set()
            raise KeyError("a failure of the run: its events still count")
    assert recorder.got == ["a"]


async def test_watch_stops_listening_when_the_run_is_cancelled() -> None:
    from asyncgraph._observe import Watch

    recorder = Recorder()
    recorder.gate.clear()
    watch = Watch(False, recorder)
    assert watch.emit is not None and watch.relay is not None
    with pytest.raises(asyncio.CancelledError):
        async with watch:
            watch.emit(queued("a"))
            await asyncio.sleep(0)  # the relay is inside the callback, waiting
            raise asyncio.CancelledError
    relay = watch.relay.task
    assert relay is not None
    await asyncio.wait((relay,))
    assert relay.cancelled() and recorder.got == []


async def test_open_run_reads_the_runs_records_as_it_goes(tmp_path) -> None:
    """With a store too, where the run (and its records) exist only once the store is
    read: as_completed yields each result, cancel() gives the graph so far."""
    g = ag.Graph()
    first_seen = asyncio.Event()

    @g.task
    async def first() -> int:
        return 1

    @g.task
    async def second() -> int:
        await first_seen.wait()
        await asyncio.Event().wait()  # until cancelled
        return 2

    async with ag.open_run(g, store=tmp_path / "s.db") as r:
        async for name, value in r.as_completed():
            assert (name, value) == ("first", 1)
            first_seen.set()
            r.cancel()
    assert r.graph.status == {"first": ag.State.DONE, "second": ag.State.CANCELLED}
    assert r.graph.results == {"first": 1}
