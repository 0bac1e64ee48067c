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
