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
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import psutil
import pytest
from conftest import statuses

import asyncgraph as ag
from asyncgraph import _runner

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
        delay = _runner._backoff(task, attempt)
        expected = min(0.1 * 2.0 ** min(attempt - 1, 64), _runner.MAX_BACKOFF)
        assert 0.5 * expected <= delay <= 1.5 * expected
    # A retry_delay longer than the cap is honoured as the first wait, and not grown.
    slow = ag.Graph().add("t", lambda: None, retry_delay=5000.0)
    assert _runner._backoff(slow, 1) <= 1.5 * 5000.0
    assert _runner._backoff(slow, 3000) <= 1.5 * 5000.0


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
def test_an_abandoned_thread_does_not_keep_the_process_alive(
    tmp_path: Path, mode: str
) -> None:
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
