"""The stream's public entry points: :func:`open_stream`, :func:`run_stream`,
:func:`run_stream_sync`, and :class:`OpenStream`.

Each takes its options as fully typed keywords and checks them in the call itself,
before anything starts (the run's options through ``RunOptions``; the stream's own
here), as ``run`` does. ``run_stream_sync`` runs the stream on a loop of its own, in a
helper thread when the caller's thread already runs one (a notebook), exactly as
``run_sync`` does (its loop, signals and shutdown are ``_sync``'s).

State it keeps (``OpenStream``)
    ``_engine``  the stream's engine (its stages, queues, counts);
    ``_task``    the task running it, once the block is entered;
    ``_reading`` whether ``outputs()`` was asked for (it can be read once).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from .._exceptions import UnknownTaskError
from .._graph import BaseGraph, check_graph
from .._lifetime import require_asyncio
from .._options import CANCEL_GRACE, OnEvent, Progress, RunOptions
from .._shield import wait_to_the_end
from .._store.files import check_directory
from .._sync import _run_in_helper_thread, _run_on_new_loop, _Signals
from .._task import Task, task_name
from .durable import RESET, Durable, Reset, classify, stream_digest
from .engine import Engine, check_stream_graph
from .result import Batch, StreamPlan, StreamResult
from .store import read_batches

if TYPE_CHECKING:
    from .._executors.base import Backend
    from .._store.protocol import Store

__all__ = ["OpenStream", "open_stream", "plan_stream", "run_stream", "run_stream_sync"]


def _check_count(name: str, value: Any, least: int, none: bool = True) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, not {value!r}")


def _check_source(source: Any) -> None:
    if callable(source):
        return
    hint = ""
    if hasattr(source, "__next__") or hasattr(source, "__anext__"):
        hint = (
            " (an iterator: pass the function that makes it, so a resumed stream can "
            "read the source again, e.g. source=read_files rather than read_files())"
        )
    elif hasattr(source, "__iter__"):
        hint = " (an iterable: pass source=lambda: iter(frames))"
    raise TypeError(
        f"source must be a callable returning an iterator of DataFrames, not "
        f"{type(source).__name__}{hint}"
    )


def _check_reset(graph: BaseGraph, reset: Any, store: Any, caller: str) -> Reset | None:
    """``reset=`` checked against the graph: task names (a stage, or a plain task the
    stream runs) and source batch ids; every error says what to pass."""
    if reset is None:
        return None
    items: list[Any]
    if isinstance(reset, (str, int, Task)) and not isinstance(reset, bool):
        items = [reset]
    elif isinstance(reset, Iterable) and not isinstance(reset, (bytes, Mapping)):
        items = list(reset)
    else:
        raise TypeError(
            f"{caller}: reset= takes a task name, a source batch id, or a list of them, "
            f"not {type(reset).__name__} {reset!r}"
        )
    names: list[str] = []
    ids: set[int] = set()
    for item in items:
        item = task_name(item)  # a Task stands for its name
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(
                f"{caller}: reset= lists task names (str) and source batch ids (int), not "
                f"{type(item).__name__} {item!r}"
            )
        if isinstance(item, int):
            if item < 0:
                raise ValueError(f"{caller}: reset= source batch ids are >= 0, not {item}")
            ids.add(item)
        else:
            names.append(item)
    unknown = [n for n in names if n not in graph._dag.tasks]
    if unknown:
        raise UnknownTaskError(unknown, where=f"{caller} reset=")
    if store is None:
        raise ValueError(
            f"{caller}: reset= sends done batches of a durable stream back to be computed "
            "again, and this stream has no store= (without one every batch is computed "
            "anyway): pass store=, or drop reset="
        )
    tasks = graph._dag.tasks
    plain = tuple(n for n in names if tasks[n].stream is None)
    return Reset(bool(names), frozenset(ids), plain)


def _engine(
    graph: Any,
    caller: str,
    *,
    source: Callable[..., Any],
    mode: str,
    max_batches: int | None,
    start: int,
    queue_size: int,
    out: str | os.PathLike[str] | None,
    store: str | os.PathLike[str] | Store | None,
    max_io: int | None,
    cpu_workers: int | None,
    limits: Mapping[str, int] | None,
    fail_fast: bool,
    max_failed_batches: int | None,
    deadline: float | None,
    progress: Progress,
    on_event: OnEvent | None,
    backend: Backend | None,
    cancel_grace: float,
    reset: str | int | Task | Iterable[str | int | Task] | None = None,
) -> Engine:
    check_graph(graph, caller)
    _check_source(source)
    _check_count("max_batches", max_batches, 0)
    _check_count("start", start, 0, none=False)
    _check_count("queue_size", queue_size, 1, none=False)
    _check_count("max_failed_batches", max_failed_batches, 1)
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a directory path (str or Path), not {type(out).__name__}")
    if store is not None and not isinstance(store, (str, os.PathLike)):
        raise TypeError(
            f"a stream's store must be a file path (str or Path), not {type(store).__name__}"
        )
    resets = _check_reset(graph, reset, store, caller)
    durable = None if out is None and store is None else Durable(out, store, reset=resets)
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
    return Engine(
        graph,
        source,
        options,
        queue_size=queue_size,
        max_batches=max_batches,
        start=start,
        mode=mode,
        max_failed_batches=max_failed_batches,
        durable=durable,
    )


class OpenStream:
    """A stream in progress, from :func:`open_stream`: its outputs as they complete.

    ::

        async with ag.open_stream(g, source=read_files) as s:
            async for b in s.outputs():        # ag.Batch(task, id, rows, data)
                ...
        s.result                                # the StreamResult

    While the block reads ``outputs()``, the sinks wait for it (``queue_size`` batches
    per sink are held), so a slow reader slows the stream rather than filling memory.
    Leaving the block stops holding outputs and waits for the stream to end (call
    :meth:`cancel` to stop it early); an exception in the block cancels the stream,
    waits for its cleanup, and propagates.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._task: asyncio.Task[StreamResult] | None = None
        self._reading = False

    async def __aenter__(self) -> OpenStream:
        if self._task is not None:
            raise RuntimeError("an OpenStream can be entered only once")
        require_asyncio("open_stream")
        self._task = asyncio.get_running_loop().create_task(self._engine.run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._started()
        if exc is not None:
            task.cancel()
            await wait_to_the_end(asyncio.wait((task,)))
            if not task.cancelled():
                with contextlib.suppress(BaseException):
                    task.result()  # the block's error wins
            return
        self._engine.out.drop_all()
        await self.wait()

    def _started(self) -> asyncio.Task[StreamResult]:
        if self._task is None:
            raise RuntimeError("use the OpenStream in `async with ag.open_stream(...) as s:`")
        return self._task

    def outputs(self) -> AsyncIterator[Batch]:
        """The sinks' output batches, in the order they complete; ends with the stream."""
        self._started()
        if self._reading:
            raise RuntimeError("outputs() can be read once per stream")
        self._reading = True
        return self._engine.out.__aiter__()

    async def wait(self) -> StreamResult:
        """Wait for the stream to end and return its :class:`StreamResult` (or raise
        what it raised). Cancelled while waiting: the stream is cancelled too."""
        task = self._started()
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            task.cancel()
            await wait_to_the_end(asyncio.wait((task,)))
            raise
        if task.cancelled():
            return self._engine.result
        return task.result()

    def cancel(self) -> None:
        """Stop the stream: running calls are cancelled, unfinished batches recorded
        cancelled; :meth:`wait` then returns the result so far."""
        self._engine.stop("cancelled")

    @property
    def result(self) -> StreamResult:
        """The counts so far (final once the stream has ended)."""
        return self._engine.result

    @property
    def peak(self) -> int:
        """The most batches the stream held at once so far (queued, running, unread)."""
        return self._engine.peak

    def summary(self) -> list[Any]:
        """Per stage: calls, pieces done and failed, rows in and out, busy seconds."""
        return self._engine.result.summary()

    @property
    def done(self) -> bool:
        """Whether the stream has ended (its result or error is set)."""
        return self._task is not None and self._task.done()


def open_stream(
    graph: BaseGraph,
    *,
    source: Callable[..., Any],
    max_batches: int | None = None,
    start: int = 0,
    queue_size: int = 2,
    out: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    reset: str | int | Task | Iterable[str | int | Task] | None = None,
    max_io: int | None = None,
    cpu_workers: int | None = None,
    limits: Mapping[str, int] | None = None,
    fail_fast: bool = False,
    max_failed_batches: int | None = None,
    deadline: float | None = None,
    progress: Progress = False,
    on_event: OnEvent | None = None,
    backend: Backend | None = None,
    cancel_grace: float = CANCEL_GRACE,
) -> OpenStream:
    """Open a stream of ``graph``'s stream stages over ``source``: use it in ``async with``.

    ``source`` is a callable returning a sync or async iterator of DataFrames; their
    positions number the batches (from ``start``: a source that accepts ``start=`` is
    asked to skip ahead, else the batches before it are read and dropped).
    ``max_batches`` caps the batches read. Each stage's input queue holds
    ``queue_size`` batches per input edge, and a call starts only when its targets have
    room, so memory stays bounded whatever the source's speed. IO stages run many
    batches at once on the loop (at most ``max_io``), CPU stages in ``cpu_workers``
    processes (or on ``backend``); ``limits={"gpu": 1}`` caps the running calls of the
    stages (and plain tasks) declaring ``resources=("gpu",)``, one unit per call. A
    stage that fails a batch (after its retries) fails that batch only;
    ``fail_fast=True`` stops at the first, ``max_failed_batches=N`` after N, each
    raising :class:`StreamFailures`; ``deadline`` (seconds) stops the stream and
    records the unfinished batches cancelled. Plain tasks the stages depend
    on run once, before the stream. With ``store=``, done batches are skipped;
    ``reset=`` sends some back to be computed again (their files replaced): a task
    name (a stage, or a plain task, which then runs again too) sends every done batch,
    source batch ids only those. See docs/streams.md.
    """
    return OpenStream(
        _engine(
            graph,
            "open_stream",
            source=source,
            mode="pull",
            max_batches=max_batches,
            start=start,
            queue_size=queue_size,
            out=out,
            store=store,
            reset=reset,
            max_io=max_io,
            cpu_workers=cpu_workers,
            limits=limits,
            fail_fast=fail_fast,
            max_failed_batches=max_failed_batches,
            deadline=deadline,
            progress=progress,
            on_event=on_event,
            backend=backend,
            cancel_grace=cancel_grace,
        )
    )


def _mode(out: Any, collect: Any) -> str:
    """``collect=``: keep every output batch (the default without ``out=``) or not."""
    keep = (out is None) if collect is None else collect
    if not isinstance(keep, bool):
        raise TypeError(f"collect must be True, False or None, not {collect!r}")
    return "collect" if keep else "drop"


async def run_stream(
    graph: BaseGraph,
    *,
    source: Callable[..., Any],
    max_batches: int | None = None,
    start: int = 0,
    queue_size: int = 2,
    out: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    reset: str | int | Task | Iterable[str | int | Task] | None = None,
    collect: bool | None = None,
    max_io: int | None = None,
    cpu_workers: int | None = None,
    limits: Mapping[str, int] | None = None,
    fail_fast: bool = False,
    max_failed_batches: int | None = None,
    deadline: float | None = None,
    progress: Progress = False,
    on_event: OnEvent | None = None,
    backend: Backend | None = None,
    cancel_grace: float = CANCEL_GRACE,
) -> StreamResult:
    """Run a stream to its end and return its :class:`StreamResult` (the options are
    :func:`open_stream`'s). ``collect=True`` keeps every output batch in
    ``result.outputs``; it is the default without ``out=`` (with ``out=`` the outputs
    are the files, and nothing is kept in memory)."""
    engine = _engine(
        graph,
        "run_stream",
        source=source,
        mode=_mode(out, collect),
        max_batches=max_batches,
        start=start,
        queue_size=queue_size,
        out=out,
        store=store,
        reset=reset,
        max_io=max_io,
        cpu_workers=cpu_workers,
        limits=limits,
        fail_fast=fail_fast,
        max_failed_batches=max_failed_batches,
        deadline=deadline,
        progress=progress,
        on_event=on_event,
        backend=backend,
        cancel_grace=cancel_grace,
    )
    require_asyncio("run_stream")
    return await engine.run()


def run_stream_sync(
    graph: BaseGraph,
    *,
    source: Callable[..., Any],
    max_batches: int | None = None,
    start: int = 0,
    queue_size: int = 2,
    out: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    reset: str | int | Task | Iterable[str | int | Task] | None = None,
    collect: bool | None = None,
    max_io: int | None = None,
    cpu_workers: int | None = None,
    limits: Mapping[str, int] | None = None,
    fail_fast: bool = False,
    max_failed_batches: int | None = None,
    deadline: float | None = None,
    progress: Progress = False,
    on_event: OnEvent | None = None,
    backend: Backend | None = None,
    cancel_grace: float = CANCEL_GRACE,
) -> StreamResult:
    """:func:`run_stream` for scripts and notebooks, as :func:`asyncgraph.run_sync` is
    for runs: on a new event loop, or in a helper thread inside a running loop; Ctrl-C
    cancels the stream, cleans up and raises KeyboardInterrupt."""
    engine = _engine(
        graph,
        "run_stream_sync",
        source=source,
        mode=_mode(out, collect),
        max_batches=max_batches,
        start=start,
        queue_size=queue_size,
        out=out,
        store=store,
        reset=reset,
        max_io=max_io,
        cpu_workers=cpu_workers,
        limits=limits,
        fail_fast=fail_fast,
        max_failed_batches=max_failed_batches,
        deadline=deadline,
        progress=progress,
        on_event=on_event,
        backend=backend,
        cancel_grace=cancel_grace,
    )
    coro: Any = engine.run()
    grace = engine.options.cancel_grace
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_a_loop = False
    else:
        in_a_loop = True
    if in_a_loop:
        return cast(StreamResult, _run_in_helper_thread(coro, grace))
    signals = _Signals()
    signals.install()
    try:
        return cast(StreamResult, _run_on_new_loop(coro, grace, signals))
    finally:
        signals.restore()


def plan_stream(
    graph: BaseGraph,
    *,
    store: str | os.PathLike[str],
    reset: str | int | Task | Iterable[str | int | Task] | None = None,
) -> StreamPlan:
    """What :func:`run_stream` would do with this ``store`` (and ``reset=``): how many
    source batches it would skip as done, compute again because ``reset=`` names them
    (``reset``) or because the stream's code changed since they were done (``stale``),
    or source again because they failed or were cancelled. Reads the store without
    locking it; a store with no stream yet plans nothing."""
    check_graph(graph, "plan_stream")
    if not isinstance(store, (str, os.PathLike)):
        raise TypeError(f"store must be a file path (str or Path), not {type(store).__name__}")
    stages, plain = check_stream_graph(graph)
    resets = _check_reset(graph, reset, store, "plan_stream")
    if not os.path.exists(store):
        check_directory(Path(store))  # what the stream itself would refuse, said now
        return StreamPlan(0, 0, 0, 0)
    digest = stream_digest(stages, graph._subset(plain) if plain else None)
    batches = read_batches(store)
    valid, reset_ids, stale = classify(batches, digest, resets)
    counts = {"done": len(valid), "stale": len(stale), "failed": 0, "cancelled": 0}
    counts["reset"] = len(reset_ids)
    for status, *_ in batches.values():
        if status == RESET:  # reset by a stream that stopped before computing it
            counts["reset"] += 1
        elif status in ("failed", "cancelled"):
            counts[status] += 1
    return StreamPlan(**counts)
