"""Open runs: a run started in ``async with``, watched and used while it goes on.

:func:`open_run` builds the run as :func:`asyncgraph.run` does (its options are checked
by the call itself), and :class:`OpenRun` runs it in a task of its own while the block
reads its events (:meth:`OpenRun.events`) and its results as they come
(:meth:`OpenRun.as_completed`). The events reach the open run as one more listener of
the run's emit (``extra``), first, on the loop's thread; the iterators wait for them on
futures the listener resolves, with no polling. The results come from the run's records,
read through one narrow seam (``_lifetime.RunRecords``, the run's ledger: ``snapshot()``
and ``result()``), handed over by the run as soon as it exists.

State it keeps
    _history   every event of the run so far, in order (each iterator has its own index)
    _waiters   futures of iterators waiting for the next event
    _records   the run's records, once the run exists (None before, or if it never did)
    _task      the task running the run, once the block is entered
    _closed    set when that task has ended: the iterators end after the last event
    _to_cancel names given to cancel(name) before the run had started
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, cast

from ._events import Event, EventKind
from ._graph import G, check_graph
from ._lifetime import RunRecords, require_asyncio, start
from ._options import CANCEL_GRACE, OnEvent, Progress, RunOptions
from ._shield import wait_to_the_end

if TYPE_CHECKING:
    from ._executors.base import Backend
    from ._graph import BaseGraph
    from ._store import Store
    from ._task import Task

__all__ = ["OpenRun", "open_run"]


class OpenRun(Generic[G]):
    """A run in progress, from :func:`open_run`: its events, its results as they come.

    ::

        async with ag.open_run(g) as r:
            async for name, value in r.as_completed():
                ...                    # use early results while the rest runs
        r.graph                        # the resulting Graph

    Leaving the block waits for the run to end (call :meth:`cancel` to stop it early);
    an exception in the block cancels the run, waits for its cleanup, and propagates.
    A ``fail_fast`` failure is raised when the block is left (and by :meth:`wait`).
    """

    def __init__(self, graph: G, options: RunOptions) -> None:
        self._graph = graph
        self._options = options
        self._history: list[Event] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._records: RunRecords | None = None  # the run's, once it exists
        self._task: asyncio.Task[G] | None = None
        self._to_cancel: list[str] = []  # cancel(name) before the run started

    # -- the run's lifetime ---------------------------------------------------------

    async def __aenter__(self) -> OpenRun[G]:
        if self._task is not None:
            raise RuntimeError("an OpenRun can be entered only once")
        require_asyncio("open_run")
        run = start(self._graph, self._options, extra=self._record, on_run=self._attach)
        self._task = asyncio.get_running_loop().create_task(run)
        self._task.add_done_callback(self._ended)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        if exc is not None:
            # The block failed (or we are being cancelled):
            #     async with ag.open_run(g) as r:
            #         raise ValueError   # <- here, while tasks run
            # so cancel the run, wait for its cleanup, and let the block's error go on.
            self._task.cancel()
            await wait_to_the_end(asyncio.wait((self._task,)))
            if not self._task.cancelled():
                with contextlib.suppress(Exception):
                    self._task.result()  # the block's error wins
            return
        await self.wait()

    def _attach(self, records: RunRecords) -> None:
        # Called as soon as the run exists: at once without a store, after the store
        # was read with one. The block reads values as they come (as_completed, graph):
        # the run keeps none on a cluster (see DaskExecutor.settle).
        self._records = records
        want = getattr(records, "want_values", None)
        if want is not None:
            want()

    def _ended(self, task: asyncio.Task[G]) -> None:
        self._closed = True
        self._wake()

    async def wait(self) -> G:
        """Wait for the run to end and return its Graph (or raise what the run raised).

        Cancelled while waiting: the run is cancelled too, and its cleanup awaited.
        """
        task = self._started()
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            task.cancel()
            await wait_to_the_end(asyncio.wait((task,)))
            raise
        return self._result(task)

    def _result(self, task: asyncio.Task[G]) -> G:
        if task.cancelled():
            # Only we cancel it (cancel(), or leaving the block on an error); the run
            # recorded every unfinished task as cancelled before it ended. Cancelled
            # while its store was still being read, nothing had started: the input.
            if self._records is None:
                return self._graph
            return cast(G, self._records.snapshot())  # derived from the input: its class
        return task.result()

    def cancel(self, name: str | Task | None = None) -> bool:
        """Stop the run: running tasks are cancelled and recorded as ``cancelled``, and
        :meth:`wait` and :attr:`graph` give the Graph so far (they do not raise).

        ``cancel("name")`` cancels that one task while the rest goes on: it is recorded
        ``cancelled`` (running, its attempt is cancelled as a deadline would; not started,
        it never starts) and its descendants ``skipped``, as for a failure. A task that
        has ended (or is skipped) stays as it is: a no-op, returning False. An unknown
        name raises :class:`UnknownTaskError`. Called before the run has started (its
        store still being read), the task is cancelled as soon as the run starts.

        Returns True if something was cancelled (or will be, as soon as the run starts).

        Fan-out: ``cancel("score")`` cancels each element of the family ``score`` that
        has not ended (before it expands: the mapped task, so no element ever starts);
        ``cancel("score[k]")`` that one element, its element-wise children and the
        family's reducers then skipped. An element whose family has not expanded yet is
        cancelled as it expands (False if its family ended, or expanded without it).
        """
        task = self._started()
        if name is None:
            return task.cancel()
        probe = _element_or(self._graph, name)  # an element of a family yet to expand
        (the_name,) = self._graph._dag.check_names([probe], "cancel")
        if probe is not name:
            the_name = cast(str, name)
        if task.done():
            return False
        if self._records is None or not self._history:
            self._to_cancel.append(the_name)  # the run has not started: as soon as it does
            return True
        return self._records.cancel_task(the_name)

    def _cancel_waiting(self) -> None:
        # The run's first event came: it has started, so the cancels asked before apply.
        names, self._to_cancel = self._to_cancel, []
        if self._records is not None and not self._closed:
            for name in names:
                self._records.cancel_task(name)

    @property
    def graph(self) -> G:
        """The resulting Graph, once the run has ended (RuntimeError before)."""
        task = self._started()
        if not task.done():
            raise RuntimeError("the run has not ended yet: await r.wait() first")
        return self._result(task)

    @property
    def done(self) -> bool:
        """Whether the run has ended."""
        return self._task is not None and self._task.done()

    def _started(self) -> asyncio.Task[G]:
        if self._task is None:
            raise RuntimeError("use the OpenRun in 'async with ag.open_run(graph) as r:'")
        return self._task

    # -- events ---------------------------------------------------------------------

    def _record(self, event: Event) -> None:
        if self._to_cancel and not self._history:
            # Not from inside the run's announce: once the run waits on its tasks.
            asyncio.get_running_loop().call_soon(self._cancel_waiting)
        self._history.append(event)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def _next(self, index: int) -> Event | None:
        """The event at ``index``, waiting for it; None once the run has ended."""
        while index >= len(self._history):
            if self._closed:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        return self._history[index]

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the run, from its first, as they happen; ends with the run.

        Each call starts from the beginning, so iterating late loses nothing.
        """
        self._started()
        index = 0
        while (event := await self._next(index)) is not None:
            index += 1
            yield event

    async def as_completed(self) -> AsyncIterator[tuple[str, Any]]:
        """``(name, result)`` of each task as it is done, in the order they finish.

        Failed, skipped and cancelled tasks are not yielded (read them from
        :attr:`graph` afterwards); it ends when the run ends.
        """
        async for event in self.events():
            if event.kind is EventKind.DONE:
                records = self._records
                assert records is not None
                yield event.task, records.result(event.task)


