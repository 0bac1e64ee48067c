"""One stream's run: batches from a source through the stream stages, in bounded memory.

The engine is one driver coroutine woken by completions (an ``asyncio.Event``, never a
poll). Each wake it *dispatches*: per lane (``"io"`` first, then ``"cpu"``), while the
lane has capacity, it starts a call of the best stage that has a batch ready and whose
targets have room, and last it pulls the source while the source stages have room.
"Best" is dplutils' order, computed here without networkx: the stage closest to a sink
first (its rank: the longest path to a sink, sinks 0), then the one with the fewest calls
so far, then the higher ``priority``, then definition order; within a stage, FIFO (the
oldest source batch first).

Bounded memory. Every stage has an input queue of ``queue_size`` batches per input
edge (``cap``); a call may start only if each of its targets has room counting the
calls already running towards it (``reserved``), and the source is pulled only while
each source stage has room. A merging stage (``batch_size``) also takes batches while
it holds fewer than ``batch_size`` rows, or it could never gather a merge. So the live
batches (queued, running, or waiting in a split) never exceed, per stage, ``cap``
(plus, for a merging stage, the batches of one merge) plus the pieces of one split, plus
the calls running, which the targets' reservations bound in turn (see
``live_bound``). Sinks deliver to the outputs channel, bounded the same way while
someone reads ``outputs()``.

Batches and groups. A source batch is numbered by its position; splits are named
``17.0, 17.1``, merges ``17+18``. Each piece belongs to a *group*: the source batches
that a merge tied together (union-find), the unit that ends done, failed or cancelled.
A group counts its live pieces; at zero it is done (every output derived from it
delivered) unless a piece failed. A failed group's other pieces are dropped where they
wait, and its descendants are not called for it.

State it keeps
    ``stages``    by name: each stage's queue, split pieces, running calls, reservations,
                  merge timer and counters (``_Stage``);
    ``lanes``     capacity and running calls per lane;
    ``calls``     the running calls (futures and retry timers), cancelled on a stop;
    ``open``      the groups not yet ended; ``result`` the counts so far;
    ``source``    the iterator, the next batch number, whether it ended or is being read;
    ``stopping``  why the stream is stopping (deadline, fail_fast, ...), or None.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._clock import SYSTEM_CLOCK, backoff
from .._events import Emit, Event, EventKind
from .._exceptions import GraphError, InvalidTaskError, TaskCancelled, TaskError
from .._executors import default_executors
from .._executors.base import Executor, route
from .._observe import StreamProgress, Watch
from .._shield import wait_to_the_end
from .._task import Kind, Task
from .durable import Durable, stream_digest, write_parquet
from .frames import as_frame, call_on_pieces, split_bounds, take_rows
from .result import Batch, StageSummary, StreamFailures, StreamResult
from .spec import SOURCE

if TYPE_CHECKING:
    from .._graph import BaseGraph
    from .._options import RunOptions

__all__ = ["Engine", "Outputs", "check_stream_graph", "check_stream_limits", "live_bound"]

_INF = math.inf
_QUEUED, _STARTED, _RETRYING = EventKind.QUEUED, EventKind.STARTED, EventKind.RETRYING
_DONE, _FAILED, _CANCELLED = EventKind.DONE, EventKind.FAILED, EventKind.CANCELLED


class _Group:
    """Source batches that end together (a merge ties them): union-find."""

    __slots__ = ("error", "files", "ids", "live", "up")

    def __init__(self, sid: int, live: int) -> None:
        self.up: _Group | None = None
        self.ids = [sid]
        self.live = live
        self.error: BaseException | None = None
        self.files: list[str] = []


def _root(g: _Group) -> _Group:
    while g.up is not None:
        if g.up.up is not None:
            g.up = g.up.up
        g = g.up
    return g


class _Piece:
    __slots__ = ("data", "group", "id", "rows", "sources")

    def __init__(
        self, data: Any, rows: int, id: str, sources: tuple[int, ...], group: _Group
    ) -> None:
        self.data = data
        self.rows = rows
        self.id = id
        self.sources = sources
        self.group = group


class Outputs:
    """Where sinks deliver: a bounded queue read by ``outputs()`` (``pull``), a list
    (``collect``), or nowhere (``drop``). It is a target like a stage's queue."""

    def __init__(self, mode: str, cap: float) -> None:
        self.mode = mode
        self.queue: deque[Batch] = deque()
        self.cap = cap  # in every mode: a sink's running calls reserve a slot here
        self.reserved = 0
        self.collected: list[Batch] = []
        self.waiter: asyncio.Future[None] | None = None
        self.ended = False
        self.on_take: Callable[[], None] | None = None

    def room(self) -> bool:
        return len(self.queue) + self.reserved < self.cap

    def put(self, batch: Batch) -> None:
        if self.mode == "pull":
            self.queue.append(batch)
            self._wake()
        elif self.mode == "collect":
            self.collected.append(batch)

    def drop_all(self) -> None:
        """Nobody will read on: forget what waits and take no more."""
        self.mode = "drop"
        self.queue.clear()
        if self.on_take is not None:
            self.on_take()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def __aiter__(self) -> AsyncIterator[Batch]:
        loop = asyncio.get_running_loop()
        while True:
            if self.queue:
                batch = self.queue.popleft()
                if self.on_take is not None:
                    self.on_take()
                yield batch
                continue
            if self.ended:
                return
            self.waiter = loop.create_future()
            await self.waiter
            self.waiter = None


