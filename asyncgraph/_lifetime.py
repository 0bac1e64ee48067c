"""A run's lifetime, from the caller's call to its last event: ``run()`` and ``start()``.

What ``run``, ``run_sync`` (``_sync``) and ``open_run`` (``_open_run``) share: check
the graph, build one :class:`~asyncgraph._options.RunOptions`, then ``start``: the
listeners (``Watch``) open, a run on a store holds its store
(``_store.session.hold``), the ``_Run`` is built and run, and everything closes in
the reverse order, however the run ends. Each step is one ``async with`` or one call,
in one straight path.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

from ._events import Emit
from ._graph import BaseGraph, G, check_graph
from ._observe import Watch
from ._options import CANCEL_GRACE, OnEvent, Progress, RunOptions
from ._runner import _Run
from ._state import ResultRef
from ._store.resume import weights_of
from ._store.session import StoreSink, hold, load_inputs
from ._stream.spec import refuse_stream_tasks

if TYPE_CHECKING:
    from ._executors.base import Backend
    from ._store.protocol import Store

__all__ = ["OnRun", "RunRecords", "require_asyncio", "run", "start"]


class RunRecords(Protocol):
    """What an open run reads of a run in progress (see ``_open_run``): its records,
    through the run, which can also cancel one of its tasks."""

    def snapshot(self) -> BaseGraph:
        """The Graph so far: every task as its latest record has it."""
        ...

    def result(self, name: str) -> Any:
        """The result of a task that is done."""
        ...

    def cancel_task(self, name: str) -> bool:
        """Cancel one task, the rest going on; False if it has ended already."""
        ...


#: ``on_run=``: given the run (its records, ``cancel_task``) as soon as it exists.
OnRun: TypeAlias = Callable[[RunRecords], None]


def start(
    graph: G,
    options: RunOptions,
    *,
    extra: Emit | None = None,
    on_run: OnRun | None = None,
) -> Coroutine[Any, Any, G]:
    """The run of ``graph``, as a coroutine to await (or to make a task of).

    A run without a store is built here, so what is wrong with the graph (a cycle, a CPU
    task that cannot be pickled) is raised by the caller's own call, before anything
    starts; a run on a store is built once the store is read. ``extra`` hears every
    event first; ``on_run`` is given the run as soon as it exists.
    """
    refuse_stream_tasks(graph._dag.tasks.values(), "run")  # streams: ag.run_stream
    watch = Watch(
        options.progress,
        options.on_event,
        deadline=options.deadline,
        grace=options.cancel_grace,
        extra=extra,
        label=graph.name,
    )
    the_run = None
    if options.store is None:
        the_run = _Run(graph, options, emit=watch.emit, bar=watch.bar_alone)
        if on_run is not None:
            on_run(the_run)
    # Every graph the run derives is of the caller's class (``_derive``: ``type(self)``).
    return cast("Coroutine[Any, Any, G]", _lifetime(watch, graph, options, the_run, on_run))


async def _lifetime(
    watch: Watch,
    graph: BaseGraph,
    options: RunOptions,
    the_run: _Run | None,
    on_run: OnRun | None,
) -> BaseGraph:
    """The run from its first event to its last: without a store (``the_run``, built
    already) or on one (built once the store is held and read)."""
    async with watch:
        if the_run is not None:
            records = the_run.ledger.records
            if graph._origin is not None and any(
                isinstance(r.result, ResultRef) for r in records.values()
            ):
                # A graph loaded from a store, run without one: its tasks take values,
                # so the results they need are read from that store first.
                await load_inputs(records, the_run.tasks, the_run.core.pending())
            return await the_run.run()
        assert options.store is not None
        async with hold(options.store, graph) as (store, loaded):
            the_run = _Run(
                loaded.graph,
                options,
                weights=weights_of(loaded),
                emit=watch.emit,
                sink=StoreSink(store, loaded),
            )
            if on_run is not None:
                on_run(the_run)
            return await the_run.run()


def require_asyncio(caller: str) -> None:
    """RuntimeError, in one sentence, unless an asyncio loop runs in this thread.

    Awaited under trio, a run would fail deep inside with "no running event loop";
    sniffio (anyio's own detection, when installed) names the library that runs instead.
    One C call when all is well.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return
    try:  # sniffio comes with trio (anyio does not need it): imported by name
        library: str | None = importlib.import_module("sniffio").current_async_library()
    except Exception:  # noqa: BLE001 - not installed, or no library it knows
        library = None
    this = f"this is {library}" if library else "no asyncio event loop runs in this thread"
    raise RuntimeError(
        f"{caller}: asyncgraph runs on asyncio and {this}; start the program with "
        "anyio.run(main, backend='asyncio') or asyncio.run(main()), or, from trio, await "
        "it through trio-asyncio (trio_asyncio.aio_as_trio) or in a thread "
        "(await trio.to_thread.run_sync(ag.run_sync, graph))"
    )


async def run(
    graph: G,
    *,
    max_io: int | None = None,
    cpu_workers: int | None = None,
    limits: Mapping[str, int] | None = None,
    fail_fast: bool = False,
    deadline: float | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    progress: Progress = False,
    on_event: OnEvent | None = None,
    backend: Backend | None = None,
    cancel_grace: float = CANCEL_GRACE,
) -> G:
    """Run every pending task of ``graph`` and return a new Graph with their states.

    ``max_io`` caps concurrent IO tasks (default: no cap for coroutines; plain functions
    share anyio's thread pool of 40); ``cpu_workers`` is the number of worker processes
    (default: the CPU count); ``limits={"db": 4}`` caps tasks declaring
    ``resources=("db",)``. A failed task's descendants are skipped and the rest goes on,
    unless ``fail_fast=True``, which cancels the rest and raises :class:`TaskFailures`.
    ``deadline`` (seconds) cancels whatever has not finished by then.

    ``backend`` says where the work goes (default: the loop, threads and a process pool
    of the run's own; see docs/guide.md).

    ``progress=True`` draws a progress bar and ``on_event`` is called with each
    :class:`Event` (see docs/observing.md).

    ``store`` (a file path, or a :class:`Store`) makes the run durable: every outcome is
    recorded there, and tasks already done there with an unchanged fingerprint are
    reused instead of run (see :func:`load` and ``docs/store.md``).
    """
    require_asyncio("run")
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
    return await start(graph, options)
