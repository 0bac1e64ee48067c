"""A task Dask placed on a worker that another task killed, on a cluster the run owns.

Dask fails every task that was on a worker when it died (``KilledWorker`` under the run's
``allowed_failures=0``), also one that was only waiting there. The worker shim notes in
a journal that an attempt started before it calls the task: an attempt that never
started is submitted again, once, without counting against its ``retries``; one that
did start fails with :class:`WorkerDiedError` and is retried under its ``retries``.

Each test starts a LocalCluster of one worker process (the run's own), and orders the
tasks with named pipes (a blocking open/read, no polling) and, for the waiting task,
a scheduler plugin on the run's scheduler (it runs in this process). Skipped without
``distributed``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import asyncgraph as ag

distributed = pytest.importorskip("distributed")

# Worker processes forked from one server (tests/dask_fixtures.py): a restart is a fork.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("forked_dask_workers"),
]


def noted(log: str, text: str) -> None:
    with open(log, "a") as f:
        f.write(text + "\n")


def one(log: str) -> int:
    noted(log, "A")
    return 1


def kills_when_told(log: str, fifo: str) -> None:
    """Runs, waits until the test writes to ``fifo``, then kills its worker."""
    noted(log, "K")
    with open(fifo, "rb") as f:
        f.read()
    os._exit(1)


def add_one(log: str, a: int) -> int:
    noted(log, "D")
    return a + 1


def started_then_waits(log: str, fifo: str) -> str:
    """Says it runs (through ``fifo``), then is killed with its worker."""
    noted(log, "S")
    with open(fifo, "wb") as f:
        f.write(b"started")
    time.sleep(3600)  # the worker dies under it
    return "never"


def kills_once_told(log: str, fifo: str) -> None:
    noted(log, "K")
    with open(fifo, "rb") as f:
        f.read()
    os._exit(1)


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def journals() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("asyncgraph-dask-")}


async def processing(prefix: str) -> None:
    """Wait until a task whose key starts with ``prefix`` is processing on a worker of
    a scheduler running in this process (the run's own): a plugin's transition, no
    polling."""
    seen = asyncio.Event()
    schedulers = [s for s in list(distributed.Scheduler._instances) if s.status.name == "running"]

    class Watch(distributed.diagnostics.plugin.SchedulerPlugin):  # type: ignore[misc]
        def transition(self, key: Any, start: str, finish: str, *a: Any, **k: Any) -> None:
            if str(key).startswith(prefix) and finish == "processing":
                seen.set()

    for s in schedulers:
        s.add_plugin(Watch(), name="asyncgraph-test-watch")
        if any(str(k).startswith(prefix) and ts.state == "processing" for k, ts in s.tasks.items()):
            seen.set()
    try:
        await seen.wait()
    finally:
        for s in schedulers:
            s.remove_plugin("asyncgraph-test-watch")


def test_a_task_waiting_on_a_worker_another_task_killed_runs_again_for_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = str(tmp_path / "ran.log")
    fifo = str(tmp_path / "release")
    os.mkfifo(fifo)
    # The run's journal goes to a temporary directory of this test's own, so another
    # Dask run on the machine (a parallel session) cannot add one to the listing.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))

    async def release_the_killer(a: int) -> int:
        # D (A's CPU dependent) is on the only worker, queued behind the running K:
        # now K kills that worker.
        await processing("D-")

        def write() -> None:
            with open(fifo, "wb") as f:
                f.write(b"go")

        await asyncio.to_thread(write)
        return a

    g = ag.Graph()
    g.add("A", functools.partial(one, log), kind="cpu", priority=1)
    g.add("K", functools.partial(kills_when_told, log, fifo), kind="cpu")
    g.add("D", functools.partial(add_one, log), deps=["A"], kind="cpu")  # retries=0
    g.add("L", release_the_killer, deps=["A"])
    before, journals_before = children(), journals()
    done = ag.run_sync(g, backend=ag.DaskBackend(n_workers=1))
    assert done.status["K"] is ag.State.FAILED
    assert isinstance(done.records["K"].error, ag.WorkerDiedError)
    # D never started before the worker died: it ran once, on the new worker, and its
    # free resubmission is not an attempt.
    assert done.status["D"] is ag.State.DONE, done.records["D"].error
    assert done.results["D"] == 2
    assert done.records["D"].attempts == 1
    lines = Path(log).read_text().split()
    assert lines.count("D") == 1
    assert lines.count("K") == 1
    assert children() <= before
    assert journals() <= journals_before  # the run's journal went with it


def test_without_retries_a_started_task_on_a_dead_worker_fails(tmp_path: Path) -> None:
    log = str(tmp_path / "ran.log")
    fifo = str(tmp_path / "started")
    os.mkfifo(fifo)
    g = ag.Graph()
    # A started attempt is not resubmitted: it fails (retried only under its retries,
    # as test_dask_processes' dying task with retries=1 shows).
    g.add("S", functools.partial(started_then_waits, log, fifo), kind="cpu")
    g.add("K", functools.partial(kills_once_told, log, fifo), kind="cpu")
    g.add("after", lambda s: s, deps=["S"], kind="cpu")
    done = ag.run_sync(g, backend=ag.DaskBackend(n_workers=1, threads_per_worker=2))
    assert done.status["S"] is ag.State.FAILED
    err = done.records["S"].error
    assert isinstance(err, ag.WorkerDiedError)
    assert "Dask worker running task 'S' died" in str(err)
    assert done.status["after"] is ag.State.SKIPPED
    assert Path(log).read_text().split().count("S") == 1