def open_run(
    graph: G,
    *,
    max_io: int | None = None,
    cpu_workers: int | None = None,
    limits: Mapping[str, int] | None = None,
    fail_fast: bool = False,
    deadline: float | None = None,
    progress: Progress = False,
    on_event: OnEvent | None = None,
    backend: Backend | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    cancel_grace: float = CANCEL_GRACE,
) -> OpenRun[G]:
    """Start ``graph`` in ``async with``, to watch its events and use early results.

    Takes :func:`asyncgraph.run`'s options. See :class:`OpenRun`.
    """
    check_graph(graph)
    options = RunOptions(
        max_io=max_io,
        cpu_workers=cpu_workers,
        limits=limits,
        fail_fast=fail_fast,
        deadline=deadline,
        cancel_grace=cancel_grace,
        store=store,
        progress=progress,
        on_event=on_event,
        backend=backend,
    )
    return OpenRun(graph, options)


def _element_or(graph: BaseGraph, name: str | Task) -> str | Task:
    """``name``, or for an element of a mapped task not (yet) in ``graph``
    (``"score[k]"``), its mapped task's name in its stead for the check."""
    if isinstance(name, str) and name not in graph._dag.tasks:
        from ._fan import family_of

        parsed = family_of(name)
        if parsed is not None:
            template = graph._dag.tasks.get(parsed[0])
            if template is not None and template.over is not None:
                return parsed[0]
    return name
