"""Where a run's CPU tasks go: the public backends (besides Dask's).

A backend is what ``run(g, backend=...)`` takes: it gives each run that run's executors
(:class:`~asyncgraph._executors.base.Backend`). Coroutines and IO tasks stay on the run's
loop and threads on every backend here except :class:`InlineBackend`; the backend decides
where ``kind="cpu"`` tasks run. Retries, timeouts, limits, events and the store stay in
the runner, the same for all; docs/guide.md ("Backends") has the table of differences.

* :class:`ProcessBackend`: asyncgraph's own worker pool, started once and shared by many
  runs (:mod:`asyncgraph._executors.shared`).
* :class:`InlineBackend`: everything on the calling thread, one plain function at a time.
* :class:`ExecutorBackend`: any :class:`concurrent.futures.Executor`
  (:mod:`asyncgraph._executors.futures`).

A backend may say how many CPU tasks it runs at once (``default_cpu_workers``): a run
given no ``cpu_workers`` uses that many instead of the CPU count.

State it keeps
    ``ProcessBackend``   ``workers`` and its :class:`SharedPool` (new, started, closed);
    ``InlineBackend``    nothing;
    ``ExecutorBackend``  the user's ``executor``, ``workers``, ``processes``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._clock import Clock
from ._executors.base import Executor
from ._executors.futures import ShippedExecutor, ThreadedExecutor
from ._executors.local import CallingThreadExecutor, LoopExecutor, ThreadExecutor
from ._executors.shared import BackendClosedError, SharedPool, SharedProcessExecutor
from ._shield import wait_to_the_end
from ._task import Kind

__all__ = ["ExecutorBackend", "InlineBackend", "ProcessBackend"]

Pickled = Callable[[str, bytes], None] | None


def _workers(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")
    return value


class ProcessBackend:
    """asyncgraph's pool of worker processes, started once and shared by many runs.

    ::

        async with ag.ProcessBackend(workers=4) as pool:
            for request in requests:
                await ag.run(build(request), backend=pool)

        with ag.ProcessBackend(workers=4) as pool:      # in a script, with run_sync
            ag.run_sync(g, backend=pool)

        pool = await ag.ProcessBackend().start()        # a notebook: start it once ...
        await pool.aclose()                             # ... and close it when done

    ``workers`` (default: the CPU count) processes start with the pool and are reused
    by every run, on any loop or thread, so a CPU task on a started pool costs what a
    call to a worker costs, not the 100 ms and more of starting one. Each run's
    ``cpu_workers`` caps its own CPU tasks in flight (default: ``workers``); calls of
    several runs beyond ``workers`` wait for a free worker, served by their task's
    ``priority`` (higher first) across runs, in turns between runs at equal priority, and
    a task's ``timeout`` does not count that wait. As with the default pool, a worker that dies
    fails only its task (:class:`WorkerDiedError`) and is replaced, and a task that
    times out or is cancelled has its worker killed: only that run's task stops.

    A run refuses a pool that is not started, or closed. Closing it (``aclose``, ``close``,
    the end of ``with``) kills its workers: tasks still running on it fail, saying so.
    A pool nobody closed is closed when the interpreter exits.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers: int = _workers("workers", workers) or os.cpu_count() or 1
        self._shared = SharedPool(self.workers)

    @property
    def default_cpu_workers(self) -> int:
        """A run's ``cpu_workers`` unless it gives one: the pool's size."""
        return self.workers

    @property
    def started(self) -> bool:
        """Whether the workers are up and the pool takes runs."""
        return self._shared.state == "started"

    @property
    def closed(self) -> bool:
        """Whether the pool was closed (a closed pool cannot be started again)."""
        return self._shared.state == "closed"

    async def start(self) -> ProcessBackend:
        """Start the workers (all of them, at once) and return the pool; does nothing if
        it is started already. A closed pool raises RuntimeError."""
        try:
            await asyncio.wrap_future(self._shared.start())
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """Kill the workers and stop the pool's thread; waits until they are gone.
        Calling it again does nothing."""
        done = self._shared.close()
        if done is not None:
            await wait_to_the_end(asyncio.wrap_future(done))
            self._shared.join()

    def close(self) -> None:
        """:meth:`aclose` for code without a loop (blocks until the workers are gone)."""
        done = self._shared.close()
        if done is not None:
            done.result()
            self._shared.join()

    async def __aenter__(self) -> ProcessBackend:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> ProcessBackend:
        try:
            self._shared.start().result()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProcessBackend(workers={self.workers}) <{self._shared.state}>"

    def executors(
        self, *, max_io: int | None, cpu_workers: int, clock: Clock, pickled: Pickled
    ) -> list[Executor]:
        """A run's executors: the loop and threads, and this pool for its CPU tasks."""
        state = self._shared.state
        if state == "closed":
            raise BackendClosedError(f"backend={self!r} was closed; make a new one")
        if state != "started":
            raise RuntimeError(
                f"backend={self!r} is not started: use `async with ag.ProcessBackend(...) "
                "as pool:` (or `with`), or `pool = await ag.ProcessBackend(...).start()`, "
                "and pass that pool"
            )
        return [
            LoopExecutor(max_io, clock),
            ThreadExecutor(max_io, clock),
            SharedProcessExecutor(self._shared, min(cpu_workers, self.workers), clock, pickled),
        ]


