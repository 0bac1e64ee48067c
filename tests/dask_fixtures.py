"""Dask test fixtures shared by the Dask test modules (registered in tests/conftest.py).

What makes the Dask tests slow is starting worker processes: a spawned Dask worker is a
fresh interpreter that imports distributed (about a second of CPU each, two per cluster,
one more per restart after a worker death). The worker-death tests need a cluster of
processes that the run owns (its ``allowed_failures=0``, its journal of started
attempts, its ``RunCluster`` that keeps every worker), so they cannot share one; what
they can share is the start of the processes.

``forked_dask_workers`` (module scope) makes Dask start its worker processes with the
``forkserver`` method (``distributed.worker.multiprocessing-method``, read each time a
nanny starts its worker), from one server that imported distributed and asyncgraph
once: a worker, or a worker's restart, is a fork of it. A restart still takes well
over 50 ms (a new Worker registers with the scheduler: about 120-250 ms under load),
so test_dask_worker_death's ``lost-worker-timeout`` of 50 ms still makes every restart
"too slow". The server and the resource tracker it started are stopped when the module
ends, so no later test sees a process it did not start. What users get by default (a
spawned worker) stays covered by tests/test_dask_processes.py's owned-cluster cases,
which do not use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest


@contextlib.contextmanager
def forked_workers() -> Iterator[None]:
    """Dask worker processes forked from a server with distributed preloaded."""
    pytest.importorskip("distributed")
    import multiprocessing
    from multiprocessing import forkserver, resource_tracker

    import dask
    import distributed.utils

    tracker_was_running = getattr(resource_tracker._resource_tracker, "_pid", None) is not None
    ctx = multiprocessing.get_context("forkserver")
    # distributed's own preload adds numpy, pandas and lz4 (seconds of imports the
    # workers here never use); its flag says the preload is set.
    ctx.set_forkserver_preload(["distributed", "asyncgraph"])
    distributed.utils._forkserver_preload_set = True
    server = forkserver._forkserver
    server.ensure_running()  # before any test's snapshot of this process's children
    try:
        with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
            yield
    finally:
        server._stop()
        if not tracker_was_running:
            with contextlib.suppress(Exception):
                resource_tracker._resource_tracker._stop()


@pytest.fixture(scope="module")
def forked_dask_workers() -> Iterator[None]:
    with forked_workers():
        yield


# -- one LocalCluster of threads per test module and loop ----------------------------------
#
# A test module's async tests that take the ``client`` fixture run on one event loop per
# loop backend (``@pytest.mark.asyncio(loop_scope="module")``: asyncio, then uvloop),
# and share that loop's cluster of threads and its asynchronous client: the cluster is
# bound to the loop it was made on. Each test gets it clean, or fails at set-up: no
# future of the client, no key on the scheduler (its releases, a message on Dask's
# batched stream, have all arrived: the last "forgotten" transition), no test plugin
# left on the scheduler, both workers there. Those are what a test asserts at its end,
# so a test that leaks makes the next one fail, whatever the order.

SHARED = {"n_workers": 2, "threads_per_worker": 1}  # one worker thread each on two workers


async def shared_threads_client() -> Any:
    """A started LocalCluster of threads and its asynchronous client on this loop
    (an async generator: the module fixture closes both)."""
    distributed = pytest.importorskip("distributed")
    async with (
        distributed.LocalCluster(
            **SHARED,
            processes=False,
            asynchronous=True,
            dashboard_address=":0",
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster, asynchronous=True, set_as_default=False) as client,
    ):
        yield client


async def scheduler_keys(client: Any) -> list[str]:
    """The keys the scheduler still holds once the messages the run sent (releases and
    cancels, on Dask's batched stream) have arrived: waits for the last "forgotten"
    transition (the scheduler runs in this process), never polls; bounded at 10 s."""
    import asyncio

    import distributed

    sched = client.cluster.scheduler
    if sched.tasks:
        empty = asyncio.Event()

        class Forgotten(distributed.diagnostics.plugin.SchedulerPlugin):  # type: ignore[misc]
            def transition(self, key: Any, start: str, finish: str, *a: Any, **k: Any) -> None:
                if finish == "forgotten" and set(sched.tasks) <= {key}:
                    empty.set()

        sched.add_plugin(Forgotten(), name="asyncgraph-fixture-forgotten")
        try:
            if sched.tasks:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(empty.wait(), 10)
        finally:
            sched.remove_plugin("asyncgraph-fixture-forgotten")
    return [str(k) for k in sched.tasks]


async def clean(client: Any) -> Any:
    """``client`` as a test may take it: what an earlier test left is an error here."""
    assert client.status == "running", "a test closed the shared client"
    assert not client.futures, f"futures left by an earlier test: {list(client.futures)}"
    left = await scheduler_keys(client)
    assert left == [], f"keys left on the shared scheduler by an earlier test: {left}"
    sched = client.cluster.scheduler
    plugins = [p for p in sched.plugins if str(p).startswith("asyncgraph-")]
    assert plugins == [], f"scheduler plugins left by an earlier test: {plugins}"
    assert len(sched.workers) == SHARED["n_workers"], "a worker of the shared cluster is gone"
    return client
