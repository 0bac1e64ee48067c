"""A CPU task that kills its own Dask worker, on a cluster the run owns (worker processes).

The run must end: the attempt that started fails with :class:`WorkerDiedError`; under
``retries`` the next attempt runs on the other (or the restarted) worker; a task that
was only queued behind the dying one is submitted again free; nothing the run started
is left (no process).

Why these hung (2 runs in 4 under load): a plain LocalCluster closes the nanny of a
worker that has not registered again within ``distributed.deploy.lost-worker-timeout``
(15 s) and never replaces it. Under load a nanny's restart of its worker took 20 s, so
the restarted worker was stopped under the retry it had just been given and, once both
workers had gone that way, the run's tasks sat in Dask's queue with no worker, for
ever. Every test here sets that timeout to 50 ms, so every restart is "too slow" (the
case that hung, made certain), and the run's own cluster must keep its workers anyway.

Each run is guarded by ``anyio.fail_after(PATIENCE)``: a hang fails the test (and the
run's own cleanup still closes the cluster) instead of blocking the suite. Skipped
without ``distributed``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import anyio
import dask
import psutil
import pytest

import asyncgraph as ag

distributed = pytest.importorskip("distributed")

# Worker processes forked from one server (tests/dask_fixtures.py): a restart is a fork.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("forked_dask_workers"),
]

PATIENCE = 120.0  # only hit when the run is stuck: then the test fails, not the suite


@pytest.fixture(autouse=True)
def restarts_are_slower_than_the_lost_worker_timeout() -> Any:
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "50ms"}):
        yield


def noted(log: str, text: str) -> None:
    with open(log, "a") as f:
        f.write(text + "\n")


def dies_first(log: str, flag: str) -> str:
    """First attempt: notes it started, then kills its worker; a later one returns."""
    noted(log, "ran")
    if os.path.exists(flag):
        return "second"
    Path(flag).touch()
    os._exit(1)


def dies(log: str, *_: Any) -> str:
    noted(log, "ran")
    os._exit(1)


def double(log: str, x: int) -> int:
    noted(log, "double")
    return 2 * x


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def run_guarded(g: ag.Graph, **options: Any) -> ag.Done:
    """``ag.run`` on a fresh loop, failed (not hung) after ``PATIENCE`` seconds."""

    async def main() -> ag.Done:
        with anyio.fail_after(PATIENCE):
            return await ag.run(g, **options)

    return anyio.run(main)


def test_a_task_that_kills_its_worker_is_retried_on_another_and_the_run_ends(
    tmp_path: Path,
) -> None:
    log = str(tmp_path / "ran.log")
    g = ag.Graph()
    g.add(
        "dies",
        functools.partial(dies_first, log, str(tmp_path / "flag")),
        kind="cpu",
        retries=1,
        retry_delay=0.01,
    )
    g.add("other", functools.partial(double, log, 21), kind="cpu")
    before = children()
    done = run_guarded(g, backend=ag.DaskBackend(n_workers=2))
    assert done.status["dies"] is ag.State.DONE, done.records["dies"].error
    assert done.results["dies"] == "second"
    assert done.records["dies"].attempts == 2
    assert done.results["other"] == 42
    assert Path(log).read_text().split().count("ran") == 2
    assert children() <= before


def test_without_retries_the_task_fails_with_worker_died_and_its_dependents_skip(
    tmp_path: Path,
) -> None:
    log = str(tmp_path / "ran.log")
    g = ag.Graph()
    g.add("dies", functools.partial(dies, log), kind="cpu")
    g.add("after", functools.partial(double, log), deps=["dies"], kind="cpu")
    g.add("later", functools.partial(double, log), deps=["after"], kind="cpu")
    before = children()
    done = run_guarded(g, backend=ag.DaskBackend(n_workers=2))
    assert done.status["dies"] is ag.State.FAILED
    assert isinstance(done.records["dies"].error, ag.WorkerDiedError)
    assert done.records["dies"].attempts == 1
    assert done.status["after"] is ag.State.SKIPPED
    assert done.status["later"] is ag.State.SKIPPED
    assert Path(log).read_text().split().count("ran") == 1
    assert children() <= before


def test_two_tasks_that_kill_their_workers_at_once_are_both_retried(tmp_path: Path) -> None:
    log = str(tmp_path / "ran.log")
    g = ag.Graph()
    for name in ("d1", "d2"):
        g.add(
            name,
            functools.partial(dies_first, log, str(tmp_path / f"{name}.flag")),
            kind="cpu",
            retries=1,
            retry_delay=0.01,
        )
    g.add("sum", lambda a, b: a + b, deps=["d1", "d2"], kind="cpu")
    before = children()
    done = run_guarded(g, backend=ag.DaskBackend(n_workers=2))
    for name in ("d1", "d2"):
        assert done.status[name] is ag.State.DONE, done.records[name].error
        assert done.records[name].attempts == 2
    assert done.results["sum"] == "secondsecond"
    assert Path(log).read_text().split().count("ran") == 4
    assert children() <= before


def test_a_task_queued_behind_a_dying_one_is_resubmitted_free(tmp_path: Path) -> None:
    # One worker process, one thread: "queued" waits on the worker that "dies" kills
    # (a CPU dependent of "first", placed next to its input), never started there.
    log = str(tmp_path / "ran.log")
    g = ag.Graph()
    g.add("first", functools.partial(double, log, 1), kind="cpu", priority=2)
    g.add("dies", functools.partial(dies, log), deps=["first"], kind="cpu", priority=1)
    g.add("queued", functools.partial(double, log), deps=["first"], kind="cpu")
    before = children()
    done = run_guarded(g, backend=ag.DaskBackend(n_workers=1))
    assert done.status["dies"] is ag.State.FAILED
    assert isinstance(done.records["dies"].error, ag.WorkerDiedError)
    assert done.status["queued"] is ag.State.DONE, done.records["queued"].error
    assert done.results["queued"] == 4
    assert done.records["queued"].attempts == 1
    # "queued" ran once; "first", whose result died with the worker, may have been run
    # again by Dask for the resubmitted "queued" (its input, recomputed on the cluster).
    assert Path(log).read_text().split().count("double") in (2, 3)
    assert children() <= before


async def close_the_run_clusters_nannies(_: int) -> int:
    """Close every nanny of the run's own cluster (a nanny that is gone, not restarting)."""
    from distributed.deploy.spec import SpecCluster

    clusters = [
        c
        for c in list(SpecCluster._instances)
        if type(c).__name__ == "RunCluster" and c.status.name == "running"
    ]
    assert len(clusters) == 1
    for nanny in list(clusters[0].workers.values()):
        await nanny.close()
    return 1


