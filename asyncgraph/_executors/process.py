"""The CPU pool: worker processes owned by one run.

Why not :class:`concurrent.futures.ProcessPoolExecutor`? When one of its workers dies it
marks the whole pool broken and fails *every* pending future. Here each worker is a
separate child with its own pipes, so a worker that dies (``os._exit``, a signal, the
out-of-memory killer) fails only the task it was running; the pool starts a fresh
worker for the next task. A task that times out or is cancelled has its worker killed,
which really stops the work, unlike a thread.

Workers start with the run (:meth:`ProcessExecutor.begin`, in the background, as many as
the run has CPU tasks to run, at most ``size``), so they boot while the run's IO tasks
and its store's opening go on; a call that comes before they are up waits for them
instead of starting more. They are reused, and each imports the modules the run's CPU
functions name before its first call (``preload``). The runner sends up to ``depth``
calls per worker at once (the executor's capacity): a call goes to an idle worker, a new
one, or queues in a worker behind a short running call (see "Pipelining" in
:class:`ProcessPool`), else waits in the pool for the next free worker. Workers are started
with ``subprocess`` (never ``fork``: the driver has threads and a running loop), so they
share nothing with the parent but ``sys.path``; functions and values cross with
cloudpickle.

Process groups. Each worker starts in a session, and so a process group, of its own; a
worker is always stopped by killing its whole group, so a program its task started
(``subprocess.run(["sleep", "30"])``, a fork) goes with it: on a timeout, a cancel, the
pool's end, the worker's own death, and the driver's death (see asyncgraph/_executors/_worker.py).
A program that starts a session of its own (``start_new_session=True``) leaves the group
and is not stopped.

Exits. Each worker has a thread of the driver blocked in ``waitid(WNOWAIT)`` on it, which
hears of its exit at once, kills its group while the dead worker's pid still reserves the
group's id, reaps it, and tells the loop (``call_soon_threadsafe``). A call races the
worker's replies against that exit, so a worker whose fork still holds the reply pipe
is noticed when it dies, not when the fork does. asyncio's own subprocess support could
not do this: before Python 3.12 its ``wait()`` returns only once every pipe has closed.

Starts. A worker answers each call with a ``started`` frame (and its clock) before it
loads the task. A worker that dies before that frame arrives never began the task (an
idle worker the out-of-memory killer took, say): the call moves to a fresh worker, once.

Results. The worker pickles a result (cloudpickle); the pool returns those bytes, and
:class:`ProcessExecutor` unpickles them once, as the attempt ends, in a thread (a small
pickle that names no callable, on the loop), then hands the same bytes to the run's
ledger, so a store keeps them as they are instead of pickling the value again on the
loop. A big reply frame leaves the pipe's buffer as a view, with no copy.

Big results. A result whose out-of-band buffers (pickle protocol 5: numpy's, pandas',
Arrow's data) come to 1 MiB or more is not pickled into the pipe: the worker writes the
buffers into a memfd of its own, and the pool maps that memfd (``/proc/<pid>/fd/<fd>``,
``MAP_PRIVATE``) as the reply arrives, before the worker is reused (:class:`Mapped`).
The value's arrays are then views of that mapping: one copy in all (the worker's
write), where the pipe took a pickle, two frame copies and an unpickle. A store gets
the same pickle with the buffers in it (:func:`inband`), made in the load's thread, so
its rows stay plain pickles. Nothing is named in ``/dev/shm``: the memory goes with the
last mapping, however the processes end. The worker closes its memfd when the parent
says it mapped it (``release``), not at its next call, which may be in the pipe already.

State it keeps
    ``ProcessPool``      its workers by state: ``_idle`` (reused first), ``_busy`` (in a
                         call, or two: each worker's ``inflight``, ``fns`` and ``tail``,
                         the last call's :class:`_Turn`), ``_starting`` (being started;
                         ``_launching``, not yet forked), ``_abandoned`` (their call
                         was cancelled: killed at the end), ``_dead`` (died while idle,
                         reaped by their threads); ``_watch``, the watchdog pipe;
                         ``_warming`` (workers started ahead, until they are up);
                         ``preload``; ``lean`` (workers load by-value functions
                         without cloudpickle: ``_worker.lean_loads``); ``replace`` (a
                         dead worker is replaced at once); ``_maps`` (whether a
                         worker's memfd can be mapped here); ``depth``; ``_waiting``
                         (calls waiting for a worker, by priority then arrival);
                         ``_times`` (each function's call time here: who may queue
                         behind it); ``_promised`` (queue places a shared pool's
                         grants hold); ``_skips`` (reading cancelled queued calls'
                         replies);
    ``ProcessExecutor``  ``depth`` and ``capacity`` (``workers * depth``), ``fn_bytes``
                         (each CPU task's pickled function, from the check),
                         ``pool`` (its workers start with the run: ``begin``),
                         ``_to_warm``, ``threads`` (where results are unpickled)
                         and ``pickled`` (the ledger's hook).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import mmap
import os
import pickle
import pickletools
import re
import signal
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio
import cloudpickle

from .._clock import SYSTEM_CLOCK, Clock
from .._exceptions import PicklingError, RemoteError, UnpicklingError, WorkerDiedError
from .._shield import shielded, wait_to_the_end
from .._task import Kind, Task
from . import _worker
from .base import Began, with_timeout
from .threads import Threads

__all__ = [
    "Mapped",
    "PoolLike",
    "ProcessExecutor",
    "ProcessPool",
    "outcome",
    "pickled_args",
    "pickled_function",
    "shipping_problem",
]

_HEADER = struct.Struct(">Q")
_BIG = 1 << 16  # a reply frame past this many bytes is not copied out of its buffer
_WORKER = str(Path(__file__).with_name("_worker.py"))
#: A worker's first bytes on its requests pipe are its module's code (``marshal``, an
#: 8-byte length first), compiled once per parent process (``_worker_code``); it runs
#: them as module ``__asyncgraph_worker__``. Loading the source itself compiled it in
#: every worker wherever no ``.pyc`` could be written or read (PYTHONDONTWRITEBYTECODE,
#: common in container images; a read-only install): 6 ms of each worker's start. A
#: parent gone before it sent them (end of file) leaves the worker nothing to do.
_BOOT = """import sys, os, marshal
def read(n):
    got = b""
    while len(got) < n:
        chunk = os.read(0, n - len(got))
        if not chunk:
            raise SystemExit(0)
        got += chunk
    return got