class _Stage:
    __slots__ = (
        "ancestors",
        "batch_size",
        "busy",
        "call_task",
        "calls",
        "cap",
        "children",
        "done",
        "executor",
        "failed",
        "flush_due",
        "index",
        "kwargs",
        "lane",
        "name",
        "on_loop",
        "priority",
        "queue",
        "queued_rows",
        "rank",
        "reserved",
        "resources",
        "rows_in",
        "rows_out",
        "running",
        "split",
        "src_tag",
        "tags",
        "targets",
        "task",
        "timeout",
        "timer",
    )

    def __init__(self, task: Task, index: int, cap: int) -> None:
        spec = task.stream
        assert spec is not None
        self.task = task
        self.name = task.name
        self.index = index
        self.priority = task.priority
        self.batch_size = spec.batch_size
        self.timeout = spec.batch_timeout
        self.resources = task.resources  # one unit of each per running call (limits=)
        self.cap = cap * len(spec.inputs)
        self.queue: deque[_Piece] = deque()
        self.queued_rows = 0
        self.reserved = 0
        self.split: deque[_Piece] = deque()
        self.running = 0
        self.calls = 0
        self.rank = 0
        self.children: list[_Stage] = []
        self.tags: list[str] = []  # per child: "" or "@k", its k-th input (a union)
        self.src_tag = ""
        self.targets: list[Any] = []  # children, or the outputs channel for a sink
        self.ancestors: list[_Stage] = []
        self.flush_due = False
        self.timer: asyncio.TimerHandle | None = None
        self.kwargs: dict[str, Any] = {}
        self.call_task = task
        self.executor: Executor | None = None
        self.lane: _Lane | None = None
        self.on_loop = False
        self.done = self.failed = self.rows_in = self.rows_out = 0
        self.busy = 0.0

    def room(self) -> bool:
        if len(self.queue) + self.reserved < self.cap:
            return True
        # A merging stage takes one more batch at a time (none on the way) until it
        # holds batch_size rows, or it could never gather a merge.
        bs = self.batch_size
        return bs is not None and self.reserved == 0 and self.queued_rows < bs

    def idle(self) -> bool:
        return not self.queue and not self.split and self.running == 0


class _Lane:
    __slots__ = ("cap", "name", "running", "stages")

    def __init__(self, name: str, cap: float) -> None:
        self.name = name
        self.cap = cap
        self.running = 0
        self.stages: list[_Stage] = []


