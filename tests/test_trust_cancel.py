"""Stopping a run you can trust (issue 10, items 6, 9, 10, 11, 12 and 13).

* SIGTERM to a driver cancels its run like Ctrl-C, and the CLI exits 143;
* Ctrl-C stops ``run_sync`` called from a coroutine under ``asyncio.run``;
* a task that swallows its cancellation is abandoned after ``cancel_grace``;
* an async ``on_event`` callback that never returns is given up after ``cancel_grace``;
* a thread abandoned by a timeout does not keep the process alive;
* ``retries=2000`` works (the backoff is capped and never overflows).

The signal cases run a driver in a subprocess (tests/trust_cancel_driver.py), wait for
its "started" line, send the signal and then read the store and the process table.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import psutil
import pytest
from conftest import run_until_deadline, statuses

import asyncgraph as ag
from asyncgraph import _clock

GUARD = 60  # seconds: a guard against a hang, never a bound on how fast
ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("trust_cancel_driver.py")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


# -- 13: huge retries ------------------------------------------------------------------


def test_2000_retries_with_no_delay_work() -> None:
    r"""
    flaky (fails 1500 times, then returns)    other (returns at once)
    """
    calls = {"flaky": 0}

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] <= 1500:
            raise ValueError(f"failure {calls['flaky']}")
        return "finally"

    g = ag.Graph()
    g.add("other", lambda: "other's result")
    g.add("flaky", flaky, retries=2000, retry_delay=0)
    out = ag.run_sync(g)
    assert statuses(out) == {"other": "done", "flaky": "done"}
    assert out.results == {"other": "other's result", "flaky": "finally"}
    assert out.records["flaky"].attempts == 1501


def test_a_task_failing_past_1024_attempts_keeps_the_other_results() -> None:
    g = ag.Graph()
    g.add("other", lambda: 7)

    def always() -> None:
        raise ValueError("no")

    g.add("hopeless", always, retries=1100, retry_delay=0)
    g.add("after", lambda h: h, deps=["hopeless"])
    out = ag.run_sync(g)
    assert statuses(out) == {"other": "done", "hopeless": "failed", "after": "skipped"}
    assert out.results["other"] == 7
    assert out.records["hopeless"].attempts == 1101
    assert isinstance(out.errors["hopeless"], ValueError)


def test_the_backoff_is_capped_and_jittered() -> None:
    task = ag.Graph().add("t", lambda: None, retry_delay=0.1)
    for attempt in (1, 2, 10, 1024, 1025, 10**6):
        delay = _clock.backoff(task, attempt)
        expected = min(0.1 * 2.0 ** min(attempt - 1, 64), _clock.MAX_BACKOFF)
        assert 0.5 * expected <= delay <= 1.5 * expected
    # A retry_delay longer than the cap is honoured as the first wait, and not grown.
    slow = ag.Graph().add("t", lambda: None, retry_delay=5000.0)
    assert _clock.backoff(slow, 1) <= 1.5 * 5000.0
    assert _clock.backoff(slow, 3000) <= 1.5 * 5000.0


# -- 12: an abandoned thread does not hold the process open ----------------------------


def start_driver(mode: str, directory: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), mode, str(directory), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=GUARD)
    finally:
        proc.kill()
    return out, err


@pytest.mark.parametrize("mode", ["abandon-plain", "abandon-helper", "abandon-await"])
def test_an_abandoned_thread_does_not_keep_the_process_alive(tmp_path: Path, mode: str) -> None:
    r"""
      abandoned (sleeps an hour, timeout=0.1)    normal (sleeps 50 ms, writes a marker)

    The script ends right after the run: the process must end too, long before the hour
    (GUARD is the hang guard), and the normal thread still ran to its end first.
    """
    out, err = finish(start_driver(mode, tmp_path))
    lines = out.splitlines()
    assert lines[-1] == "returned", out + err
    assert json.loads(lines[-2]) == {"abandoned": "failed", "normal": "done"}
    assert (tmp_path / "normal.done").exists()


# -- 6 (SIGTERM) and 9 (Ctrl-C in helper-thread mode): a signal cancels the run ---------


def signal_after_start(proc: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    """Wait for the driver's "started <worker pid>", send ``signum``, collect the output."""
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("started"), line + proc.communicate(timeout=GUARD)[1]
        worker = int(line.split()[1])
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=GUARD)
    finally:
        proc.kill()
    return worker, out, err


