"""The CPU pool: worker processes owned by one run.

Why not :class:`concurrent.futures.ProcessPoolExecutor`? When one of its workers dies it
marks the whole pool broken and fails *every* pending future. Here each worker is a
separate child with its own pipes, so a worker that dies (``os._exit``, a signal, the
out-of-memory killer) fails only the task it was running; the pool starts a fresh
worker for the next task. A task that times out or is cancelled has its worker killed,
which really stops the work, unlike a thread.

Workers start on demand, at most ``size`` of them, and are reused. The runner guarantees
no more than ``size`` calls at once, so a call never waits for a worker. Workers are
started with ``subprocess`` (never ``fork``), so they share nothing with the parent but
``sys.path``; functions and values cross with cloudpickle.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from ._exceptions import RemoteError, WorkerDiedError

__all__ = ["ProcessPool"]

_HEADER = struct.Struct(">Q")
_WORKER = str(Path(__file__).with_name("_worker.py"))
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__asyncgraph_worker__')"
_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


class _Worker:
    def __init__(self, process: Process) -> None:
        self.process = process
        assert process.stdout is not None
        assert process.stdin is not None
        self.reader = BufferedByteReceiveStream(process.stdout)
        self.stdin = process.stdin
        self.initialised = False  # has it been sent the parent's sys.path yet?
        self.signalled = False

    async def send(self, payload: bytes) -> None:
        await self.stdin.send(_HEADER.pack(len(payload)) + payload)

    async def receive(self) -> Any:
        (n,) = _HEADER.unpack(await self.reader.receive_exactly(_HEADER.size))
        return pickle.loads(await self.reader.receive_exactly(n))

    def signal_kill(self) -> None:
        """Send SIGKILL once. Never twice: a second kill polls, and may reap the process
        before the event loop's child watcher does (see reap)."""
        if not self.signalled and self.process.returncode is None:
            self.signalled = True
            self.process.kill()

    async def kill(self) -> None:
        with anyio.CancelScope(shield=True):
            self.signal_kill()
            await self.process.wait()
            await self.process.aclose()

    async def reap(self) -> None:
        """Collect a worker whose pipes closed: it is dead or about to be.

        Not kill() first: killing polls the process, which can reap it before the
        event loop's child watcher does, and the watcher then reports status 255
        instead of how the worker really ended.
        """
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(5):
                await self.process.wait()
            await self.kill()


class ProcessPool:
    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._starting: set[asyncio.Future[_Worker]] = set()
        self._abandoned: list[_Worker] = []

    async def _start(self) -> _Worker:
        """Start a worker; if the caller is cancelled meanwhile, the worker is killed.

        The start runs as its own task: an anyio shield stops anyio cancellations but
        not a plain ``Task.cancel()`` (how a run stops its children), which would land
        inside ``open_process`` with the child already forked and lose its handle.
        """
        spawn = asyncio.ensure_future(self._spawn())
        self._starting.add(spawn)
        spawn.add_done_callback(self._starting.discard)
        try:
            return await asyncio.shield(spawn)
        except BaseException:
            spawn.add_done_callback(self._abandon)
            raise

    async def _spawn(self) -> _Worker:
        out_fd = _dup_stdout()
        try:
            process = await anyio.open_process(
                [sys.executable, "-c", _BOOT, _WORKER, str(2 if out_fd is None else out_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
                pass_fds=() if out_fd is None else (out_fd,),
            )
        finally:
            if out_fd is not None:
                os.close(out_fd)
        worker = _Worker(process)
        self._busy.add(worker)  # no await since the fork: aclose() always sees it
        return worker

    def _abandon(self, spawn: asyncio.Future[_Worker]) -> None:
        """A worker whose caller was cancelled while it started: kill it, reap it later."""
        if spawn.cancelled() or spawn.exception() is not None:
            return
        worker = spawn.result()
        self._busy.discard(worker)
        worker.signal_kill()
        self._abandoned.append(worker)

    async def call(self, task: str, fn_bytes: bytes, args: tuple[Any, ...]) -> Any:
        """Run one task in a worker and return its result, or raise its exception."""
        try:
            args_bytes = cloudpickle.dumps(args)
        except Exception as exc:
            raise TypeError(
                f"the arguments of task {task!r} cannot be pickled for its worker process"
                f" (kind='cpu'): {exc}"
            ) from exc
        if len(self._idle) + len(self._busy) >= self.size and not self._idle:
            raise RuntimeError("ProcessPool.call: more calls than workers")  # a runner bug
        if self._idle:
            worker = self._idle.pop()
            self._busy.add(worker)
        else:
            worker = await self._start()
        try:
            if not worker.initialised:
                await worker.send(pickle.dumps(("init", list(sys.path))))
                worker.initialised = True
            await worker.send(pickle.dumps(("call", fn_bytes, args_bytes)))
            reply = await worker.receive()
        except _STREAM_ERRORS:
            # The task's worker died:
            #     g.add("t", lambda: os._exit(1), kind="cpu")
            # its pipes closed under us; report how it ended and start afresh next time.
            self._busy.discard(worker)
            await worker.reap()
            raise WorkerDiedError(task, worker.process.returncode) from None
        except BaseException:
            # Cancelled or timed out while the worker computes: kill it, which is the only
            # way to stop the work, then let the cancellation go on.
            self._busy.discard(worker)
            await worker.kill()
            raise
        self._busy.discard(worker)
        self._idle.append(worker)
        if reply[0] == "ok":
            return cloudpickle.loads(reply[1])
        if reply[0] == "bad_result":
            raise TypeError(
                f"the result of task {task!r} ({reply[1]}) cannot be pickled to return it "
                f"from its worker process: {reply[2]}; return a picklable value or use "
                "kind='io'"
            )
        _, type_name, message, tb, exc_bytes = reply
        error: object = None
        if exc_bytes is not None:
            try:
                error = pickle.loads(exc_bytes)
            except Exception:  # noqa: BLE001 - e.g. its class cannot be imported here
                error = None
        if not isinstance(error, BaseException):
            error = RemoteError(type_name, message, tb)
        error.__asyncgraph_traceback__ = tb  # type: ignore[attr-defined]
        raise error

    async def aclose(self) -> None:
        """Stop every worker and wait until each has exited.

        Killed, not asked to exit: an idle worker holds nothing (it flushed its output
        after its last task), and an interpreter's orderly exit took 60-110 ms of every
        run's wall time (benchmarks/mixed.py) for no benefit. Workers still computing
        (a cancelled run) must be killed anyway. All are signalled first, then waited
        for, so they die in parallel.
        """
        with anyio.CancelScope(shield=True):
            while self._starting:  # a worker being started is stopped too
                await asyncio.wait(list(self._starting))
            workers = [*self._idle, *self._busy, *self._abandoned]
            self._idle, self._busy, self._abandoned = [], set(), []
            for w in workers:
                w.signal_kill()
            for w in workers:
                await w.kill()


def _dup_stdout() -> int | None:
    """A copy of the parent's real stdout for the worker's fd 1, or None for stderr."""
    if sys.platform == "win32":
        return None
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        return os.dup(fd)
    except (OSError, ValueError, AttributeError):
        return None