code = marshal.loads(read(int.from_bytes(read(8), "big")))
module = type(sys)("__asyncgraph_worker__")
module.__file__ = sys.argv[1]
del read
exec(code, module.__dict__)
"""


@functools.cache
def _worker_code() -> bytes:
    """The worker module's code, marshalled, with its length first (see ``_BOOT``): from
    its ``.pyc`` where the import system keeps one, else compiled here, once."""
    import importlib.machinery
    import marshal

    loader = importlib.machinery.SourceFileLoader("__asyncgraph_worker__", _WORKER)
    code = marshal.dumps(loader.get_code("__asyncgraph_worker__"))
    return _HEADER.pack(len(code)) + code


class _Replies(asyncio.Protocol):
    """The reading end of a worker's reply pipe: bytes in, whole frames out."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.frames: deque[bytes | memoryview] = deque()
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while len(buffer) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(buffer)
            end = _HEADER.size + n
            if len(buffer) < end:
                break
            if end == len(buffer) and n > _BIG:
                # A big frame that is all the buffer holds (a big result: the worker
                # then waits): handed over as a view, with no copy on the loop.
                self.frames.append(memoryview(buffer)[_HEADER.size :])
                self.buffer = buffer = bytearray()
                break
            # One copy, through a view: ``bytes(buffer[a:b])`` copies twice (the slice,
            # then the bytes).
            with memoryview(buffer) as view:
                self.frames.append(bytes(view[_HEADER.size : end]))
            del buffer[:end]
        if self.frames:
            self.wake()

    def eof_received(self) -> None:
        self.eof = True
        self.wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _Worker:
    """One worker process: its pipes, and the thread that waits for its exit."""

    def __init__(self, loop: asyncio.AbstractEventLoop, watch_fd: int) -> None:
        out_fd = _dup_stdout()
        fds = [watch_fd] if out_fd is None else [watch_fd, out_fd]
        try:
            # Started from the loop's thread, never from a helper thread: the worker's
            # parent-death signal fires when the *thread* that started it exits.
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _BOOT,
                    _WORKER,
                    str(2 if out_fd is None else out_fd),
                    str(os.getpid()),
                    str(watch_fd),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
                bufsize=0,
                pass_fds=fds,
                start_new_session=True,  # its own group: killpg(pid) stops what it started
            )
        finally:
            if out_fd is not None:
                os.close(out_fd)
        self.pid = self.popen.pid
        self.loop = loop
        self.replies = _Replies()
        self.reader: asyncio.ReadTransport | None = None
        self.writer: asyncio.WriteTransport | None = None
        self.initialised = False  # has it been sent the parent's sys.path yet?
        self.exitcode: int | None = None
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.killed = False  # did we kill it (a timeout, a cancel, the end)?
        # Its calls in flight (at most the pool's depth): how many, their functions
        # (whether one more may queue behind them), how many were sent, and the last
        # one's end of reading (the next call reads its replies after that).
        self._outbox: list[bytes] = []  # frames to write at the end of the turn
        self.inflight = 0
        self.fns: list[bytes] = []
        self.sent = 0
        self.tail: asyncio.Future[None] | None = None
        self.running: _Turn | None = None  # the call it runs now, once it said it began
        self._lock = threading.Lock()  # orders our kills against the reaping
        self._reaped = False
        threading.Thread(
            target=self._wait_exit, name=f"asyncgraph-worker-{self.pid}", daemon=True
        ).start()

    async def connect(self) -> None:
        assert self.popen.stdout is not None
        assert self.popen.stdin is not None
        self.reader, _ = await self.loop.connect_read_pipe(lambda: self.replies, self.popen.stdout)
        self.writer, _ = await self.loop.connect_write_pipe(asyncio.Protocol, self.popen.stdin)
        self.writer.write(_worker_code())  # the first bytes it reads: its code (_BOOT)
        if self.exited.done():  # it died while we connected: take what it wrote
            self._drain()
            self._close_pipes()

    @property
    def alive(self) -> bool:
        return not self.exited.done() and not self.replies.eof

    def send(self, message: Any) -> None:
        """Queue one frame; the transport writes it as the pipe drains. A dead worker's
        pipe drops it, and the race in ``next`` reports the death.

        Frames sent in one turn of the loop go in one write, at the end of the turn
        (``call_soon``): waking a worker that waits in ``read`` may hand it the parent's
        core in the middle of the ``write`` (the parent then waits for it); one write
        for the frames of a turn does that at most once, after the parent's work."""
        payload = pickle.dumps(message)
        outbox = self._outbox
        if not outbox:
            self.loop.call_soon(self._flush)
        outbox.append(_HEADER.pack(len(payload)) + payload)

    def _flush(self) -> None:
        data = b"".join(self._outbox)
        self._outbox.clear()
        writer = self.writer
        assert writer is not None
        if not writer.is_closing():
            writer.write(data)

    async def next(self) -> Any:
        """The next reply frame, or None if the worker is gone first (exited, or its
        reply pipe closed and it then exited)."""
        replies = self.replies
        while not replies.frames:
            if self.exited.done():
                return None
            if replies.eof:
                # Its end of the pipe closed: it is dead or about to be. Let it say how
                # it ended; one that closed the pipe and lives on is killed.
                with shielded():
                    await asyncio.wait((self.exited,), timeout=5)
                    await self.kill()
                if not replies.frames:
                    return None
                break
            replies.waiter = self.loop.create_future()
            await replies.waiter
        return pickle.loads(replies.frames.popleft())

    def signal_kill(self) -> None:
        """SIGKILL the worker's process group, unless the worker was already reaped."""
        self.killed = True
        with self._lock:
            if not self._reaped:
                _kill_group(self.pid)

    async def kill(self) -> None:
        """Kill the worker's group and wait for the worker's exit (however we are
        cancelled meanwhile: the exit is a moment away)."""
        self.signal_kill()
        await wait_to_the_end(asyncio.wait((self.exited,)))

    # -- the exit ---------------------------------------------------------------------

    def _wait_exit(self) -> None:
        """In the worker's own thread: wait for its exit, kill its group, reap it."""
        pid = self.pid
        code: int | None = None
        try:
            waitid = getattr(os, "waitid", None)
            if waitid is not None:
                # Exited, not yet reaped: its pid, and so its group's id, is still ours.
                waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            with self._lock:
                if waitid is not None:
                    _kill_group(pid)  # what its task started (a fork, a program) goes too
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                self._reaped = True
            if waitid is None:
                _kill_group(pid)  # best effort: no way to keep the group's id reserved
        except ChildProcessError:
            # Someone else reaped it (a child watcher that reaps every child): how it
            # ended is lost, and its group's id may be reused, so it is left alone.
            with self._lock:
                self._reaped = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.loop.call_soon_threadsafe(self._exited, code)

    def _exited(self, code: int | None) -> None:
        self.exitcode = code
        self.popen.returncode = code if code is not None else -1  # reaped: Popen must not
        try:
            self._drain()
            self._close_pipes()
        finally:  # whatever happens above, whoever waits for the exit hears of it
            if not self.exited.done():
                self.exited.set_result(code)
            self.replies.wake()

    def _close_pipes(self) -> None:
        # Either may be closed already: asyncio closes a write pipe whose reader went.
        if self.reader is not None and not self.reader.is_closing():
            self.reader.close()
        if self.writer is not None and not self.writer.is_closing():
            self.writer.abort()  # what it was sent and did not read goes too

    def _drain(self) -> None:
        """Read what the dead worker wrote and the loop has not read yet (a ``started``
        frame, a whole reply), so a death is judged on everything the worker said."""
        if self.reader is None or self.reader.is_closing() or self.replies.eof:
            return
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        os.set_blocking(fd, False)  # an escaped fork may hold the pipe open: never wait
        for _ in range(64):  # a pipe holds at most 1 MiB; the dead write no more
            try:
                data = os.read(fd, 1 << 20)
            except (BlockingIOError, InterruptedError, OSError):
                return
            if not data:
                return
            self.replies.data_received(data)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group's processes are gone (a zombie leader, macOS)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class _NotStartedError(Exception):
    """The worker died before it acknowledged the call: the task never began there.
    ``behind``: it died while a call ahead of this one ran on it (that call's death, or
    its cancel), so this one moves to another worker for free."""

    def __init__(self, behind: bool = False) -> None:
        super().__init__()
        self.behind = behind