def assert_cancelled_cleanly(directory: Path, worker: int, why: str) -> None:
    """The store says the run was cancelled, every unfinished task cancelled (with the
    signal as the reason), the done one kept; and the worker process is gone."""
    store = ag.SQLiteStore(directory / "store.db")
    try:
        (last,) = store.runs()
        tasks = store.tasks()
    finally:
        store.close()
    assert last.status == "cancelled"
    assert {n: t.status.value for n, t in tasks.items()} == {
        "warm": "done",
        "io_block": "cancelled",
        "thread_block": "cancelled",
        "cpu_block": "cancelled",
        "watcher": "cancelled",
        "after": "cancelled",
    }
    assert why in (tasks["io_block"].error_message or ""), tasks["io_block"]
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(worker).wait(timeout=GUARD)  # gone: no such process (or reaped)
    assert not psutil.pid_exists(worker)


def test_sigterm_cancels_run_sync_like_ctrl_c_and_exits_143(tmp_path: Path) -> None:
    proc = start_driver("sigterm", tmp_path)
    worker, out, err = signal_after_start(proc, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "the run ended by itself" not in out
    assert "Traceback" not in err, err
    assert_cancelled_cleanly(tmp_path, worker, "stopped by SIGTERM")


@pytest.mark.parametrize(
    ("signum", "raised", "why"),
    [
        (signal.SIGINT, "KeyboardInterrupt", "stopped by Ctrl-C (SIGINT)"),
        (signal.SIGTERM, "Terminated", "stopped by SIGTERM"),
    ],
)
def test_a_signal_stops_run_sync_called_under_asyncio_run(
    tmp_path: Path, signum: int, raised: str, why: str
) -> None:
    r"""
    asyncio.run(main()), main calling run_sync (helper-thread mode): asyncio's own SIGINT
    handler would only cancel main, which is blocked in run_sync until the run's end.
    """
    proc = start_driver("sigint-helper", tmp_path)
    worker, out, err = signal_after_start(proc, signum)
    assert "the run ended by itself" not in out
    assert f"interrupted {raised}" in out, out + err
    assert proc.returncode == 0, err
    assert_cancelled_cleanly(tmp_path, worker, why)


def test_run_sync_restores_the_signal_handlers_and_keeps_the_programs_own() -> None:
    r"""
    A program's own SIGTERM handler is left in place (run_sync takes only a signal left
    at Python's default), and the default ones are back after the run.
    """
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        g = ag.Graph()
        g.add("signal_myself", lambda: os.kill(os.getpid(), signal.SIGTERM))
        out = ag.run_sync(g)
        assert statuses(out) == {"signal_myself": "done"}
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    quiet = ag.Graph()
    quiet.add("a", lambda: 1)
    ag.run_sync(quiet)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_to_the_cli_exits_143_with_the_store_cancelled(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncgraph",
            "run",
            f"{DRIVER}:cli_graph",
            "--store",
            str(tmp_path / "store.db"),
            "--cpu-workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env(), "TRUST_CANCEL_DIR": str(tmp_path)},
    )
    worker, out, err = signal_after_start(proc, signal.SIGTERM)
    assert proc.returncode == 143, out + err
    assert "terminated by SIGTERM" in err
    assert "Traceback" not in err, err
    assert_cancelled_cleanly(tmp_path, worker, "stopped by SIGTERM")


# -- 10: a task that swallows its cancellation is abandoned after cancel_grace ----------

GRACE = 0.2  # seconds: small, so the tests are quick; nothing asserts how long it took


class Stubborn:
    """A coroutine task that catches every cancellation and goes on waiting, until the
    test lets it go (so no task is left behind on the test's loop)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.swallowed = 0
        self.let_go = False
        self.task: asyncio.Task[object] | None = None

    async def __call__(self) -> str:
        self.task = asyncio.current_task()
        self.started.set()
        while True:
            try:
                await asyncio.sleep(HOUR)
            except BaseException:
                if self.let_go:
                    raise
                self.swallowed += 1

    async def release(self) -> None:
        self.let_go = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task


HOUR = 3600


def stubborn_graph(stubborn: Stubborn) -> ag.Graph:
    r"""
    quick (done at once)    stubborn (swallows cancellations) -> after
    """
    g = ag.Graph()
    g.add("quick", lambda: "quick")
    g.add("stubborn", stubborn)
    g.add("after", lambda s: s, deps=["stubborn"])
    return g


def abandoned_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncgraph" and r.levelno == logging.WARNING and "abandoned" in r.getMessage()
    ]


async def test_a_deadline_ends_the_run_despite_a_task_swallowing_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubborn = Stubborn()
    try:
        with anyio.fail_after(GUARD):
            out = await run_until_deadline(  # the deadline passes once 'quick' is done
                stubborn_graph(stubborn),
                {("done", "quick"), ("started", "stubborn")},
                cancel_grace=GRACE,
            )
        assert statuses(out) == {"quick": "done", "stubborn": "cancelled", "after": "cancelled"}
        assert stubborn.swallowed >= 1  # it really was cancelled, and ignored it
        error = out.errors["stubborn"]
        assert isinstance(error, ag.TaskCancelled)
        assert "deadline" in str(error) and "abandoned" in str(error)
        (warning,) = abandoned_warnings(caplog)
        assert "'stubborn'" in warning and f"cancel_grace={GRACE}" in warning
    finally:
        await stubborn.release()


async def test_a_cancel_ends_the_run_despite_a_task_swallowing_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubborn = Stubborn()
    seen: list[tuple[str, str]] = []
    run = asyncio.ensure_future(
        ag.run(
            stubborn_graph(stubborn),
            cancel_grace=GRACE,
            on_event=lambda e: seen.append((e.kind.value, e.task)),
        )
    )
    try:
        with anyio.fail_after(GUARD):
            await stubborn.started.wait()
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
        assert ("cancelled", "stubborn") in seen
        (warning,) = abandoned_warnings(caplog)
        assert "'stubborn'" in warning
    finally:
        await stubborn.release()


def test_run_sync_ends_although_a_task_ignores_every_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r"""
    run_sync owns its loop: after the run abandoned the task, closing the loop must not
    wait for it either (asyncio.Runner.close would, forever).
    """
    state = {"let_go": False, "swallowed": 0}

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(HOUR)
            except BaseException:
                if state["let_go"]:
                    raise
                state["swallowed"] += 1

    g = ag.Graph()
    g.add("quick", lambda: 1)
    g.add("stubborn", stubborn)
    out = ag.run_sync(g, deadline=0.3, cancel_grace=GRACE)
    state["let_go"] = True  # the coroutine, left pending on the closed loop, may go now
    gc.collect()
    assert statuses(out) == {"quick": "done", "stubborn": "cancelled"}
    assert state["swallowed"] >= 2  # by the run, then by the loop's close
    assert abandoned_warnings(caplog)


def test_cancel_grace_is_checked() -> None:
    g = ag.Graph()
    g.add("a", lambda: 1)
    for bad, error in ((0, ValueError), (-1.0, ValueError), ("5", TypeError), (True, TypeError)):
        with pytest.raises(error, match="cancel_grace"):
            ag.run_sync(g, cancel_grace=bad)
    with pytest.raises(ValueError, match="cancel_grace"):
        ag.open_run(g, cancel_grace=float("nan"))


# -- 11: an async on_event callback that never returns ----------------------------------


async def test_a_stuck_async_on_event_callback_does_not_hang_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivered: list[str] = []

    async def stuck_callback(event: ag.Event) -> None:
        delivered.append(event.kind.value)
        if event.kind is ag.EventKind.DONE:
            await asyncio.Event().wait()  # never returns

    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a + 1, deps=["a"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g, on_event=stuck_callback, cancel_grace=GRACE)
    assert out.results == {"a": 1, "b": 2}
    assert delivered.count("done") == 1  # stuck on the first one; the rest was dropped
    (warning,) = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncgraph" and r.levelno == logging.WARNING
    ]
    assert "stuck_callback" in warning and f"cancel_grace={GRACE}" in warning
    assert "dropped" in warning


async def test_a_slow_async_on_event_callback_still_gets_every_event() -> None:
    r"""The bound is per call: a callback that keeps returning is waited for."""
    delivered: list[str] = []

    async def slow(event: ag.Event) -> None:
        await asyncio.sleep(0.01)
        delivered.append(event.kind.value)

    g = ag.Graph()
    for i in range(20):  # about 60 events of 10 ms: more than GRACE in all
        g.add(f"t{i}", lambda: None)
    with anyio.fail_after(GUARD):
        await ag.run(g, on_event=slow, cancel_grace=GRACE)
    assert delivered.count("done") == 20
