"""The backends the CPU-task cases run on, and how they are known to differ.

Each entry of ``BACKENDS`` is one backend: an id, a factory (a context manager that
yields the ``backend=`` to pass, and cleans up what it made), and the facts that make the
expected results differ. ``tests/test_backend_matrix.py`` runs every case on every entry
and reads these facts where a backend behaves otherwise; docs/guide.md ("Backends") has
the same differences as a table. A new backend is one line in ``BACKENDS``, e.g.::

    Case("dask", dask_threads, processes=False, stops_running=False, ...),
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psutil

import asyncgraph as ag

WORKERS = 2  # the CI machines have two cores


@dataclass(frozen=True)
class Case:
    """One backend and what is known to differ on it."""

    id: str
    make: Callable[[], contextlib.AbstractContextManager[Any]]
    #: CPU tasks run in other processes: functions, arguments, results and exceptions
    #: are pickled (a lambda ships; a lock does not), and ``os.getpid()`` differs.
    processes: bool
    #: A timed-out or cancelled CPU task is really stopped (its worker is killed). If
    #: not, the run stops waiting at once and the call finishes on its own.
    stops_running: bool
    #: A task may kill its worker (``os._exit``, a signal) and only that task fails
    #: (WorkerDiedError); later CPU tasks are served by a fresh worker.
    survives_worker_death: bool
    #: A task that kills its own process does not take the test process with it.
    isolates_crashes: bool
    #: A CPU task runs on the calling thread, one at a time (so a plain function that
    #: waits for something blocks the run until it returns).
    calling_thread: bool = False
    #: In one process, a CPU task's arguments and errors are still pickled (Dask
    #: serializes every task it is sent and every error it sends back, even between
    #: threads of this process).
    pickles_arguments: bool = False
    #: ``cpu_workers=`` caps the run's CPU tasks at once. On Dask it sizes a cluster the
    #: run owns; the run's cap there is ``DaskBackend(capacity=...)`` (or ``limits``).
    cpu_workers_caps: bool = True


@contextlib.contextmanager
def default() -> Iterator[None]:
    yield None  # backend=None: a process pool of the run's own


@contextlib.contextmanager
def shared_pool() -> Iterator[ag.ProcessBackend]:
    with ag.ProcessBackend(workers=WORKERS) as pool:
        yield pool


@contextlib.contextmanager
def inline() -> Iterator[ag.InlineBackend]:
    yield ag.InlineBackend()


@contextlib.contextmanager
def process_pool_executor() -> Iterator[ag.ExecutorBackend]:
    # spawn: what macOS and Python 3.14 use, and no fork of a process with threads.
    executor = ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield ag.ExecutorBackend(executor)
    finally:
        release_abandoned()
        executor.shutdown(wait=True, cancel_futures=True)
        stop_resource_tracker()


def stop_resource_tracker() -> None:
    """Stop the helper process the spawned executor started (multiprocessing's resource
    tracker, which lives until the test process ends), so the next test's check that
    nothing is left over sees only what it started."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()


@contextlib.contextmanager
def thread_pool_executor() -> Iterator[ag.ExecutorBackend]:
    executor = ThreadPoolExecutor(WORKERS)
    try:
        yield ag.ExecutorBackend(executor)
    finally:
        release_abandoned()
        executor.shutdown(wait=True, cancel_futures=True)


#: Calls that a case left running in an executor (a timeout cannot stop them) are told
#: to end before the executor is shut down: each case registers how here.
RELEASES: list[Callable[[], None]] = []


def release_abandoned() -> None:
    while RELEASES:
        RELEASES.pop()()


@contextlib.contextmanager
def dask_threads() -> Iterator[Any]:
    """A Dask LocalCluster of threads, owned by each run (started with its first CPU
    task, closed with the run); skipped where distributed is not installed."""
    import pytest

    pytest.importorskip("distributed")
    yield ag.DaskBackend(processes=False, n_workers=WORKERS)


BACKENDS: list[Case] = [
    Case("default", default, processes=True, stops_running=True,
         survives_worker_death=True, isolates_crashes=True),
    Case("processes", shared_pool, processes=True, stops_running=True,
         survives_worker_death=True, isolates_crashes=True),
    Case("inline", inline, processes=False, stops_running=False,
         survives_worker_death=False, isolates_crashes=False, calling_thread=True),
    # A stdlib ProcessPoolExecutor is broken by one dead worker: every call in flight and
    # every later one fails (WorkerDiedError); asyncgraph never replaces a user's executor.
    Case("executor-processes", process_pool_executor, processes=True, stops_running=False,
         survives_worker_death=False, isolates_crashes=True),
    Case("executor-threads", thread_pool_executor, processes=False, stops_running=False,
         survives_worker_death=False, isolates_crashes=False),
    # Dask's threads: a timed-out task's thread runs on until the run's cluster closes;
    # worker death on a cluster of processes is tested in tests/test_dask_processes.py.
    Case("dask", dask_threads, processes=False, stops_running=False,
         survives_worker_death=False, isolates_crashes=False, pickles_arguments=True,
         cpu_workers_caps=False),
]

IDS = [case.id for case in BACKENDS]


def children_now() -> list[psutil.Process]:
    """This process's live descendants (zombies excluded), but for multiprocessing's
    resource tracker (a spawned executor's helper, stopped after its case)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            alive = p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            if alive and "multiprocessing.resource_tracker" not in " ".join(p.cmdline()):
                found.append(p)
    return found


def own_processes(backend: Any) -> set[int]:
    """The processes a backend keeps between runs (a started pool's workers, an
    executor's workers and helpers): what may still be alive after a run."""
    if backend is None or isinstance(backend, ag.InlineBackend):
        return set()
    if isinstance(backend, ag.ExecutorBackend) and not backend.processes:
        return set()
    return {p.pid for p in children_now()}