#: Calls in flight per worker: 2 keeps one queued in the worker behind the running one,
#: so the worker goes on while the parent handles a reply and sends the next call (the
#: round trip); 1 is one call at a time. See "Pipelining" in :class:`ProcessPool`.
DEPTH = 2
#: A call queues behind a running one only if that call is expected to end within this
#: many seconds: what a queued call may wait while another worker could have taken it.
#: Expected from the moving average of its function's calls on this pool: a call of a
#: function measured this short queues behind it at once, one measured longer in the
#: last PIPELINE_BELOW of its expected length (a timer wakes the waiting calls then).
PIPELINE_BELOW = 0.010
#: Whether a call may queue behind one of a function not measured here yet (False: its
#: first call might be long; tests set True to queue behind anything).
PIPELINE_UNMEASURED = False


class _Turn:
    """One call placed on a worker: its place in the worker's order."""

    __slots__ = ("began", "ending", "fn", "mine", "near_end", "number", "prev", "state", "worker")

    def __init__(self, worker: _Worker, fn: bytes) -> None:
        self.worker = worker
        self.fn = fn
        worker.inflight += 1
        worker.fns.append(fn)
        worker.sent += 1
        self.number = worker.sent
        self.prev = worker.tail  # the call ahead's end of reading (None: none ahead)
        self.mine: asyncio.Future[None] = worker.loop.create_future()
        worker.tail = self.mine
        self.state = "queued"  # "turn": its replies are next; "running": it started
        self.began = 0.0
        self.near_end: asyncio.TimerHandle | None = None  # see ProcessPool._running
        self.ending = False  # its near_end timer fired