class InlineBackend:
    """Everything on the calling thread: plain functions (of any kind) and CPU tasks
    one at a time, in the scheduler's order; coroutines stay on the loop.

    ::

        ag.run_sync(g, backend=ag.InlineBackend())   # breakpoint() in a task works

    For debugging and exact ordering: nothing is pickled and nothing runs in parallel
    (CPU tasks one at a time; an IO coroutine may run while a CPU coroutine awaits).
    ``run_sync`` in a script runs the loop, so the tasks, on the main thread; inside a
    running loop (a notebook) ``run_sync`` uses a helper thread, and the tasks run there.
    A plain function cannot be interrupted by the run: past its ``timeout`` it runs to
    its end and then fails with TimeoutError; a deadline or ``fail_fast`` takes effect
    once the function running has returned. Ctrl-C (on the main thread) raises
    KeyboardInterrupt in it, as in a plain script, and the run ends with it. A function
    that kills its process (``os._exit``) kills the program.
    """

    default_cpu_workers = 1

    def __repr__(self) -> str:
        return "InlineBackend()"

    def executors(
        self, *, max_io: int | None, cpu_workers: int, clock: Clock, pickled: Pickled
    ) -> list[Executor]:
        """A run's executors: coroutines on the loop, the rest called on its thread."""
        return [
            LoopExecutor(max_io, clock),
            CallingThreadExecutor(
                "io", frozenset({Kind.IO}), coroutines=False, capacity=max_io, clock=clock
            ),
            CallingThreadExecutor(
                "cpu", frozenset({Kind.CPU}), coroutines=True, capacity=1, clock=clock
            ),
        ]


class ExecutorBackend:
    """CPU tasks on any :class:`concurrent.futures.Executor`: a ``ProcessPoolExecutor``,
    loky's, ``mpi4py``'s ``MPIPoolExecutor``, a ``ThreadPoolExecutor``.

    ::

        with ProcessPoolExecutor(4) as executor:
            done = await ag.run(g, backend=ag.ExecutorBackend(executor))

    The executor is yours: asyncgraph never shuts it down. Except for a thread pool
    (``processes=None`` tells them apart; pass True or False to say), each function is
    sent with cloudpickle, so lambdas and notebook functions travel, and the executor's
    workers need cloudpickle, not asyncgraph. ``workers`` is how many calls it runs at
    once (default: the executor's ``_max_workers``, when it has one); a run's
    ``cpu_workers`` caps its own (default: ``workers``, else the CPU count).

    A call that has started cannot be stopped: on a timeout or a cancellation the run
    records the task and stops waiting at once; the call finishes in the executor and
    its result is dropped. A stdlib ``ProcessPoolExecutor`` that loses a worker is
    broken: the tasks in flight and every later CPU task fail with
    :class:`WorkerDiedError` until you make a new executor.
    """

    def __init__(
        self,
        executor: concurrent.futures.Executor,
        *,
        workers: int | None = None,
        processes: bool | None = None,
    ) -> None:
        if not isinstance(executor, concurrent.futures.Executor):
            raise TypeError(
                "ExecutorBackend takes a concurrent.futures.Executor (such as "
                "ProcessPoolExecutor(4)), not "
                f"{type(executor).__name__} {executor!r}"
            )
        if processes is not None and not isinstance(processes, bool):
            raise TypeError(f"processes must be True, False or None, not {processes!r}")
        given = _workers("workers", workers)
        known = getattr(executor, "_max_workers", None)
        if given is None and isinstance(known, int) and not isinstance(known, bool):
            given = known if known >= 1 else None
        self.executor = executor
        self.workers: int | None = given
        self.processes: bool = (
            not isinstance(executor, concurrent.futures.ThreadPoolExecutor)
            if processes is None
            else processes
        )

    @property
    def default_cpu_workers(self) -> int | None:
        """A run's ``cpu_workers`` unless it gives one: ``workers`` (None: the CPU count)."""
        return self.workers

    def __repr__(self) -> str:
        return f"ExecutorBackend({self.executor!r}, workers={self.workers})"

    def executors(
        self, *, max_io: int | None, cpu_workers: int, clock: Clock, pickled: Pickled
    ) -> list[Executor]:
        """A run's executors: the loop and threads, and the executor for CPU tasks."""
        capacity = cpu_workers if self.workers is None else min(cpu_workers, self.workers)
        cpu: Executor
        if self.processes:
            cpu = ShippedExecutor(self.executor, capacity, clock, pickled)
        else:
            cpu = ThreadedExecutor(self.executor, capacity, clock)
        return [LoopExecutor(max_io, clock), ThreadExecutor(max_io, clock), cpu]