class _Call:
    __slots__ = ("attempt", "future", "piece", "stage", "started", "timer")

    def __init__(self, stage: _Stage, piece: _Piece) -> None:
        self.stage = stage
        self.piece = piece
        self.attempt = 0
        self.future: asyncio.Future[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.started = 0.0


def check_stream_graph(graph: BaseGraph) -> tuple[list[Task], list[str]]:
    """The stream stages in topological order and the plain tasks, or a clear error:
    no stage, a stage whose input is a plain task or unknown, a plain task downstream
    of a stage, a task named ``source``, a cycle."""
    tasks = graph._dag.tasks
    if SOURCE in tasks:
        raise InvalidTaskError(
            SOURCE,
            f"a stream graph cannot have a task named {SOURCE!r}: stages name the "
            "stream's source so; rename the task",
        )
    for t in tasks.values():
        spec = t.stream
        if spec is None:
            continue
        unknown = [i for i in spec.inputs if i != SOURCE and i not in tasks]
        if unknown:
            raise InvalidTaskError(
                t.name,
                f"its batch input {unknown[0]!r} is not a stage of this graph: a stage's "
                f"first parameter is named {SOURCE!r} (the stream's source) or after the "
                "stream stage it reads (or inputs=[...] names them); a typo?",
            )
    order = graph._dag.topological_order()  # missing dependencies, cycles
    stages = [tasks[n] for n in order if tasks[n].stream is not None]
    if not stages:
        raise TypeError(
            "the graph has no stream stage: define one with @g.stream (its first "
            "parameter named 'source'), or run a plain graph with asyncgraph.run"
        )
    stage_names = {t.name for t in stages}
    for t in stages:
        assert t.stream is not None
        for i in t.stream.inputs:
            if i != SOURCE and i not in stage_names:
                raise InvalidTaskError(
                    t.name,
                    f"its batch input {i!r} is a plain task, not a stream stage: a "
                    "stage's first parameter takes batches from 'source' or a stage; "
                    "move the plain dependency to another parameter",
                )
    plain = [n for n in order if tasks[n].stream is None]
    for n in plain:
        up = [d for d in tasks[n].deps if d in stage_names]
        if up:
            raise InvalidTaskError(
                n,
                f"it is a plain task downstream of stream stage(s) {up}: its input would "
                "be unbounded; make it a stream stage (@g.stream) or read the stream's "
                "output files after it",
            )
    if not any(SOURCE in t.stream.inputs for t in stages if t.stream is not None):
        raise TypeError("no stream stage reads the source (a first parameter named 'source')")
    return stages, plain


def check_stream_limits(stages: list[Task], limits: Mapping[str, int]) -> dict[str, int]:
    """Units in use per limit (all 0), or GraphError naming a stage whose resource has
    no limit: each running call of a stage holds one unit of each of its resources."""
    for t in stages:
        for r in t.resources:
            if r not in limits:
                raise GraphError(
                    f"stream stage {t.name!r} declares resource {r!r} but no limit is set "
                    f"for it; pass limits={{{r!r}: N}} to the stream (limits set: "
                    f"{sorted(limits)})"
                )
    return dict.fromkeys(limits, 0)


def live_bound(graph: BaseGraph, queue_size: int) -> int:
    """The most batches a stream of ``graph`` holds at once (queued, running, and
    delivered but not yet read), when no stage re-batches: ``queue_size`` per input
    edge of every stage, plus ``queue_size`` per sink (the outputs channel).

    Why: a call starts only while each of its targets has ``queued + reserved < cap``
    and holds one reservation in each until it ends, so every running call is counted
    in some target's reservations. A stage with ``batch_size`` adds the pieces of one
    split, and, while it gathers a merge, up to ``batch_size`` rows of batches."""
    stages, _ = check_stream_graph(graph)
    children: dict[str, int] = {t.name: 0 for t in stages}
    edges = 0
    for t in stages:
        assert t.stream is not None
        edges += len(t.stream.inputs)
        for i in t.stream.inputs:
            if i != SOURCE:
                children[i] += 1
    sinks = sum(1 for n in children.values() if n == 0)
    return queue_size * (edges + sinks)


class Engine:
    """One stream of one graph (see the module docstring)."""

    def __init__(
        self,
        graph: BaseGraph,
        source: Callable[..., Any],
        options: RunOptions,
        *,
        queue_size: int,
        max_batches: int | None,
        start: int,
        mode: str,
        max_failed_batches: int | None,
        durable: Durable | None = None,
    ) -> None:
        self.graph = graph
        self.source_fn = source
        self.options = options
        self.queue_size = queue_size
        self.max_batches = max_batches
        self.start = start
        self.max_failed = max_failed_batches
        self.stage_tasks, self.plain = check_stream_graph(graph)
        self.limits = dict(options.limits)
        self.res_used = check_stream_limits(self.stage_tasks, self.limits)
        fed = {i for t in self.stage_tasks for i in t.stream.inputs}  # type: ignore[union-attr]
        sinks = sum(1 for t in self.stage_tasks if t.name not in fed)
        self.out = outputs = Outputs(mode, queue_size * sinks)
        self.stages: dict[str, _Stage] = {}
        self.lanes: list[_Lane] = []
        self.calls: set[_Call] = set()
        self.open: set[_Group] = set()
        self.result = StreamResult()
        self.stopping: str | None = None
        self.fatal: BaseException | None = None
        self.failed_batches = 0
        self.executors: list[Executor] = []
        self.iterator: Any = None
        self.is_async_source = False
        self.next_id = start
        self.pulled = 0
        self.source_done = False
        self.pulling: asyncio.Future[Any] | None = None
        self.source_stages: list[_Stage] = []
        self.wake = asyncio.Event()
        self.rng = options.rng or random.Random()
        self.clock = options.clock or SYSTEM_CLOCK
        self.loop: asyncio.AbstractEventLoop | None = None
        self.peak = 0  # the most live batches seen (queued, split, running, out)
        self.live = 0
        self.track_peak = False
        self.durable = durable
        self.emit: Emit | None = None
        self.bar: StreamProgress | None = None
        self.rows_of: dict[int, int] = {}  # rows the source gave, per open batch (store)
        self.writes = durable is not None and durable.out is not None
        outputs.on_take = self._out_taken

    # -- building ------------------------------------------------------------------

    def _build(self, plain_results: Mapping[str, Any]) -> None:
        _is_frame(None)  # resolves pandas.DataFrame once (_done checks the type first)
        for index, t in enumerate(self.stage_tasks):
            self.stages[t.name] = _Stage(t, index, self.queue_size)
        for st in self.stages.values():
            spec = st.task.stream
            assert spec is not None
            union = len(spec.inputs) > 1
            for k, i in enumerate(spec.inputs):
                tag = f"@{k}" if union else ""
                if i == SOURCE:
                    self.source_stages.append(st)
                    st.src_tag = tag
                else:
                    self.stages[i].children.append(st)
                    self.stages[i].tags.append(tag)
            st.kwargs = {p: plain_results[t] for p, t in st.task.kwargs}
        for st in reversed(list(self.stages.values())):
            st.rank = 1 + max((c.rank for c in st.children), default=-1)
            st.targets = list(st.children) if st.children else [self.out]
        for st in self.stages.values():
            up: dict[str, _Stage] = {}
            spec = st.task.stream
            assert spec is not None
            todo = [self.stages[i] for i in spec.inputs if i != SOURCE]
            while todo:
                a = todo.pop()
                if a.name not in up:
                    up[a.name] = a
                    todo.extend(
                        self.stages[i]
                        for i in a.task.stream.inputs  # type: ignore[union-attr]
                        if i != SOURCE
                    )
            st.ancestors = list(up.values())

    def _executors(self) -> None:
        o = self.options
        if o.backend is not None:
            self.executors = o.backend.executors(
                max_io=o.max_io, cpu_workers=o.cpu_workers, clock=self.clock, pickled=None
            )
        else:
            self.executors = default_executors(o.max_io, o.cpu_workers, self.clock)
        table, lanes = route(self.executors)
        by_lane = {name: _Lane(name, _INF if cap is None else cap) for name, cap, _ in lanes}
        self.lanes = list(by_lane.values())
        checks: dict[int, tuple[Executor, dict[str, Task]]] = {}
        for st in self.stages.values():
            t = st.task
            ex = table[t.kind][t.is_async]
            st.executor = ex
            st.lane = by_lane[ex.lane]
            st.lane.stages.append(st)
            st.on_loop = t.is_async and t.kind is Kind.IO
            if not st.on_loop:
                st.call_task = dataclasses.replace(t, fn=functools.partial(call_on_pieces, t.fn))
            checks.setdefault(id(ex), (ex, {}))[1][t.name] = st.call_task
        for ex, tasks in checks.values():
            ex.check(tasks, list(tasks))
        self.lanes = [lane for lane in self.lanes if lane.stages]  # dispatch skips the rest

    def _open_source(self) -> None:
        fn = self.source_fn
        kwargs: dict[str, Any] = {}
        if self.start:
            if _takes_start(fn):
                kwargs["start"] = self.start
            else:
                self.next_id = 0  # it cannot skip ahead: read from 0, drop below start
        it = fn(**kwargs) if callable(fn) else fn
        if hasattr(it, "__anext__"):
            self.is_async_source = True
        elif hasattr(it, "__next__"):
            pass
        elif hasattr(it, "__aiter__"):
            it = it.__aiter__()
            self.is_async_source = True
        elif hasattr(it, "__iter__"):
            it = iter(it)
        else:
            raise TypeError(
                f"source() returned {type(it).__name__}, not an iterator: the source must "
                "be a callable returning a sync or async iterator of DataFrames (a "
                "generator function, say)"
            )
        self.iterator = it

    # -- running -------------------------------------------------------------------

    async def run(self) -> StreamResult:
        self.loop = asyncio.get_running_loop()
        bar = StreamProgress.make(self.options.progress, self.max_batches)
        self.bar = bar
        watch = Watch(
            False,
            self.options.on_event,
            deadline=self.options.deadline,
            grace=self.options.cancel_grace,
            extra=bar,
        )
        async with watch:
            self.emit = watch.emit
            if bar is not None:
                bar.start()
            try:
                return await self._run()
            finally:
                if bar is not None:
                    bar.close()

    async def _run(self) -> StreamResult:
        began = time.monotonic()
        plain_results = await self._run_plain()
        self._build(plain_results)
        deadline = None
        try:
            if self.durable is not None:
                self._prepare_durable()
            self._executors()
            self._open_source()
            if self.options.deadline is not None:  # counted from the start, plain tasks too
                left = max(0.0, self.options.deadline - (time.monotonic() - began))
                deadline = asyncio.get_running_loop().call_later(left, self.stop, "deadline")
            await self._drive()
        except asyncio.CancelledError:
            self.stopping = self.stopping or "cancelled"
            await wait_to_the_end(self._cleanup())
            raise
        except BaseException:
            self.stopping = self.stopping or "error"
            await wait_to_the_end(self._cleanup())
            raise
        finally:
            if deadline is not None:
                deadline.cancel()
        await wait_to_the_end(self._cleanup())
        if self.fatal is not None:
            raise self.fatal
        r = self.result
        if self.stopping in ("fail_fast", "max_failed_batches"):
            errors = [e for e in r.errors.values() if isinstance(e, Exception)]
            why = (
                "the first failed batch stopped it (fail_fast=True)"
                if self.stopping == "fail_fast"
                else f"{self.failed_batches} failed batches reached max_failed_batches="
                f"{self.max_failed}"
            )
            raise StreamFailures(f"stream stopped: {why}", errors, r)
        return r

    async def _run_plain(self) -> dict[str, Any]:
        if not self.plain:
            return {}
        from .._lifetime import run

        o = self.options
        sub = self.graph._subset(self.plain)
        d = self.durable
        if d is not None and d.reset is not None and d.reset.plain:
            sub = reset_plain(sub, o.store, d.reset.plain)
        done = await run(
            sub,
            max_io=o.max_io,
            cpu_workers=o.cpu_workers,
            limits=o.limits,
            fail_fast=o.fail_fast,
            deadline=o.deadline,
            store=o.store,
            on_event=o.on_event,
            backend=o.backend,
            cancel_grace=o.cancel_grace,
        )
        done.raise_for_failures()
        return dict(done.results)

    async def _drive(self) -> None:
        wake = self.wake
        while True:
            self._dispatch()
            if self.fatal is not None or self.stopping is not None:
                return
            if self._finished():
                return
            wake.clear()
            await wake.wait()

    def _finished(self) -> bool:
        if not self.source_done or self.pulling is not None or self.calls:
            return False
        return all(st.idle() for st in self.stages.values())

    def stop(self, reason: str) -> None:
        """Stop pulling and cancel the running calls; what is unfinished ends cancelled."""
        if self.stopping is None:
            self.stopping = reason
        self.wake.set()

    def _out_taken(self) -> None:
        self.wake.set()

    # -- dispatch ------------------------------------------------------------------

    def _dispatch(self) -> None:
        progress = True
        while progress and self.stopping is None and self.fatal is None:
            progress = False
            for lane in self.lanes:
                while lane.running < lane.cap:
                    st = self._pick(lane)
                    if st is None:
                        break
                    piece = self._take(st)
                    if piece is None:
                        progress = True
                        continue
                    self._start(st, piece)
                    progress = True
            if self._pull():
                progress = True

    def _pick(self, lane: _Lane) -> _Stage | None:
        best: _Stage | None = None
        best_key: tuple[int, int, int, int] | None = None
        for st in lane.stages:
            if not st.split and not (
                st.queue and (st.batch_size is None or self._ready(st))
            ):  # nothing to start (batches as they come need no _ready)
                continue
            if st.resources and not self._units_free(st):
                continue
            for t in st.targets:  # room(), its common case inlined (a call per target)
                if len(t.queue) + t.reserved >= t.cap and not t.room():
                    break
            else:
                key = (st.rank, st.calls, -st.priority, st.index)
                if best_key is None or key < best_key:
                    best, best_key = st, key
        return best

    def _units_free(self, st: _Stage) -> bool:
        used, limits = self.res_used, self.limits
        return all(used[r] < limits[r] for r in st.resources)

    def _ready(self, st: _Stage) -> bool:
        if st.split:
            return True
        q = st.queue
        if not q:
            return False
        bs = st.batch_size
        if bs is None or st.queued_rows >= bs or q[0].rows >= bs:
            return True
        return st.flush_due or self._upstream_idle(st)

    def _upstream_idle(self, st: _Stage) -> bool:
        if not self.source_done or self.pulling is not None:
            return False
        return all(a.idle() for a in st.ancestors)

    def _popleft(self, st: _Stage) -> _Piece | None:
        """The next queued piece of a group still going (a failed group's are dropped)."""
        q = st.queue
        while q:
            p = q.popleft()
            st.queued_rows -= p.rows
            g = p.group
            if g.up is not None:
                g = _root(g)
            if g.error is None:
                return p
            self.live -= 1
            g.live -= 1
            self._maybe_end(g)
        return None

    def _take(self, st: _Stage) -> _Piece | None:
        if st.split:
            p = st.split.popleft()
            if _root(p.group).error is None:
                return p
            self.live -= 1
            g = _root(p.group)
            g.live -= 1
            self._maybe_end(g)
            return None
        bs = st.batch_size
        first = self._popleft(st)
        if first is None or bs is None:
            return first
        st.flush_due = False
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        pieces = [first]
        total = first.rows
        while total < bs and st.queue:
            more = self._popleft(st)
            if more is None:
                break
            pieces.append(more)
            total += more.rows
        if st.queue and st.timeout is not None:
            st.timer = self.loop.call_later(st.timeout, self._flush, st)  # type: ignore[union-attr]
        if len(pieces) == 1 and total <= bs:
            return first
        if len(pieces) == 1:
            parts = [first.data]
            name = first.id
            sources = first.sources
            group = _root(first.group)
        else:
            parts = []
            for p in pieces:
                parts.extend(p.data if type(p.data) is list else [p.data])
            ids = [p.id for p in pieces]
            name = "+".join(ids) if len(ids) <= 3 else f"{ids[0]}+...+{ids[-1]}"
            sources = tuple(sorted({s for p in pieces for s in p.sources}))
            group = self._union([p.group for p in pieces])
            group.live -= len(pieces) - 1
            self.live -= len(pieces) - 1
        if total <= bs:
            return _Piece(parts, total, name, sources, group)
        bounds = split_bounds(total, bs)
        n = len(bounds) - 1
        group.live += n - 1
        self.live += n - 1
        out = [
            _Piece(
                take_rows(parts, bounds[k], bounds[k + 1]),
                bounds[k + 1] - bounds[k],
                f"{name}.{k}",
                sources,
                group,
            )
            for k in range(n)
        ]
        st.split.extend(out[1:])
        self._note_peak()
        return out[0]

    def _union(self, groups: list[_Group]) -> _Group:
        roots: list[_Group] = []
        for g in groups:
            r = _root(g)
            if all(r is not x for x in roots):
                roots.append(r)
        top = roots[0]
        for r in roots[1:]:
            r.up = top
            top.ids.extend(r.ids)
            top.live += r.live
            top.files.extend(r.files)
            if top.error is None:
                top.error = r.error
            self.open.discard(r)
        return top

    def _flush(self, st: _Stage) -> None:
        st.timer = None
        st.flush_due = True
        self.wake.set()

    # -- the source ----------------------------------------------------------------

    def _pull(self) -> bool:
        if self.source_done or self.pulling is not None:
            return False
        for s in self.source_stages:
            if not s.room():
                return False
        if self.max_batches is not None and self.pulled >= self.max_batches:
            self._source_ended()
            return True
        it = self.iterator
        if self.is_async_source:
            fut = asyncio.ensure_future(it.__anext__())
            self.pulling = fut
            for s in self.source_stages:  # its batch has a slot when it comes
                s.reserved += 1
            fut.add_done_callback(self._pulled)
            return False
        try:
            item = next(it)
        except StopIteration:
            self._source_ended()
            return True
        except Exception as exc:  # noqa: BLE001 - the source's own error ends the stream
            self._source_failed(exc)
            return False
        self._feed(item)
        return True

    def _pulled(self, fut: asyncio.Future[Any]) -> None:
        self.pulling = None
        for s in self.source_stages:
            s.reserved -= 1
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, StopAsyncIteration):
            self._source_ended()
        elif exc is not None:
            self._source_failed(exc)
        else:
            self._feed(fut.result())
        self.wake.set()

    def _source_ended(self) -> None:
        self.source_done = True
        self._close_source()

    def _close_source(self) -> None:
        it, self.iterator = self.iterator, None
        if it is None:
            return
        close = getattr(it, "close", None)
        if close is not None and not self.is_async_source:
            close()
        elif self.is_async_source and hasattr(it, "aclose") and self.loop is not None:
            fut = asyncio.ensure_future(it.aclose())
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _source_failed(self, exc: BaseException) -> None:
        err = TaskError(
            f"the stream's source raised {type(exc).__name__} reading batch {self.next_id}: {exc}"
        )
        err.__cause__ = exc
        self.fatal = err
        self.source_done = True
        self.wake.set()

    def _feed(self, item: Any) -> None:
        sid = self.next_id
        self.next_id += 1
        if sid < self.start:
            return  # before start=, for a source that cannot skip ahead itself
        self.pulled += 1
        if not _is_frame(item):
            self.fatal = TypeError(
                f"the stream's source gave {type(item).__name__} as batch {sid}, not a "
                "pandas DataFrame: the source must yield DataFrames"
            )
            return
        rows = len(item.index)
        self.result.rows += rows
        if self.bar is not None:
            self.bar.rows(rows)
        d = self.durable
        if d is not None:
            try:
                skip = d.skip(sid, rows)
            except Exception as exc:  # noqa: BLE001 - a source that does not replay
                self.fatal = exc
                return
            if skip:
                self.result.skipped += 1
                return
            if d.store is not None:
                self.rows_of[sid] = rows
        if rows == 0:
            g = _Group(sid, 0)
            self._end(g)
            return
        emit = self.emit
        if emit is not None:
            emit(Event(_QUEUED, f"source#{sid}", 0, time.time()))
        targets = self.source_stages
        g = _Group(sid, len(targets))
        self.open.add(g)
        piece_id = str(sid)
        for st in targets:
            self._enqueue(st, _Piece(item, rows, piece_id + st.src_tag, (sid,), g))

    def _enqueue(self, st: _Stage, piece: _Piece) -> None:
        if not st.queue and st.timeout is not None and st.timer is None:
            st.timer = self.loop.call_later(st.timeout, self._flush, st)  # type: ignore[union-attr]
        st.queue.append(piece)
        st.queued_rows += piece.rows
        self.live = live = self.live + 1
        if live + len(self.out.queue) > self.peak:  # _note_peak, inlined: once per piece
            self.peak = live + len(self.out.queue)

    def _note_peak(self) -> None:
        live = self.live + len(self.out.queue)
        if live > self.peak:
            self.peak = live

    # -- calls ---------------------------------------------------------------------

    def _start(self, st: _Stage, piece: _Piece) -> None:
        st.running += 1
        st.lane.running += 1  # type: ignore[union-attr]
        if st.resources:  # held until the call ends, its retries' waits included
            for r in st.resources:
                self.res_used[r] += 1
        for t in st.targets:
            t.reserved += 1
        st.rows_in += piece.rows
        call = _Call(st, piece)
        self.calls.add(call)
        self._launch(call)

    def _launch(self, call: _Call) -> None:
        call.timer = None
        st = call.stage
        st.calls += 1
        call.attempt += 1
        call.started = time.perf_counter()
        emit = self.emit
        if emit is not None:
            emit(Event(_STARTED, f"{st.name}#{call.piece.id}", call.attempt, time.time()))
        data = call.piece.data
        if st.on_loop and type(data) is list:
            data = as_frame(data)
        fut = st.executor.start(st.call_task, [data], st.kwargs, _began)  # type: ignore[union-attr]
        call.future = fut
        fut.add_done_callback(functools.partial(self._done, call))

    def _release(self, call: _Call) -> None:
        st = call.stage
        st.running -= 1
        st.lane.running -= 1  # type: ignore[union-attr]
        if st.resources:
            for r in st.resources:
                self.res_used[r] -= 1
        for t in st.targets:
            t.reserved -= 1
        self.calls.discard(call)

    def _done(self, call: _Call, fut: asyncio.Future[Any]) -> None:
        st = call.stage
        st.busy += time.perf_counter() - call.started
        call.future = None
        if self.stopping is not None:
            return  # the stop's cleanup accounts for it
        exc: BaseException | None = None
        try:
            value = fut.result()  # one call on the hot path, not exception() then result()
        except asyncio.CancelledError:
            exc = TaskCancelled(
                f"stream stage {st.name!r} was cancelled from inside on batch {call.piece.id}"
            )
        except BaseException as error:  # noqa: BLE001 - the call's own error, as data
            exc = error
        if exc is None:
            if value is None and st.children:
                exc = TypeError(
                    f"stream stage {st.name!r} returned None for batch {call.piece.id}, and "
                    f"stages take its output ({', '.join(c.name for c in st.children)}): "
                    "return a DataFrame (an empty one passes nothing on); a missing return?"
                )
            elif value is not None and type(value) is not _FRAME[0] and not _is_frame(value):
                exc = TypeError(
                    f"stream stage {st.name!r} returned {type(value).__name__} for batch "
                    f"{call.piece.id}, not a pandas DataFrame (a sink may return None)"
                )
            else:
                if self.writes and not st.children and value is not None and len(value):
                    self._write(call, value)
                    return
                self._release(call)
                self._succeeded(call, value)
                self.wake.set()
                return
        if not isinstance(exc, Exception):
            self.fatal = exc
            self.wake.set()
            return
        if call.attempt <= st.task.retries and _root(call.piece.group).error is None:
            delay = backoff(st.task, call.attempt, self.rng.uniform)
            emit = self.emit
            if emit is not None:
                name = f"{st.name}#{call.piece.id}"
                emit(Event(_RETRYING, name, call.attempt, time.time(), exc))
            assert self.loop is not None
            call.timer = self.loop.call_later(delay, self._launch, call)
            return
        self._release(call)
        self._failed(call, exc)
        self.wake.set()

    def _write(self, call: _Call, value: Any) -> None:
        """A sink's output to its file, in a thread; the call holds its slot until then."""
        assert self.durable is not None
        assert self.loop is not None
        path = self.durable.path_for(call.stage.name, call.piece.id)
        fut = self.loop.run_in_executor(None, write_parquet, value, path)
        call.future = fut
        fut.add_done_callback(functools.partial(self._written, call, value, path))

    def _written(self, call: _Call, value: Any, path: str, fut: asyncio.Future[Any]) -> None:
        call.future = None
        if self.stopping is not None:
            return
        exc = None if fut.cancelled() else fut.exception()
        self._release(call)
        if exc is None and not fut.cancelled():
            self._succeeded(call, value, path)
        else:
            err = exc if isinstance(exc, Exception) else TaskCancelled(f"writing {path}")
            self._failed(call, err)
        self.wake.set()

    def _succeeded(self, call: _Call, value: Any, path: str | None = None) -> None:
        st = call.stage
        st.done += 1
        piece = call.piece
        emit = self.emit
        if emit is not None:
            emit(Event(_DONE, f"{st.name}#{piece.id}", call.attempt, time.time()))
        g = piece.group
        if g.up is not None:
            g = _root(g)
        rows = 0 if value is None else len(value.index)
        st.rows_out += rows
        if g.error is not None or rows == 0:
            self.live -= 1
            g.live -= 1
            self._maybe_end(g)
            return
        if st.children:
            g.live += len(st.children) - 1
            self.live -= 1
            for c, tag in zip(st.children, st.tags, strict=True):
                self._enqueue(c, _Piece(value, rows, piece.id + tag, piece.sources, g))
            return
        out = self.out
        if out.mode != "drop":  # nobody reads or keeps it: no Batch to build
            out.put(Batch(st.name, piece.id, rows, value, piece.sources, path))
        if path is not None:
            g.files.append(path)
        self.live -= 1
        self._note_peak()
        g.live -= 1
        self._maybe_end(g)

    def _failed(self, call: _Call, exc: BaseException) -> None:
        st = call.stage
        st.failed += 1
        emit = self.emit
        if emit is not None:
            emit(Event(_FAILED, f"{st.name}#{call.piece.id}", call.attempt, time.time(), exc))
        g = _root(call.piece.group)
        if g.error is None:
            if not getattr(exc, "__notes__", None) or all(
                not n.startswith("stream stage") for n in exc.__notes__
            ):
                exc.add_note(f"stream stage {st.name!r}, batch {call.piece.id}")
            g.error = exc
            self.failed_batches += len(g.ids)
        self.live -= 1
        g.live -= 1
        self._maybe_end(g)
        if self.options.fail_fast:
            self.stop("fail_fast")
        elif self.max_failed is not None and self.failed_batches >= self.max_failed:
            self.stop("max_failed_batches")

    def _maybe_end(self, g: _Group) -> None:
        if g.live == 0:
            self.open.discard(g)
            self._end(g)

    def _end(self, g: _Group) -> None:
        r = self.result
        if g.error is None:
            r.done += len(g.ids)
            r.files.extend(g.files)
            status = "done"
        else:
            r.failed += len(g.ids)
            for sid in g.ids:
                r.errors[sid] = g.error
            status = "failed"
        if self.durable is not None:
            self._record(g, status)
        if self.emit is not None:
            tell = functools.partial(self._tell, list(g.ids), g.error)
            d = self.durable
            if d is not None and d.store is not None:
                d.waiting.append(tell)  # with a store: once the batch is durable
            else:
                tell()

    def _tell(self, ids: list[int], error: BaseException | None) -> None:
        emit = self.emit
        if emit is None:
            return
        now = time.time()
        kind = _DONE if error is None else _FAILED
        for sid in ids:
            emit(Event(kind, f"source#{sid}", 0, now, error))

    # -- the end -------------------------------------------------------------------

    async def _cleanup(self) -> None:
        """Cancel what runs, wait for it (bounded by cancel_grace), close the executors
        and the source; record the unfinished batches cancelled."""
        for st in self.stages.values():
            if st.timer is not None:
                st.timer.cancel()
                st.timer = None
        futures = []
        emit = self.emit
        for call in self.calls:
            if emit is not None:
                name = f"{call.stage.name}#{call.piece.id}"
                emit(Event(_CANCELLED, name, call.attempt, time.time()))
            if call.timer is not None:
                call.timer.cancel()
            if call.future is not None:
                call.future.cancel()
                futures.append(call.future)
        if self.pulling is not None:
            self.pulling.cancel()
            futures.append(self.pulling)
        if futures:
            await asyncio.wait(futures, timeout=self.options.cancel_grace)
        for ex in self.executors:
            with contextlib.suppress(Exception):  # closing the rest matters more
                await ex.aclose()
        self.executors = []
        self._close_source()
        open_groups = [g for g in self.open if g.up is None]
        self.open.clear()
        self.calls.clear()
        for g in open_groups:
            self.result.cancelled += len(g.ids)
            if self.durable is not None:
                self._record(g, "cancelled")
            emit = self.emit
            if emit is not None:
                now = time.time()
                why = TaskCancelled(f"the stream stopped ({self.stopping})")
                for sid in g.ids:
                    emit(Event(_CANCELLED, f"source#{sid}", 0, now, why))
        r = self.result
        if self.stopping is not None and self.stopping != "error":
            r.stopped = self.stopping
        for st in self.stages.values():
            r.stages[st.name] = StageSummary(
                st.name, st.calls, st.done, st.failed, st.rows_in, st.rows_out, st.busy
            )
        r.outputs = self.out.collected
        if self.durable is not None:
            self.durable.close(r)
        self.out.end()

    # -- out= and store= ---------------------------------------------------------------

    def _prepare_durable(self) -> None:
        d = self.durable
        assert d is not None
        sinks = [st.name for st in self.stages.values() if not st.children]
        digest = ""
        if d.store_path is not None:
            plain = self.graph._subset(self.plain) if self.plain else None
            digest = stream_digest(self.stage_tasks, plain)
        d.prepare(sinks, digest)
        if self.start == 0 and d.done:
            gap = d.first_gap()
            if gap and _takes_start(self.source_fn):
                self.start = self.next_id = gap
                self.result.skipped += gap

    def _record(self, g: _Group, status: str) -> None:
        d = self.durable
        assert d is not None
        if status != "done" and g.files:
            d.discard(g.files)
            g.files = []
        if d.store is None:
            return
        err = g.error
        et = None if err is None else type(err).__name__
        em = None if err is None else str(err)
        rows_of = self.rows_of
        d.ended(
            [
                (sid, status, rows_of.pop(sid, 0), g.files if status == "done" else [], et, em)
                for sid in g.ids
            ]
        )


def reset_plain(sub: Any, store: Any, names: tuple[str, ...]) -> Any:
    """The plain tasks' graph with ``names`` (and what depends on them) to run again:
    loaded from the store as a run on it would be, then reset."""
    from .._rewrite import reset, reset_failed
    from .._store.resume import load

    if store is not None and sub._origin is None:
        sub = reset_failed(load(sub, store))
    return reset(sub, names)


def _takes_start(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "start" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


def _began(name: str, when: float) -> None:
    return None


_FRAME: list[type] = []


def _is_frame(value: Any) -> bool:
    if not _FRAME:
        import pandas as pd

        _FRAME.append(pd.DataFrame)
    return isinstance(value, _FRAME[0])