class ProcessPool:
    """Workers owned by one run (or by a :class:`~asyncgraph._executors.shared.SharedPool`).

    Pipelining. With ``depth`` 2 a call may be sent to a worker that is still running
    another one, and waits in that worker's requests pipe: the worker starts it as soon as
    it has written the reply ahead, so the round trip to the parent is hidden. Replies are
    read in order per worker (each call after the one ahead: ``_Turn``). A call queues
    behind a running one only when no worker is idle or can be started, and only behind
    calls of functions measured short here (``PIPELINE_BELOW``): a queued call waits for
    the call ahead even if another worker frees up first. Other calls wait in
    ``_waiting``, by priority then arrival, for the next free worker.

    Guarantees a queued call keeps: it has not started until its worker says so (its
    ``started`` frame, which starts its timeout); cancelled while queued, it is skipped
    (``("skip", n)``: the worker does not run it) and the call ahead is left alone; if
    the worker dies (or is killed for the call ahead), it never started there and moves
    to another worker, free; a big result's memfd stays open in the worker until the
    parent has mapped it (``("release", fd)``).
    """

    def __init__(self, size: int, *, replace: bool = False, depth: int | None = None) -> None:
        self.size = size
        #: Calls in flight per worker (see DEPTH).
        self.depth = DEPTH if depth is None else depth
        #: Start a worker in the background as soon as one dies (a shared pool: the next
        #: call should not pay a worker's start); a run's own pool starts one on demand.
        self.replace = replace
        #: Modules a worker imports as soon as it has our ``sys.path``, before its first
        #: call (the ones the run's CPU functions name: see ProcessExecutor.check).
        self.preload: list[str] = []
        #: Whether workers load by-value functions without importing cloudpickle
        #: (``_worker.lean_loads``; see LEAN).
        self.lean = LEAN
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._starting: set[asyncio.Future[_Worker]] = set()
        self._launching = 0  # starts asked for whose process is not made yet
        self._abandoned: list[_Worker] = []
        self._dead: list[_Worker] = []  # died while idle: reaped by their threads
        self._watch: tuple[int, int] | None = None  # the watchdog pipe (read, write)
        self._warming: asyncio.Future[None] | None = None  # workers started ahead
        self._closing = False
        self._maps: bool | None = None  # may we map a worker's memfd? (None: not known)
        #: Calls waiting for a worker: ``(-priority, arrival, future)``.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()
        #: Each function's calls here, seconds from start to reply (a moving average).
        self._times: dict[bytes, float] = {}
        self._promised = 0  # queue places promised to granted calls (a shared pool's)
        self._skips: set[asyncio.Task[None]] = set()  # reading skipped calls' replies

    def _watch_fd(self) -> int:
        """The read end of the watchdog pipe every worker of this pool inherits; only
        this process holds the write end (not inheritable), so a worker reads
        end-of-file exactly when this process is gone (or the pool closed it)."""
        if self._watch is None:
            self._watch = os.pipe()
        return self._watch[0]

    def _close_watchdog(self) -> None:
        if self._watch is not None:
            for fd in self._watch:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._watch = None

    async def _start(self) -> _Worker:
        """Start a worker; if the caller is cancelled meanwhile, the worker is killed.

        The start runs as its own task: an anyio shield stops anyio cancellations but
        not a plain ``Task.cancel()`` (how a run stops its children), which would land
        inside the start with the child already forked and lose its handle.
        """
        self._launching += 1
        spawn = asyncio.ensure_future(self._spawn())
        self._starting.add(spawn)
        spawn.add_done_callback(self._starting.discard)
        try:
            return await asyncio.shield(spawn)
        except BaseException:
            spawn.add_done_callback(self._abandon)
            raise

    async def _spawn(self) -> _Worker:
        try:
            worker = _Worker(asyncio.get_running_loop(), self._watch_fd())
        finally:
            self._launching -= 1
        self._busy.add(worker)  # no await since the fork: aclose() always sees it
        if self._maps is None:
            self._maps = _can_open_fds_of(worker.pid)
        worker.exited.add_done_callback(lambda _: self._lost(worker))
        await worker.connect()
        self._init(worker)
        return worker

    def _init(self, worker: _Worker) -> None:
        """Send the worker our ``sys.path``, whether it may hand big results over in a
        memfd, and what to import before its first call (it does so while it waits)."""
        if not worker.initialised and worker.alive:
            worker.send(("init", list(sys.path), bool(self._maps), self.preload, self.lean))
            worker.initialised = True

    def _lost(self, worker: _Worker) -> None:
        """A worker exited: if it was idle, and died on its own (not killed by us for a
        timeout or a cancel), a replacement starts now (``replace``)."""
        if worker in self._idle:
            self._idle.remove(worker)
            self._dead.append(worker)
            if self.replace and not worker.killed:
                self.warm(self.size)
            self._wake()

    async def _replace(self) -> None:
        """Start a worker for one that died, before its task's failure is reported: only
        the process's creation waits here (its boot goes on in the background), so the
        next call finds it up, and whoever hears of the failure sees the pool whole."""
        if self._closing or self._count() >= self.size:
            return
        try:
            worker = await self._start()
        except Exception:  # noqa: BLE001 - the next call starts one, and reports why not
            return
        self._busy.discard(worker)
        self._idle.append(worker)
        self._wake()

    def _count(self) -> int:
        """Workers up, in use or being started."""
        return len(self._idle) + len(self._busy) + self._launching

    def warm(self, n: int) -> None:
        """Start workers in the background (on the loop's thread, no wait) until ``n``
        of them (at most ``size``) are up or starting; calls meanwhile wait for them
        instead of starting more. A start that fails is left to the next call."""
        missing = min(n, self.size) - self._count()
        if missing <= 0 or self._warming is not None or self._closing:
            return
        self._warming = asyncio.ensure_future(self._warm(missing))

    async def _warm(self, n: int) -> None:
        try:
            started = await asyncio.gather(
                *(self._start() for _ in range(n)), return_exceptions=True
            )
            for worker in started:
                if isinstance(worker, _Worker):
                    self._busy.discard(worker)
                    if self._closing or not worker.alive:
                        self._dead.append(worker)
                    else:
                        self._idle.append(worker)
        finally:
            self._warming = None
            self._wake()

    def _abandon(self, spawn: asyncio.Future[_Worker]) -> None:
        """A worker whose caller was cancelled while it started: kill it, reap it later."""
        if spawn.cancelled() or spawn.exception() is not None:
            return
        worker = spawn.result()
        self._busy.discard(worker)
        worker.signal_kill()
        self._abandoned.append(worker)
        self._wake()

    async def prestart(self) -> None:
        """Start the workers this pool lacks now (all at once), each answering one
        empty call (so it has booted and has our ``sys.path``), and keep them idle."""
        missing = self.size - self._count()
        started = await asyncio.gather(*(self._start() for _ in range(missing)))
        noop = (cloudpickle.dumps(int), cloudpickle.dumps(((), {})))
        turns = [_Turn(w, noop[0]) for w in started]
        replies = await asyncio.gather(
            *(self._converse(t, *noop, None) for t in turns), return_exceptions=True
        )
        for turn, reply in zip(turns, replies, strict=True):
            worker = turn.worker
            if not (isinstance(reply, tuple) and reply[0] == "ok"):
                worker.signal_kill()  # it died as it started: the next call starts another
            self._leave(turn)
            if worker.killed:
                await worker.kill()

    # -- placing a call ------------------------------------------------------------------

    def _queueable(self, worker: _Worker) -> bool:
        """Whether one more call may queue on this busy worker (see PIPELINE_BELOW):
        every call in flight there is of a function measured short, or the one call
        there runs and is expected to end within PIPELINE_BELOW."""
        if not (0 < worker.inflight < self.depth) or worker.killed or not worker.alive:
            return False
        times = self._times
        for fn in worker.fns:
            took = times.get(fn)
            if took is None:
                if not PIPELINE_UNMEASURED:
                    return False
            elif took > PIPELINE_BELOW:
                running = worker.running
                return (
                    worker.inflight == 1
                    and running is not None
                    and (
                        running.ending
                        or running.began + took - worker.loop.time() <= PIPELINE_BELOW
                    )
                )
        return True

    def _running(self, turn: _Turn) -> None:
        """``turn``'s call began on its worker. One of a function measured longer than
        PIPELINE_BELOW: the calls waiting for a worker are woken when it is that close
        to its expected end, so one may queue behind it and start without the round
        trip (a 20 ms call lost 0.5-1 ms to it, 2-5 %)."""
        worker = turn.worker
        turn.state = "running"
        turn.began = worker.loop.time()
        worker.running = turn
        took = self._times.get(turn.fn)
        if took is not None and took > PIPELINE_BELOW and self.depth > 1:
            at = turn.began + took - PIPELINE_BELOW
            turn.near_end = worker.loop.call_at(at, self._near_end, turn)

    def _near_end(self, turn: _Turn) -> None:
        # The timer says so (a loop's timer may fire a little early: uvloop rounds to
        # the millisecond), not a second reading of the clock.
        turn.ending = True
        self._wake()

    def room(self) -> int:
        """How many calls could be placed now (idle workers, workers still to start,
        places behind short running calls), less the places promised."""
        room = sum(1 for w in self._idle if w.alive) + max(0, self.size - self._count())
        if self.depth > 1:
            room += sum(self.depth - w.inflight for w in self._busy if self._queueable(w))
        return room - self._promised

    def promise(self) -> bool:
        """Hold a place for a call about to come (a shared pool's grant beyond its size:
        :meth:`call_pickled` with ``promised``); False if there is none."""
        if self.room() <= 0:
            return False
        self._promised += 1
        return True

    def unpromise(self) -> None:
        self._promised -= 1

    def _place_now(self) -> _Worker | bool | None:
        """A worker for a call now (idle first), True if one is to be started, or None."""
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                self._busy.add(worker)
                return worker
            # It died while idle (the out-of-memory killer, say): its thread reaps it.
            self._dead.append(worker)
        if self._count() < self.size:
            return True
        if self.depth > 1:
            best: _Worker | None = None
            for worker in self._busy:
                if self._queueable(worker) and (best is None or worker.inflight < best.inflight):
                    best = worker
            return best
        return None

    async def _place(self, fn: bytes, priority: int, promised: bool = False) -> _Turn:
        """Wait for a worker to take the call (see the class's "Pipelining"); a call
        ``promised`` a place does not queue behind calls that wait."""
        warming = self._warming
        if warming is not None:  # workers started ahead: they are a moment away
            await asyncio.shield(warming)
        got = None if self._waiting and not promised else self._place_now()
        if got is None:
            loop = asyncio.get_running_loop()
            key = (-priority, next(self._arrival))
            while got is None:
                future: asyncio.Future[None] = loop.create_future()
                entry = (*key, future)
                heapq.heappush(self._waiting, entry)
                try:
                    await future
                except asyncio.CancelledError:
                    if future.done() and not future.cancelled():
                        self._wake()  # woken as it was cancelled: pass the turn on
                    elif entry in self._waiting:
                        self._waiting.remove(entry)
                        heapq.heapify(self._waiting)
                    raise
                got = self._place_now()
            self._wake()  # placed: the next waiter may be too
        if isinstance(got, _Worker):
            return _Turn(got, fn)
        return _Turn(await self._start(), fn)

    def _wake(self) -> None:
        """Let the first waiting call try to get a worker (a worker's state changed)."""
        waiting = self._waiting
        while waiting:
            _, _, future = heapq.heappop(waiting)
            if not future.done():
                future.set_result(None)
                return

    def _leave(self, turn: _Turn) -> None:
        """A call is done with its worker (replies read, or given up)."""
        worker = turn.worker
        if turn.state == "gone":
            return
        turn.state = "gone"
        if turn.near_end is not None:
            turn.near_end.cancel()
        if worker.running is turn:
            worker.running = None
        worker.inflight -= 1
        worker.fns.remove(turn.fn)
        if not turn.mine.done():
            turn.mine.set_result(None)
        if worker.inflight == 0:
            worker.tail = None
            self._busy.discard(worker)
            if worker.alive and not worker.killed and not self._closing:
                self._idle.append(worker)
        self._wake()

    def _timed(self, fn: bytes, took: float) -> None:
        times = self._times
        before = times.get(fn)
        if before is None and len(times) > 256:
            times.clear()
        times[fn] = took if before is None else 0.7 * before + 0.3 * took

    # -- a call --------------------------------------------------------------------------

    async def call(
        self,
        task: str,
        fn_bytes: bytes,
        args: tuple[Any, ...],
        on_start: Callable[[float], None] | None = None,
        priority: int = 0,
    ) -> bytes | Mapped:
        """Run one task in a worker and return its result as the worker pickled it
        (cloudpickle), or raise its exception. The pool never unpickles a result (see
        :meth:`ProcessExecutor._call`): its worker is idle again as soon as the bytes
        are here, and a load that is cancelled costs no worker.

        ``on_start`` is called with the worker's clock when the worker begins the task;
        ``priority`` orders it among calls that wait for a worker.
        """
        return await self.call_pickled(task, fn_bytes, pickled_args(task, args), on_start, priority)

    async def call_pickled(
        self,
        task: str,
        fn_bytes: bytes,
        args_bytes: bytes,
        on_start: Callable[[float], None] | None = None,
        priority: int = 0,
        promised: bool = False,
    ) -> bytes | Mapped:
        """:meth:`call` with the arguments pickled already (see :func:`pickled_args`).
        ``promised``: a place was held for it (:meth:`promise`)."""
        if promised:
            self._promised -= 1
        fresh_try = False
        while True:
            turn = await self._place(fn_bytes, priority, promised)
            promised = False
            worker = turn.worker
            try:
                reply = await self._converse(turn, fn_bytes, args_bytes, on_start)
            except _NotStartedError as exc:
                # The worker was dead before it began the call:
                #     idle worker <- SIGKILL (OOM killer); next task -> that worker
                # the task never began; a fresh worker takes it, once (never a loop).
                # Queued behind a call that died or was cancelled: free, every time.
                self._leave(turn)
                await worker.kill()
                if exc.behind:
                    continue
                if fresh_try:
                    raise WorkerDiedError(task, worker.exitcode) from None
                fresh_try = True
                continue
            except BaseException:
                if turn.state == "queued":
                    # Cancelled while queued behind another call: that call runs on;
                    # the worker is told to skip this one (see _skipped).
                    self._skip(turn)
                    raise
                # Cancelled or timed out while the worker computes: kill it (its group),
                # which is the only way to stop the work, then let the cancellation go on.
                worker.signal_kill()
                self._leave(turn)
                await worker.kill()
                raise
            break
        if reply is None:
            # The task's worker died:
            #     g.add("t", lambda: os._exit(1), kind="cpu")
            # (or a fork of it lives on, holding its pipes); report how it ended.
            worker.signal_kill()
            self._leave(turn)
            await worker.kill()
            if self.replace:
                await self._replace()
            raise WorkerDiedError(task, worker.exitcode)
        self._timed(fn_bytes, worker.loop.time() - turn.began)
        try:
            return outcome(task, reply, worker.pid)
        finally:
            if reply[0] == "oob":  # mapped (or failed to be): the worker may close it
                worker.send(("release", reply[2]))
            self._leave(turn)

    def _skip(self, turn: _Turn) -> None:
        """A queued call was cancelled: tell its worker to skip it, and read its reply
        when its turn comes (in the background: the caller does not wait for the call
        ahead). A worker that started it all the same (the skip came too late) is
        killed, as for any cancelled call that runs."""
        worker = turn.worker
        worker.send(("skip", turn.number))
        reader = asyncio.ensure_future(self._skipped(turn))
        self._skips.add(reader)
        reader.add_done_callback(self._skips.discard)

    async def _skipped(self, turn: _Turn) -> None:
        worker = turn.worker
        try:
            if turn.prev is not None:
                await asyncio.wait((turn.prev, worker.exited), return_when=asyncio.FIRST_COMPLETED)
            if not worker.exited.done() and not worker.killed:
                frame = await worker.next()
                if frame is not None and frame[0] != "skipped":
                    worker.signal_kill()  # it began a call nobody wants
        finally:
            self._leave(turn)
        if worker.killed:
            await worker.kill()

    async def _converse(
        self,
        turn: _Turn,
        fn_bytes: bytes,
        args_bytes: bytes,
        on_start: Callable[[float], None] | None,
    ) -> Any:
        """Send a call; the worker's reply, or None if it died after it began the task."""
        worker = turn.worker
        if not worker.initialised:
            worker.send(("init", list(sys.path), False, [], False))
            worker.initialised = True
        worker.send(("call", fn_bytes, args_bytes))
        prev = turn.prev
        waited = prev is not None and not prev.done()
        if prev is not None and waited:
            await asyncio.wait((prev,))  # never cancels the call ahead's future
        # Dead now, after a call ahead ran: that call's death (or its kill), not ours.
        behind = waited and (worker.killed or not worker.alive)
        turn.state = "turn"
        started = await worker.next()
        if started is None:
            raise _NotStartedError(behind)
        self._running(turn)
        if on_start is not None:
            on_start(started[1])
        return await worker.next()

    async def aclose(self) -> None:
        """Stop every worker and wait until each has exited.

        Killed, not asked to exit: an idle worker holds nothing (it flushed its output
        after its last task), and an interpreter's orderly exit took 60-110 ms of every
        run's wall time (benchmarks/mixed.py) for no benefit. Workers still computing
        (a cancelled run) must be killed anyway. All are signalled first, then waited
        for, so they die in parallel; their groups go with them.
        """
        self._closing = True
        for _, _, future in self._waiting:  # calls waiting for a worker: none will come
            if not future.done():
                future.set_exception(
                    RuntimeError("the process pool was closed while a call waited for a worker")
                )
        self._waiting.clear()
        with shielded():
            if self._warming is not None:
                await asyncio.wait((self._warming,))
            while self._starting:  # a worker being started is stopped too
                await asyncio.wait(list(self._starting))
            workers = [*self._idle, *self._busy, *self._abandoned, *self._dead]
            self._idle, self._busy, self._abandoned, self._dead = [], set(), [], []
            for w in workers:
                w.signal_kill()
            for w in workers:
                await w.kill()
            if self._skips:  # their workers are gone: each ends now
                await asyncio.wait(list(self._skips))
            self._close_watchdog()


