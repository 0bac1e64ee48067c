"""``_sync``: run_sync's loop, its signal handling and its bounded close, piece by piece.

The whole path (a real SIGINT/SIGTERM to a script, run_sync under asyncio.run) is in
tests/test_trust_cancel.py; here each part is driven directly, with no signal sent to
the test process and no wall time waited for (except the one grace that is the point).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import Any

import pytest

import asyncgraph as ag
from asyncgraph import _sync
from asyncgraph._sync import _loop_factory, _shut_down, _Signals


@pytest.fixture
def default_handlers() -> Iterator[None]:
    """The handlers as Python has them (and as they were, afterwards)."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


@pytest.mark.usefixtures("default_handlers")
def test_handlers_are_installed_while_it_runs_and_restored_after() -> None:
    signals = _Signals()
    signals.install()
    try:
        assert signal.getsignal(signal.SIGINT) == signals.handle
        assert signal.getsignal(signal.SIGTERM) == signals.handle
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.usefixtures("default_handlers")
def test_a_programs_own_handler_is_kept() -> None:
    def own(signum: int, frame: Any) -> None:
        pass

    signal.signal(signal.SIGTERM, own)
    signals = _Signals()
    signals.install()
    try:
        assert signal.getsignal(signal.SIGTERM) is own
        assert signal.getsignal(signal.SIGINT) == signals.handle
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGTERM) is own


def test_a_signal_before_the_run_started_cancels_it_when_attached() -> None:
    signals = _Signals()
    signals.handle(signal.SIGINT, None)  # no loop yet: only remembered
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(asyncio.Event().wait())
        signals.attach(loop, task)
        with pytest.raises(asyncio.CancelledError) as caught:
            loop.run_until_complete(task)
        assert caught.value.args == ("Ctrl-C (SIGINT)",)
    finally:
        loop.close()
    assert isinstance(signals.exception(), KeyboardInterrupt)


def test_sigterm_wins_over_a_later_sigint() -> None:
    signals = _Signals()
    assert signals.why() is None and signals.exception() is None
    signals.handle(signal.SIGTERM, None)
    signals.handle(signal.SIGINT, None)
    assert signals.why() == "SIGTERM"
    stopped = signals.exception()
    assert isinstance(stopped, ag.Terminated) and stopped.code == 143


def test_a_signal_during_the_run_cancels_it_on_its_loop() -> None:
    signals = _Signals()
    loop = asyncio.new_event_loop()
    try:

        async def main() -> None:
            signals.handle(signal.SIGTERM, None)  # as if from the signal handler
            await asyncio.Event().wait()

        task = loop.create_task(main())
        signals.attach(loop, task)
        with pytest.raises(asyncio.CancelledError) as caught:
            loop.run_until_complete(task)
        assert caught.value.args == ("SIGTERM",)
    finally:
        loop.close()


def test_the_close_leaves_a_task_that_swallows_its_cancellation() -> None:
    """asyncio.Runner would wait for it forever; after the grace the loop closes anyway."""
    loop = asyncio.new_event_loop()
    release = asyncio.Event()
    cancelled = 0

    async def stubborn() -> None:
        nonlocal cancelled
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled += 1

    try:
        task = loop.create_task(stubborn())
        loop.run_until_complete(asyncio.sleep(0))
        _shut_down(loop, 0.01, None)
        assert cancelled == 1 and not task.done()
        release.set()
        loop.run_until_complete(task)  # let it go, so nothing is left behind
    finally:
        loop.close()


def test_the_close_waits_for_the_runs_own_task() -> None:
    """The run's main task is waited for to its end: its cleanup is bounded already."""
    loop = asyncio.new_event_loop()
    cleaned: list[str] = []

    async def main() -> ag.Graph:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)
            cleaned.append("committed")
        return ag.Graph()  # pragma: no cover - cancelled above

    try:
        task = loop.create_task(main())
        loop.run_until_complete(asyncio.sleep(0))
        _shut_down(loop, 0.01, task)
        assert task.cancelled() and cleaned == ["committed"]
    finally:
        loop.close()


def test_the_loop_is_uvloops_when_installed() -> None:
    import uvloop

    assert _loop_factory() is uvloop.new_event_loop


def test_run_sync_in_a_running_loop_runs_in_a_helper_thread() -> None:
    import threading

    seen: list[str] = []

    async def where() -> None:  # a coroutine runs on the run's loop, in its thread
        seen.append(threading.current_thread().name)

    async def main() -> ag.Graph:
        g = ag.Graph()
        g.add("where", where)
        return ag.run_sync(g)

    out = asyncio.run(main())
    assert out.status["where"] is ag.State.DONE
    assert seen == ["asyncgraph-run_sync"]
    assert _sync.run_sync is ag.run_sync
