"""The Dask backend with worker processes: a worker that dies, nothing left behind, and a
store run that survives a SIGKILL of its driver. Skipped without ``distributed``.

Each test that needs processes starts a LocalCluster of its own (two worker processes,
about a second on two cores when spawned): the slow part of the Dask tests, kept to a
few; the worker-death case forks its workers from a server (tests/dask_fixtures.py).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask_fixtures
import psutil
import pytest

import asyncgraph as ag

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PATIENCE = 120.0  # an upper bound for waits on processes, only hit when stuck


def dies(log: str) -> int:
    """Notes that it ran (one line per call, from any process), then kills its worker."""
    with open(log, "a") as f:
        f.write("ran\n")
    os._exit(1)


def double(x: int) -> int:
    return 2 * x


def children() -> set[int]:
    """This process's children (multiprocessing's resource tracker included: the run
    stops the one its cluster started)."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture
def forked_here() -> Any:
    """Worker processes forked from one server for this test only (tests/dask_fixtures.py):
    the owned-cluster cases below keep Dask's default, spawned workers."""
    with dask_fixtures.forked_workers():
        yield


@pytest.mark.usefixtures("forked_here")
@pytest.mark.parametrize("retries", [0, 1])
def test_a_worker_that_dies_fails_only_its_task_and_dies_once_per_attempt(
    tmp_path: Path, retries: int
) -> None:
    # test_bad_tasks_fail: os._exit under a Nanny. With the run's own cluster
    # (allowed_failures=0) each attempt kills one worker, not four.
    log = tmp_path / "ran.log"
    g = ag.Graph()
    g.add("dies", functools.partial(dies, str(log)), kind="cpu", retries=retries, retry_delay=0.01)
    g.add("after", double, deps=["dies"], kind="cpu")
    # Dask may place another task on the dying worker (a dependent next to its input):
    # it is blamed too (WorkerDiedError) and retried under its retries. A worker never
    # holds more than it runs, so with one thread the bystander was queued, not running.
    g.add("other", functools.partial(double, 21), kind="cpu", retries=2, retry_delay=0.01)
    g.add("other2", double, deps=["other"], kind="cpu", retries=2, retry_delay=0.01)
    before = children()
    done = ag.run_sync(g, backend=ag.DaskBackend(n_workers=2))
    assert done.status["dies"] is ag.State.FAILED
    err = done.records["dies"].error
    assert isinstance(err, ag.WorkerDiedError)
    assert "Dask worker running task 'dies' died" in str(err)
    assert done.status["after"] is ag.State.SKIPPED
    assert done.results == {"other": 42, "other2": 84}
    assert log.read_text().count("ran") == retries + 1
    assert done.records["dies"].attempts == retries + 1
    # Nothing the run started outlives it: no worker, no nanny.
    assert children() <= before


def test_a_store_run_on_dask_keeps_the_bytes_made_on_the_worker(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    log = tmp_path / "ran.log"

    def noted(x: int) -> list[int]:
        with open(log, "a") as f:
            f.write("x\n")
        return [x] * 3

    g = ag.Graph()
    g.add("a", functools.partial(noted, 1), kind="cpu")
    g.add("b", lambda a: [*a, 2], deps=["a"], kind="cpu")
    backend = ag.DaskBackend(processes=False, n_workers=2)
    done = ag.run_sync(g, backend=backend, store=store)
    assert done.results == {"a": [1, 1, 1], "b": [1, 1, 1, 2]}
    loaded = ag.load(g, store)
    assert loaded.status == {"a": ag.State.DONE, "b": ag.State.DONE}
    assert loaded.results["b"] == [1, 1, 1, 2]
    again = ag.run_sync(g, backend=backend, store=store)
    assert again.results["b"] == [1, 1, 1, 2]
    assert log.read_text().count("x") == 1  # the second run reused the store


def _env(log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["ASYNCGRAPH_CRASH_LOG"] = str(log)
    return env


def test_a_store_run_on_dask_survives_a_driver_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sys.path.insert(0, str(TESTS))
    try:
        import crash_driver
    finally:
        sys.path.remove(str(TESTS))
    store = tmp_path / "run.db"
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "dask_crash_driver.py"), str(store)],
        env=_env(tmp_path / "first.log"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    reported: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("done "):
                reported.append(line.split()[1])
            if len(reported) >= 30:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(PATIENCE)
    assert len(reported) >= 30, "the driver ended before it reported 30 tasks done"
    crashed = ag.load(crash_driver.build(), store)
    assert all(crashed.status[n] is ag.State.DONE for n in reported)
    # Resume (on the default pool: the backend is run-only, not part of a fingerprint).
    second = tmp_path / "second.log"
    monkeypatch.setenv("ASYNCGRAPH_CRASH_LOG", str(second))
    monkeypatch.syspath_prepend(str(TESTS))
    final = ag.run_sync(crash_driver.build(), store=store, cpu_workers=2)
    assert all(s is ag.State.DONE for s in final.status.values())
    rerun = set(second.read_text().split()) if second.exists() else set()
    assert not rerun & set(reported), "a task reported done ran again"
    fresh = ag.run_sync(crash_driver.build(), cpu_workers=2)
    assert final.results == fresh.results


def _owned_cluster_leaves_nothing(kind: str) -> None:
    before = children()
    g = ag.Graph()
    g.add("a", lambda: 1, kind="cpu")
    g.add("b", lambda a: a + 1, deps=["a"], kind="cpu")
    if kind == "cancelled":
        g.add("slow", _sleeps, kind="cpu")
        done = ag.run_sync(g, backend=ag.DaskBackend(n_workers=2), deadline=1.0)
        assert done.status["slow"] is ag.State.CANCELLED
    else:
        done = ag.run_sync(g, backend=ag.DaskBackend(n_workers=2))
        assert done.results == {"a": 1, "b": 2}
    assert children() <= before


def _sleeps() -> int:
    import time

    time.sleep(60)
    return 0


@pytest.mark.parametrize("kind", ["done", "cancelled"])
def test_an_owned_cluster_leaves_no_process(kind: str) -> None:
    _owned_cluster_leaves_nothing(kind)


def test_the_example_guard_message_is_in_the_docstring() -> None:
    doc: Any = ag.DaskBackend.__doc__
    assert 'if __name__ == "__main__":' in doc