def pickled_function(
    fn: object, made: dict[int, tuple[object, bytes | Exception]]
) -> bytes | Exception:
    """``fn`` pickled with cloudpickle, or the exception that stopped it, made once per
    function object in ``made`` (one check's cache: the tasks of a fan-out or a loop
    share their function, and a by-value function's pickle cost 100-200 µs a task).

    Within one check the pickle of one object is the same for every task that holds it
    (a by-value function's globals are read as the check runs), so this is the same
    bytes that pickling it per task made. Keyed by ``id``: every function is held by
    its task for the whole check, and the object is kept next to its bytes anyway.
    """
    key = id(fn)
    hit = made.get(key)
    if hit is not None and hit[0] is fn:
        return hit[1]
    try:
        data: bytes | Exception = cloudpickle.dumps(fn)
    except Exception as exc:  # noqa: BLE001 - whatever stops pickling: the caller says
        data = exc
    made[key] = (fn, data)
    return data


def pickled_args(task: str, args: tuple[Any, ...]) -> bytes:
    """``args`` as a worker loads them (cloudpickle); TypeError naming the task if not.

    Plain data (no callable or class named: ints, strings, lists and dicts of them) is
    pickled by :mod:`pickle`'s C pickler, which makes the same bytes as cloudpickle's
    (protocol 5) without its per-object ``reducer_override`` (10-20 µs a call); anything
    that names a global goes to cloudpickle, which decides by value or by name."""
    buffers: list[pickle.PickleBuffer] = []
    try:  # out-of-band buffers (an array's data) are not copied: such args go on below
        data = pickle.dumps(args, protocol=5, buffer_callback=buffers.append)
    except Exception:  # noqa: BLE001 - cloudpickle decides, and reports
        pass
    else:
        if not buffers and _NAMES_CODE.search(data) is None:
            return data
    try:
        data = bytes(cloudpickle.dumps(args))
    except Exception as exc:
        raise TypeError(
            f"the arguments of task {task!r} cannot be pickled for its worker process"
            f" (kind='cpu'): {exc}"
        ) from exc
    return data


