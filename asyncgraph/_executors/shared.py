"""A process pool started once and shared by many runs, on any loop and any thread.

:class:`SharedPool` is a :class:`~asyncgraph._executors.process.ProcessPool` that lives on
an event loop of its own, in a daemon thread of its own ("the pool's thread"), from
:meth:`SharedPool.start` to :meth:`SharedPool.close`. A run reaches it through a
:class:`PoolClient` (one per run, made by :class:`SharedProcessExecutor`), which hands
each attempt to the pool's loop with ``call_soon_threadsafe`` and is told the outcome the
same way. So one pool serves runs on several loops at once: ``await ag.run(...)`` in an
application, ``ag.run_sync(...)`` (a fresh loop each time), a notebook's helper thread.

Why a thread of its own and not the loop that started it? A worker's pipes belong to one
loop, and ``run_sync`` makes a new loop per call: a pool tied to the loop of its
``async with`` could serve no ``run_sync``, and one inside a notebook (whose loop waits
for ``run_sync``'s helper thread) would deadlock. The price is one hop between threads
each way per attempt (tens of microseconds), against the 100 ms and more of starting a
worker per run.

What a shared pool keeps from the run's own pool: a worker that dies fails only its
task and is replaced at once (the new one boots in the background, so the next call
does not pay for its start); a cancelled or timed-out attempt has its worker killed
(the one really stopped is that run's task, never another run's); the workers die with
the process (the watchdog pipe, the parent-death signal: the pool's
thread started them and lives as long as they do). Calls beyond the pool's size wait
for a free worker, served by their task's ``priority`` across runs, in turns between
runs at equal priority, each run's calls in its own order (:class:`_Slots`); each run's
``cpu_workers`` caps that run's own attempts in flight.

State it keeps
    ``SharedPool``   ``size``; ``thread`` and ``loop`` (the pool's own, while started);
                     ``pool`` (the ProcessPool on that loop); ``slots`` (its
                     :class:`_Slots` of ``size``: a call holds one while it has a
                     worker, and waiting calls are served by priority, then in turns);
                     ``calls`` (each call in flight: its task on the pool's loop);
                     ``state`` ("new", "started", "closed");
    ``PoolClient``   ``shared``; ``pending`` (this run's calls not yet ended, to wait
                     for at the run's end).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import heapq
import itertools
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future as _ThreadFuture
from typing import Any

from .._clock import SYSTEM_CLOCK, Clock
from .._shield import shielded, wait_to_the_end
from .._task import Task
from . import process as _process
from .process import Mapped, ProcessExecutor, ProcessPool, pickled_args

__all__ = ["BackendClosedError", "PoolClient", "SharedPool", "SharedProcessExecutor"]

#: The pools started in this process and not closed: closed at the interpreter's exit.
_OPEN: weakref.WeakSet[SharedPool] = weakref.WeakSet()


class BackendClosedError(RuntimeError):
    """A shared pool was used after it was closed, or closed under a running task."""


class _Call:
    """One attempt on the shared pool: what to run and whom to tell (thread-safe)."""

    __slots__ = (
        "args", "cancelled", "fn", "owner", "priority", "report", "started", "task",
        "worker_task",
    )  # fmt: skip

    def __init__(
        self,
        task: str,
        fn: bytes,
        args: bytes,
        started: Callable[[float], None],
        report: Callable[[str, Any], None],
        priority: int = 0,
        owner: object = None,
    ) -> None:
        self.task = task
        self.fn = fn
        self.args = args
        self.started = started
        self.report = report  # report(kind, value): "ok" bytes, "error" exc, "cancelled"
        self.priority = priority  # the task's ``priority``: higher is served first
        self.owner = owner  # whose call (the run's PoolClient): turns are fair between runs
        self.cancelled = False
        self.worker_task: asyncio.Task[None] | None = None


class _Slots:
    """The pool's ``size`` workers, handed to the calls that wait for one in order of
    their task's ``priority`` (higher first) across runs; among calls of equal priority,
    the run whose last turn is the oldest goes first (round robin: a run with many
    calls waiting does not starve one that has a few); within a run, its calls in the
    order it sent them (its scheduler's: critical path, then definition order). On the
    pool's loop only.

    State it keeps
        ``free`` (workers no call holds); ``waiting`` (each run's heap of
        ``(-priority, seq, future)``: a future is granted a worker by ``set_result``);
        ``held`` (each run's calls holding a worker); ``turns`` (each run's last turn,
        from ``_clock``; forgotten when the run has no call here, so a run that comes
        back goes first among equals, as one that never had a turn); ``_seq`` (the
        order calls came in).
    """

    def __init__(
        self,
        size: int,
        extra: int = 0,
        promise: Callable[[], bool] | None = None,
        unpromise: Callable[[], None] | None = None,
    ) -> None:
        self.size = size
        #: Beyond ``size`` calls held, up to ``extra`` more are granted, each only if the
        #: pool ``promise``s it a place (a worker that the calls queued in others left
        #: idle, or a place queued behind a short running call: see ProcessPool);
        #: ``unpromise`` gives back the place of a grant cancelled before it was used.
        #: The best waiting call gets it, as any worker.
        self.extra = extra
        self.promise = promise
        self.unpromise = unpromise
        self.used = 0
        self.waiting: dict[object, list[tuple[int, int, asyncio.Future[bool]]]] = {}
        self.held: dict[object, int] = {}
        self.turns: dict[object, int] = {}
        self._seq = itertools.count()
        self._clock = itertools.count()
        #: Called after each change (a call queued, granted, or gone): for a watcher
        #: that waits on the queue instead of polling it (tests).
        self.watch: Callable[[], None] | None = None

    @property
    def free(self) -> int:
        """Workers no call holds (calls queued behind running ones aside)."""
        return max(0, self.size - self.used)

    def _grantable(self) -> bool | None:
        """Whether a call may be granted now: True (fewer than ``size`` held: a worker is
        free), False (the pool promised it a place), None (not now)."""
        if self.used < self.size:
            return True
        if self.used < self.size + self.extra and self.promise is not None and self.promise():
            return False
        return None

    def __len__(self) -> int:
        """How many calls wait for a worker."""
        return sum(len(q) for q in self.waiting.values())

    async def acquire(self, priority: int, owner: object) -> bool:
        """Wait for a worker (at once if one is free and nobody waits); True if the
        grant is a place the pool promised behind a running call (see ``extra``)."""
        if not self.waiting:
            kind = self._grantable()
            if kind is not None:
                self._grant(owner)
                if self.watch is not None:
                    self.watch()
                return not kind
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (-priority, next(self._seq), future)
        heapq.heappush(self.waiting.setdefault(owner, []), entry)
        self._hand_out()
        if self.watch is not None:
            self.watch()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                if future.result() and self.unpromise is not None:
                    self.unpromise()
                self.release(owner)  # granted as it was cancelled: pass the worker on
            else:
                queue = self.waiting.get(owner)
                if queue is not None and entry in queue:
                    queue.remove(entry)
                    heapq.heapify(queue)
                    if not queue:
                        del self.waiting[owner]
                self._forget(owner)
                if self.watch is not None:
                    self.watch()
            raise

    def release(self, owner: object) -> None:
        """A call of ``owner`` let go of its worker: the best waiting call gets it."""
        self.used -= 1
        self.held[owner] -= 1
        self._forget(owner)
        self._hand_out()
        if self.watch is not None:
            self.watch()

    def _hand_out(self) -> None:
        while self.waiting:
            best = min(self.waiting, key=self._rank)
            queue = self.waiting[best]
            if queue[0][2].done():  # cancelled, its waiter not yet woken: skip it
                heapq.heappop(queue)
                if not queue:
                    del self.waiting[best]
                self._forget(best)
                continue
            kind = self._grantable()
            if kind is None:
                return
            _, _, future = heapq.heappop(queue)
            if not queue:
                del self.waiting[best]
            self._grant(best)
            future.set_result(not kind)

    def _grant(self, owner: object) -> None:
        self.used += 1
        self.held[owner] = self.held.get(owner, 0) + 1
        self.turns[owner] = next(self._clock)

    def _rank(self, owner: object) -> tuple[int, int]:
        return self.waiting[owner][0][0], self.turns.get(owner, -1)

    def _forget(self, owner: object) -> None:
        if not self.held.get(owner) and owner not in self.waiting:
            self.held.pop(owner, None)
            self.turns.pop(owner, None)


class SharedPool:
    """A ProcessPool on a loop of its own in a daemon thread (see the module)."""

    def __init__(self, size: int, owner: str = "ProcessBackend", depth: int | None = None) -> None:
        self.size = size
        # Calls in flight per worker (process.DEPTH, read now: a benchmark may set it).
        self.depth = _process.DEPTH if depth is None else depth
        self.owner = owner  # how errors name it
        self.state = "new"
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool: ProcessPool | None = None
        self.slots: _Slots | None = None
        self.calls: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()  # orders start, submit and close across threads

    # -- its lifetime (any thread) -------------------------------------------------------

    def start(self) -> _ThreadFuture[None]:
        """Start the thread, its loop and every worker; the future ends when all are up
        (or with the error that stopped a worker from starting: then call close)."""
        with self._lock:
            if self.state == "closed":
                raise BackendClosedError(f"this {self.owner} was closed; make a new one")
            if self.state == "started":
                done: _ThreadFuture[None] = _ThreadFuture()
                done.set_result(None)
                return done
            ready = threading.Event()
            thread = threading.Thread(
                target=self._main, args=(ready,), name=f"asyncgraph {self.owner}", daemon=True
            )
            thread.start()
            ready.wait()
            self.thread = thread
            self.state = "started"
            _OPEN.add(self)
            assert self.loop is not None
            return asyncio.run_coroutine_threadsafe(self._prestart(), self.loop)

    def _main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        pool = ProcessPool(
            self.size, replace=True, depth=self.depth
        )  # a dead worker: a new one at once
        self.pool = pool
        self.slots = _Slots(self.size, self.size * (pool.depth - 1), pool.promise, pool.unpromise)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _prestart(self) -> None:
        assert self.pool is not None
        await self.pool.prestart()

    def close(self) -> _ThreadFuture[None] | None:
        """Stop every call (each fails with BackendClosedError), kill the workers, stop
        the loop; the future ends when all is done (None: nothing was started)."""
        with self._lock:
            state, self.state = self.state, "closed"
            _OPEN.discard(self)
        if state != "started":
            return None
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)

    def join(self) -> None:
        """Wait for the pool's thread to end (after :meth:`close`'s future)."""
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()

    async def _shutdown(self) -> None:
        for call in list(self.calls):
            call.cancel()
        while self.calls:
            await asyncio.wait(list(self.calls))
        assert self.pool is not None
        assert self.loop is not None
        await self.pool.aclose()
        self.loop.call_soon(self.loop.stop)

    # -- the calls -----------------------------------------------------------------------

    def submit(self, call: _Call) -> None:
        """Hand ``call`` to the pool's loop (from any thread). Raises
        BackendClosedError if the pool is not running."""
        with self._lock:
            if self.state != "started":
                raise BackendClosedError(self._not_running(call.task))
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._begin, call)

    def cancel(self, call: _Call) -> None:
        """Stop ``call`` (from any thread): its worker is killed if it runs."""
        with self._lock:
            if self.state != "started":
                return  # closing: every call is being stopped anyway
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self._cancel, call)

    def _not_running(self, task: str) -> str:
        if self.state == "new":
            return (
                f"task {task!r}: this {self.owner} was not started; use it as "
                f"`async with ag.{self.owner}(...) as pool:` (or `with`), or "
                f"`pool = await ag.{self.owner}(...).start()` first"
            )
        return f"task {task!r}: this {self.owner} was closed; make a new one"

    def _begin(self, call: _Call) -> None:
        assert self.loop is not None
        if call.cancelled:
            call.report("cancelled", None)
            return
        if self.state != "started":
            call.report("error", self._closed_under(call))
            return
        worker_task = self.loop.create_task(self._serve(call))
        call.worker_task = worker_task
        self.calls.add(worker_task)
        worker_task.add_done_callback(self.calls.discard)
        # Cancelled before its first step, the task never enters _serve's try: say so.
        worker_task.add_done_callback(functools.partial(self._ended, call))

    def _ended(self, call: _Call, worker_task: asyncio.Task[None]) -> None:
        if worker_task.cancelled():
            self._stopped(call)

    def _stopped(self, call: _Call) -> None:
        if call.cancelled:
            call.report("cancelled", None)
        else:  # the pool is closing under the run
            call.report("error", self._closed_under(call))

    def _closed_under(self, call: _Call) -> BackendClosedError:
        return BackendClosedError(f"task {call.task!r}: its {self.owner} was closed while it ran")

    def _cancel(self, call: _Call) -> None:
        call.cancelled = True
        if call.worker_task is not None:
            call.worker_task.cancel()

    async def _serve(self, call: _Call) -> None:
        assert self.pool is not None
        assert self.slots is not None
        slots = self.slots
        try:
            promised = await slots.acquire(call.priority, call.owner)
            try:
                data = await self.pool.call_pickled(
                    call.task, call.fn, call.args, call.started, call.priority, promised
                )
            finally:
                slots.release(call.owner)
        except asyncio.CancelledError:
            self._stopped(call)
        except BaseException as exc:  # noqa: BLE001 - the attempt's outcome, handed over
            call.report("error", exc)
        else:
            call.report("ok", data)


class PoolClient:
    """One run's way into a :class:`SharedPool`; lives on the run's loop."""

    def __init__(self, shared: SharedPool) -> None:
        self.shared = shared
        self.pending: set[asyncio.Future[None]] = set()

    async def call(
        self,
        task: str,
        fn_bytes: bytes,
        args: tuple[Any, ...],
        on_start: Callable[[float], None] | None = None,
        priority: int = 0,
    ) -> bytes:
        """One attempt on the shared pool; cancelled, its worker is killed and the call
        returns (re-raising the cancellation) once the pool has let go of it. With more
        calls than workers, ``priority`` (the task's) orders it among all runs' calls
        (see :class:`_Slots`)."""
        data = pickled_args(task, args)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[bytes] = loop.create_future()
        ended: asyncio.Future[None] = loop.create_future()

        def settle(kind: str, value: Any) -> None:  # on the run's loop
            if not reply.done():
                if kind == "ok":
                    reply.set_result(value)
                elif kind == "error":
                    reply.set_exception(value)
                else:
                    reply.cancel()
            if not ended.done():
                ended.set_result(None)

        def report(kind: str, value: Any) -> None:  # on the pool's thread
            with contextlib.suppress(RuntimeError):  # the run's loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, kind, value)

        def started(when: float) -> None:  # on the pool's thread
            if on_start is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(on_start, when)

        call = _Call(task, fn_bytes, data, started, report, priority, self)
        self.shared.submit(call)
        self.pending.add(ended)
        ended.add_done_callback(self.pending.discard)
        try:
            return await reply
        except asyncio.CancelledError:
            if not ended.done():
                self.shared.cancel(call)
                # As with a pool of the run's own: the attempt ends once its worker has.
                await wait_to_the_end(asyncio.wait((ended,)))
            raise

    async def aclose(self) -> None:
        """Wait for this run's calls that are still being stopped (never the pool)."""
        with shielded():
            while self.pending:
                await asyncio.wait(list(self.pending))


class SharedProcessExecutor(ProcessExecutor):
    """The ``"cpu"`` lane of a run on a shared pool: :class:`ProcessExecutor`'s check
    and result path, with attempts sent to the shared pool; at most ``capacity`` of
    this run's attempts at once."""

    def __init__(
        self,
        shared: SharedPool,
        capacity: int,
        clock: Clock = SYSTEM_CLOCK,
        pickled: Callable[[str, bytes], None] | None = None,
    ) -> None:
        super().__init__(capacity, clock, pickled)
        self.shared = shared
        # The run's calls in flight: with the whole pool (``capacity`` = its size) each
        # worker's worth and a call queued behind it when the pool can pipeline (see
        # ProcessPool): at most ``size`` of them run. A run capped below the pool's size
        # keeps one call per slot: its extra calls would run on the other workers, past
        # its ``cpu_workers``.
        self.capacity = capacity * shared.depth if capacity >= shared.size else capacity

    def make_pool(self) -> PoolClient:
        return PoolClient(self.shared)

    async def pool_call(
        self, task: Task, fn: bytes, args: tuple[Any, ...], on_start: Callable[[float], None]
    ) -> bytes | Mapped:
        """The attempt, with its task's priority (see :class:`_Slots`)."""
        assert isinstance(self.pool, PoolClient)
        return await self.pool.call(task.name, fn, args, on_start, task.priority)


@atexit.register
def _close_open_pools() -> None:
    """At the interpreter's exit, kill the workers of pools nobody closed."""
    for shared in list(_OPEN):
        done = shared.close()
        if done is not None:
            with contextlib.suppress(Exception):
                done.result(timeout=10)