def test_a_nanny_that_is_gone_is_replaced_and_the_next_task_runs(tmp_path: Path) -> None:
    log = str(tmp_path / "ran.log")
    g = ag.Graph()
    g.add("a", functools.partial(double, log, 1), kind="cpu")
    g.add("close", close_the_run_clusters_nannies, deps=["a"])
    g.add("b", functools.partial(double, log), deps=["close"], kind="cpu")
    before = children()
    done = run_guarded(g, backend=ag.DaskBackend(n_workers=2))
    assert done.results == {"a": 2, "close": 1, "b": 2}
    assert children() <= before


def started_then_waits(log: str, fifo: str, flag: str) -> str:
    """First attempt: says it runs (through ``fifo``), then is killed with its worker;
    the second returns."""
    noted(log, "S")
    if os.path.exists(flag):
        return "second"
    Path(flag).touch()
    with open(fifo, "wb") as f:
        f.write(b"started")
    import time

    time.sleep(3600)  # the worker dies under it
    return "never"


def kills_once_told(log: str, fifo: str) -> None:
    noted(log, "K")
    with open(fifo, "rb") as f:
        f.read()
    os._exit(1)


def test_a_task_that_started_on_a_worker_another_task_killed_is_retried_under_retries(
    tmp_path: Path,
) -> None:
    log = str(tmp_path / "ran.log")
    fifo = str(tmp_path / "started")
    os.mkfifo(fifo)
    flag = str(tmp_path / "flag")
    g = ag.Graph()
    g.add(
        "S",
        functools.partial(started_then_waits, log, fifo, flag),
        kind="cpu",
        retries=1,
        retry_delay=0.01,
    )
    g.add("K", functools.partial(kills_once_told, log, fifo), kind="cpu")
    done = run_guarded(g, backend=ag.DaskBackend(n_workers=1, threads_per_worker=2))
    assert isinstance(done.records["K"].error, ag.WorkerDiedError)
    assert done.status["S"] is ag.State.DONE, done.records["S"].error
    assert done.results["S"] == "second"
    assert done.records["S"].attempts == 2  # the death counted against its retries
    assert Path(log).read_text().split().count("S") == 2


def test_with_eager_a_dependent_sent_with_a_dying_input_goes_again_with_its_retry(
    tmp_path: Path,
) -> None:
    # eager=True: "after" goes to the cluster with the first attempt's future; that
    # attempt kills its worker, "after" is taken back (Dask fails it with its input),
    # and goes again, under a key of its own, with the retry's future.
    log = str(tmp_path / "ran.log")
    g = ag.Graph()
    g.add(
        "dies",
        functools.partial(dies_first, log, str(tmp_path / "flag")),
        kind="cpu",
        retries=1,
        retry_delay=0.01,
    )
    g.add("after", lambda s: s + "!", deps=["dies"], kind="cpu")
    before = children()
    done = run_guarded(g, backend=ag.DaskBackend(n_workers=2, eager=True))
    assert done.results == {"dies": "second", "after": "second!"}
    assert done.records["dies"].attempts == 2
    assert done.records["after"].attempts == 1
    assert children() <= before


def test_with_eager_a_task_sent_ahead_and_blamed_for_a_death_is_resubmitted_free(
    tmp_path: Path,
) -> None:
    # As the queued bystander above, with eager=True: "queued" went to the cluster with
    # "first"'s future and waited on the worker "dies" killed; it goes again, free.
    log = str(tmp_path / "ran.log")
    g = ag.Graph()
    g.add("first", functools.partial(double, log, 1), kind="cpu", priority=2)
    g.add("dies", functools.partial(dies, log), deps=["first"], kind="cpu", priority=1)
    g.add("queued", functools.partial(double, log), deps=["first"], kind="cpu")
    before = children()
    done = run_guarded(g, backend=ag.DaskBackend(n_workers=1, eager=True))
    assert done.status["dies"] is ag.State.FAILED
    assert isinstance(done.records["dies"].error, ag.WorkerDiedError)
    assert done.status["queued"] is ag.State.DONE, done.records["queued"].error
    assert done.results["queued"] == 4
    assert done.records["queued"].attempts == 1
    assert children() <= before