class Mapped:
    """A result whose out-of-band buffers arrived in a worker's memfd, mapped here
    (``MAP_PRIVATE``: copy-on-write, so the value is the parent's own to change): the
    pickle's ``head`` and the ``buffers`` it loads from, with no copy."""

    __slots__ = ("buffers", "head")

    def __init__(self, head: bytes, buffers: list[memoryview]) -> None:
        self.head = head
        self.buffers = buffers

    def load(self) -> Any:
        return pickle.loads(self.head, buffers=self.buffers)

    def inband(self) -> bytes:
        """The same pickle with its buffers in it: what a store keeps (see inband)."""
        return inband(self.head, self.buffers)


def _can_open_fds_of(pid: int) -> bool:
    """Whether this process may open a child's descriptors by ``/proc/<pid>/fd``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True


def _mapped(pid: int, fd: int, sizes: list[int], head: bytes) -> Mapped:
    """Map worker ``pid``'s memfd ``fd`` (see _worker's "oob" reply)."""
    total = sum(sizes)
    own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        area = mmap.mmap(own, total, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(own)
    view = memoryview(area)
    buffers = []
    at = 0
    for n in sizes:
        buffers.append(view[at : at + n])
        at += n
    return Mapped(head, buffers)


def inband(head: bytes, buffers: list[memoryview]) -> bytes:
    """A protocol-5 pickle made with out-of-band ``buffers``, rewritten with each buffer
    in it, as ``pickle.dumps`` makes it without a ``buffer_callback``: a writable buffer
    as BYTEARRAY8, a read-only one as BINBYTES8 (neither memoized, as NEXT_BUFFER is
    not, so the memo's numbering holds). FRAME opcodes are dropped (they are optional
    hints, and their lengths would no longer hold). Any unpickler of protocol 5 reads
    it, with no ``buffers=``: a store's old readers too."""
    ops = [(op.code, pos or 0) for op, _, pos in pickletools.genops(head)]
    parts: list[bytes | memoryview] = []
    at = 0
    i = 0
    used = 0
    while i < len(ops):
        code, pos = ops[i]
        if code == "\x95":  # FRAME
            parts.append(head[at:pos])
            at = pos + 9
        elif code == "\x97":  # NEXT_BUFFER
            parts.append(head[at:pos])
            buf = buffers[used]
            used += 1
            at = pos + 1
            if i + 1 < len(ops) and ops[i + 1][0] == "\x98":  # READONLY_BUFFER
                parts.append(b"\x8e" + struct.pack("<Q", buf.nbytes))  # BINBYTES8
                at += 1
                i += 1
            else:
                parts.append(b"\x96" + struct.pack("<Q", buf.nbytes))  # BYTEARRAY8
            parts.append(buf)
        i += 1
    parts.append(head[at:])
    return b"".join(parts)


def outcome(task: str, reply: Any, pid: int | None = None) -> bytes | Mapped:
    """The pickled result a worker's reply carries, or raise the error it reports."""
    kind = reply[0]
    if kind == "ok":
        data: bytes = reply[1]
        return data
    if kind == "oob" and pid is not None:
        _, head, fd, sizes = reply
        try:
            return _mapped(pid, fd, sizes, head)
        except OSError as exc:
            raise UnpicklingError(
                task, "result", f"its worker's shared memory could not be mapped: {exc}"
            ) from exc
    if kind == "bad_result":
        raise TypeError(
            f"the result of task {task!r} ({reply[1]}) cannot be pickled to return it "
            f"from its worker process: {reply[2]}; return a picklable value or use "
            "kind='io'"
        )
    if kind == "unloadable":
        _, what, type_name, message, tb = reply
        error: BaseException = UnpicklingError(task, what, f"{type_name}: {message}")
        error.__asyncgraph_traceback__ = tb  # type: ignore[attr-defined]
        raise error
    _, type_name, message, tb, exc_bytes = reply
    found: object = None
    if exc_bytes is not None:
        try:
            found = pickle.loads(exc_bytes)
        except Exception:  # noqa: BLE001 - e.g. its class cannot be imported here
            found = None
    error = found if isinstance(found, BaseException) else RemoteError(type_name, message, tb)
    error.__asyncgraph_traceback__ = tb  # type: ignore[attr-defined]
    raise error


class PoolLike(Protocol):
    """What :class:`ProcessExecutor` sends its attempts to: a :class:`ProcessPool`, or a
    run's client of a shared pool (:mod:`asyncgraph._executors.shared`)."""

    async def call(
        self,
        task: str,
        fn_bytes: bytes,
        args: tuple[Any, ...],
        on_start: Callable[[float], None] | None = None,
    ) -> bytes | Mapped: ...

    async def aclose(self) -> None: ...


class ProcessExecutor:
    """Tasks of kind CPU (plain or coroutine functions), each attempt in a worker of a
    :class:`ProcessPool` of ``workers`` processes, started only if such a task is to run.

    :meth:`check` pickles every function once before the run starts, so a function
    that cannot travel, or one naming a module a worker could not import, is reported
    (all of them at once) before anything runs.
    """

    lane = "cpu"

    def __init__(
        self,
        workers: int,
        clock: Clock = SYSTEM_CLOCK,
        pickled: Callable[[str, bytes], None] | None = None,
        depth: int | None = None,
    ) -> None:
        #: Calls in flight per worker (DEPTH): the lane admits that many per worker, so
        #: the pool has a call to queue behind each running one (see ProcessPool). A
        #: pool that does not say when a call starts (a user's executor) keeps 1: its
        #: timeouts count from the submission, which a queued call would spend waiting.
        self.depth = (DEPTH if depth is None else depth) if self.reports_start else 1
        self.capacity: int | None = workers * self.depth
        self.clock = clock
        self.workers = workers
        self.fn_bytes: dict[str, bytes] = {}
        self.pool: PoolLike | None = None
        #: ``pickled(name, data)``: told each result's bytes as its worker made them,
        #: just before the attempt returns the value (the run's ledger, which hands
        #: them to the store as they are). None: nobody wants them.
        self.pickled = pickled or _ignore
        self.threads: Threads | None = None  # where results are unpickled, off the loop
        self._to_warm = 0  # how many workers begin() starts (the CPU tasks to run)

    def serves(self, kind: Kind, is_async: bool) -> bool:
        return kind is Kind.CPU

    def check(self, tasks: Mapping[str, Task], pending: Iterable[str]) -> None:
        problems: dict[str, str] = {}
        verdicts: dict[bytes, str | None] = {}  # the same function in many tasks: once
        modules: dict[str, str | None] = {}
        first_error: Exception | None = None
        count = 0
        made: dict[int, tuple[object, bytes | Exception]] = {}
        for n in pending:
            t = tasks[n]
            if t.kind is not Kind.CPU:
                continue
            count += 1
            data = pickled_function(t.fn, made)
            if isinstance(data, Exception):
                first_error = first_error or data
                problems[t.name] = PicklingError(t.name, f"{type(data).__name__}: {data}").problems[
                    t.name
                ]
                continue
            if data not in verdicts:
                verdicts[data] = shipping_problem(data, modules)
            verdict = verdicts[data]
            if verdict is not None:
                problems[t.name] = verdict
                continue
            self.fn_bytes[t.name] = data
        if problems:
            raise PicklingError.for_tasks(problems) from first_error
        if self.fn_bytes:
            self.pool = self.make_pool()
            self._to_warm = count
            if isinstance(self.pool, ProcessPool):
                self.pool.preload = _preloads(verdicts, self.pool.lean)

    #: Whether the pool says when a worker begins an attempt (before it ends): then a
    #: timeout counts from there (see ``_timed``); else from the dispatch.
    reports_start = True

    def begin(self) -> None:
        """The run starts (on its loop): start its workers now, in the background, while
        its IO tasks run, as many as it has CPU tasks to run (at most ``workers``); each
        imports the modules the run's functions name before its first call."""
        if isinstance(self.pool, ProcessPool) and self._to_warm:
            self.pool.warm(self._to_warm)

    def make_pool(self) -> PoolLike:
        """Where the attempts go: a pool of the run's own, whose workers start with the
        first call (a shared pool's executor returns its client instead)."""
        return ProcessPool(self.workers, depth=self.depth)

    def start(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> asyncio.Future[Any]:
        if task.timeout is None:
            call = self._call(task, args, kwargs, began)
        elif self.reports_start:
            call = self._timed(task, args, kwargs, began)
        else:
            call = with_timeout(task, self._call(task, args, kwargs, began), self.clock)
        return asyncio.get_running_loop().create_task(call, name=task.name)

    async def _timed(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> Any:
        """``_call`` under ``task.timeout``, counted from the moment its worker began
        the attempt: a worker's start, its imports and the wait for a free worker of a
        shared pool are not the task's time (a pool that starts slowly on a loaded
        machine must not time a task out before it ran; the run's ``deadline`` still
        bounds everything)."""
        assert task.timeout is not None
        timeout, clock = task.timeout, self.clock
        scope = anyio.CancelScope()
        timer: list[Any] = []

        def on_start(name: str, when: float) -> None:
            began(name, when)
            timer.append(clock.call_later(timeout, scope.cancel))

        try:
            with scope:
                return await self._call(task, args, kwargs, on_start)
        finally:
            for t in timer:
                t.cancel()
        raise TimeoutError(f"task {task.name!r} did not finish within timeout={timeout}s")

    async def _call(self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began) -> Any:
        """One attempt: the worker's bytes, unpickled once in a thread of this executor
        (on the loop if small and plain: see ``_INLINE``), then handed on as they are
        (``pickled``) with the value returned.

        The unpickle is the attempt's last step, not a lazy one later: a result that
        cannot be unpickled here fails its task now, with UnpicklingError, and is not
        retried. It runs off the loop's thread (a 100 MB DataFrame takes a few hundred
        ms to load), in the executor's own daemon threads: a cancelled attempt stops
        waiting for it at once, as for any thread call, and an abandoned load does not
        keep the process alive after the run.
        """
        assert self.pool is not None
        name = task.name
        on_start = functools.partial(began, name)
        fn = self.fn_bytes.get(name)
        if fn is None and task.family is not None:  # fan-out: an element is its template's
            fn = self.fn_bytes[task.family]
        data = await self.pool_call(task, fn or self.fn_bytes[name], (args, kwargs), on_start)
        if isinstance(data, Mapped):
            # Its big buffers are mapped from the worker's memfd: the load copies
            # nothing (in a thread, as any pickle that may run code); a store gets the
            # pickle with the buffers in it, made in that thread.
            threads = self.threads
            if threads is None:
                threads = self.threads = Threads(anyio.CapacityLimiter(self.workers))
            keeps = getattr(getattr(self.pickled, "__self__", None), "stores", True)
            value, data = await threads.run(functools.partial(_load_mapped, name, data, keeps))
            if data:
                self.pickled(name, data)
            return value
        if len(data) <= _INLINE and _NAMES_CODE.search(data) is None:
            # Small, and names no callable, so it can run no code (an int, a tuple of
            # floats, a short str): loaded here in microseconds, where a thread's hop
            # (waiting for the GIL while the loop is busy) costs a millisecond and more.
            value = _unpickled(name, data)
        else:
            threads = self.threads
            if threads is None:
                threads = self.threads = Threads(anyio.CapacityLimiter(self.workers))
            value = await threads.run(functools.partial(_unpickled, name, data))
        self.pickled(name, data)
        return value

    async def pool_call(
        self, task: Task, fn: bytes, args: tuple[Any, ...], on_start: Callable[[float], None]
    ) -> bytes | Mapped:
        """One attempt's call to the pool, with its task's priority (which orders it
        among calls that wait for a worker, a shared pool's: other runs' too)."""
        pool = self.pool
        assert pool is not None
        if isinstance(pool, ProcessPool):
            return await pool.call(task.name, fn, args, on_start, task.priority)
        return await pool.call(task.name, fn, args, on_start)

    async def aclose(self) -> None:
        if self.threads is not None:
            self.threads.close()
        if self.pool is not None:
            await self.pool.aclose()


#: A pickle at most this long that holds none of the bytes of the opcodes that fetch a
#: callable (GLOBAL ``c``, INST ``i``, EXT1/2/4, STACK_GLOBAL; REDUCE, BUILD, OBJ and
#: NEWOBJ need one of them first) builds only plain values: nothing of the user's runs.
#: The same bytes inside a string's data only send a plain value to a thread.
_INLINE = 4096
_NAMES_CODE = re.compile(rb"[ci\x82\x83\x84\x93]")


def _unpickled(task: str, data: bytes) -> Any:
    """A result as its worker pickled it, loaded here; UnpicklingError if it cannot be."""
    try:
        return cloudpickle.loads(data)
    except Exception as exc:  # any failure: it cannot come back here
        raise UnpicklingError(task, "result", f"{type(exc).__name__}: {exc}") from exc


def _load_mapped(task: str, mapped: Mapped, keeps: bool) -> tuple[Any, bytes]:
    """A mapped result's value, and (``keeps``: a store wants them) its in-band bytes."""
    try:
        value = mapped.load()
    except Exception as exc:  # any failure: it cannot come back here
        raise UnpicklingError(task, "result", f"{type(exc).__name__}: {exc}") from exc
    return value, (mapped.inband() if keeps else b"")


def _preloads(functions: Iterable[bytes], lean: bool = False) -> list[str]:
    """The modules these pickled functions name that this process has loaded (so a
    worker can import them too), for a worker to import before its first call.

    ``lean``: the workers load by-value functions with ``_worker.lean_loads``; then
    cloudpickle is left out when every helper of its that the pickles name is one the
    lean loader has (a plain function, a closure), so no worker imports it for nothing.
    """
    names: set[str] = set()
    helpers: set[tuple[str, str]] = set()
    for data in functions:
        with contextlib.suppress(Exception):  # a pickle we cannot read: no preload
            names |= _modules_named(data, helpers)
    if lean and all(n in _worker.LEAN for m, n in helpers if m in _CLOUDPICKLE_MODULES):
        names.difference_update(_CLOUDPICKLE_MODULES)
    return sorted(m for m in names if m not in _NO_PRELOAD and m in sys.modules)


_CLOUDPICKLE_MODULES = frozenset({"cloudpickle", "cloudpickle.cloudpickle"})
#: Whether a worker may load by-value functions without cloudpickle: its helpers that
#: ``_worker.LEAN`` copies are those of cloudpickle 3.0 and 3.1 (any other version:
#: the worker imports cloudpickle, as pickle would).
LEAN = cloudpickle.__version__.split(".")[:2] in (["3", "0"], ["3", "1"])


#: Modules a worker has loaded anyway, or that only name where a function lives.
_NO_PRELOAD = frozenset({"__main__", "builtins", "copyreg", "_codecs", "pickle", "types"})


def _ignore(name: str, data: bytes) -> None:
    return None


def _dup_stdout() -> int | None:
    """A copy of the parent's real stdout for the worker's fd 1, or None for stderr."""
    if sys.platform == "win32":
        return None
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        return os.dup(fd)
    except (OSError, ValueError, AttributeError):
        return None


# -- before the run: can a worker load this function? --------------------------------


_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_GETS = frozenset({"BINGET", "LONG_BINGET", "GET"})
_PUTS = frozenset({"BINPUT", "LONG_BINPUT", "PUT"})
_SILENT = frozenset({"FRAME", "PROTO", "STOP", "MARK"})


def _modules_named(payload: bytes, globals_: set[tuple[str, str]] | None = None) -> set[str]:
    """The modules a pickle refers to by name (what the unpickler will import).

    A global is ``GLOBAL "module name"`` or, from protocol 4, two strings pushed (or
    fetched from the memo) just before ``STACK_GLOBAL``; a module that a function uses
    as a global is ``cloudpickle``'s ``subimport`` global, then the module's name.
    """
    memo: dict[int, object] = {}
    last: list[object] = [None, None]  # the two values pushed most recently
    found: set[str] = set()
    subimport = False  # the next string pushed names a module
    for op, arg, _ in pickletools.genops(payload):
        name = op.name
        if name in _SILENT:
            continue
        if name == "MEMOIZE":
            memo[len(memo)] = last[1]
            continue
        if name in _PUTS:
            memo[int(arg)] = last[1]  # type: ignore[arg-type]
            continue
        value: object = None
        if name in _STRINGS:
            value = arg
        elif name in _GETS:
            value = memo.get(int(arg))  # type: ignore[arg-type]
        elif name == "STACK_GLOBAL":
            if isinstance(last[0], str):
                found.add(last[0])
                if globals_ is not None:
                    globals_.add((last[0], str(last[1])))
                subimport = last[1] == "subimport" and last[0].startswith("cloudpickle")
        elif name in ("GLOBAL", "INST") and isinstance(arg, str):
            module, _, attr = arg.partition(" ")
            found.add(module)
            if globals_ is not None:
                globals_.add((module, attr))
        if subimport and isinstance(value, str):
            found.add(value)
            subimport = False
        last = [last[1], value]
    return found


def _findable(name: str, path: Any) -> bool:
    """Whether a finder on ``sys.meta_path`` finds module ``name`` (True when unsure)."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            if find(name, path) is not None:
                return True
        except Exception:  # noqa: BLE001 - a finder that fails: we cannot tell
            return True
    return False


def _unimportable(name: str) -> str | None:
    """The first part of module ``name`` that a fresh interpreter with our ``sys.path``
    could not import (loaded from a file outside ``sys.path``, say), or None.

    Only what the finders cannot find at all is reported, never a guess: a module that
    is found may still fail to import in the worker, which the worker then reports.
    """
    if name == "__main__" or name in sys.builtin_module_names:
        return None
    parts = name.split(".")
    path: Any = None
    for i in range(len(parts)):
        prefix = ".".join(parts[: i + 1])
        if not _findable(prefix, path):
            return prefix
        path = getattr(sys.modules.get(prefix), "__path__", None)
        if path is None:
            return None  # not a package we know: we cannot look further
    return None


def shipping_problem(payload: bytes, seen: dict[str, str | None]) -> str | None:
    """What stops a worker from loading this pickled function, as a clause of a
    :class:`PicklingError`, or None. ``seen`` caches the verdict on each module."""
    try:
        modules = _modules_named(payload)
    except Exception:  # noqa: BLE001 - a pickle we cannot read: the worker will say
        return None
    for module in sorted(modules):
        if module not in seen:
            seen[module] = _unimportable(module)
        bad = seen[module]
        if bad is not None:
            where = getattr(sys.modules.get(bad), "__file__", None)
            loaded = f" (loaded from {where})" if where else ""
            return (
                f"its function refers by name to module {bad!r}{loaded}, which a worker "
                "process cannot import: no directory on sys.path holds it; add its "
                "directory to sys.path (or PYTHONPATH) before the run, or call "
                f"cloudpickle.register_pickle_by_value({bad}) so it is sent by value"
            )
    return None
