"""The worker process of the CPU pool. Standard library and cloudpickle only.

Started by :mod:`asyncgraph._executors.process` as ``python -c <boot> THIS_FILE OUT_FD PARENT_PID
WATCH_FD`` in a session (and process group) of its own; it does not import asyncgraph,
so a worker starts fast and never re-runs the user's ``__main__``.

Protocol: frames of an 8-byte big-endian length and a pickle, over the worker's stdin
(requests) and the stdout it had at start (replies). The worker then points fd 1 at the
parent's stdout (``OUT_FD``), so ``print`` in a task goes where the user looks.

    request  ("init", sys_path)                  once, first
             ("call", fn_pickle, args_pickle)    then one per task
    reply    ("started", time)                   at once, when a call arrives
             then one of:
             ("ok", result_pickle)
             ("bad_result", result_type_name, reason)    the result would not pickle
             ("unloadable", what, type_name, message, traceback_text)
                 the function or the arguments ("function" / "arguments") could not be
                 unpickled here (a module this process cannot import, say)
             ("err", type_name, message, traceback_text, exc_pickle_or_None)

A worker serves one call at a time. SIGINT is ignored: Ctrl-C is the parent's to handle
(it kills the workers it no longer needs). ``serve_call`` is the same service for a
worker of another executor (``ExecutorBackend`` sends it there by value, with cloudpickle).

A worker never outlives its driver (the parent that started it). Three ways to learn of
its death, any one enough, each ending in ``_die``, which kills the worker's whole process
group (what its task started, too):

* ``PR_SET_PDEATHSIG`` (Linux): the kernel sends ``_PARENT_DIED`` when the parent
  thread that started us exits; a handler runs ``_die`` in the main thread. The driver
  starts workers from its event loop's thread, which lives as long as the pool.
* the watchdog pipe (everywhere): a daemon thread blocks reading ``WATCH_FD``, whose
  write end only the driver holds; end-of-file means the driver is gone (also when a
  task is busy in C code that lets go of the GIL, where a signal handler would wait).
* the requests pipe: end-of-file there, when idle, means the same.

And one race: the driver may have died before we asked for the signal, so we compare
our parent with ``PARENT_PID`` once the signal is set up.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

import cloudpickle

_HEADER = struct.Struct(">Q")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: The parent-death signal: a real-time one, which no task is likely to use for itself
#: (SIGTERM stays the plain "terminate" a task or an operator may send).
_PARENT_DIED = getattr(signal, "SIGRTMIN", 34) + 3


def _die() -> NoReturn:
    """The driver is gone: stop now, with everything this worker's task started."""
    try:
        if os.getpgid(0) == os.getpid():  # we lead our own group: never the driver's
            os.killpg(0, signal.SIGKILL)  # ourselves included
    finally:
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")  # pragma: no cover


def _watch_parent(fd: int) -> None:
    try:
        while os.read(fd, 64):  # nobody writes: this returns only at end-of-file
            pass
    except OSError:
        return  # the task closed the descriptor: the other ways remain
    _die()


def _guard(parent: int | None, watch: int) -> None:
    """Arrange to die with the driver (see the module's docstring)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            signal.signal(_PARENT_DIED, lambda *_: _die())
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, _PARENT_DIED, 0, 0, 0)
        except (OSError, AttributeError, ValueError):
            pass  # no prctl here: the watchdog pipe still tells
    if parent is not None and os.getppid() != parent:
        _die()  # the driver died before the signal was armed: nothing else would tell
    if watch >= 0:
        threading.Thread(target=_watch_parent, args=(watch,), daemon=True).start()


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write(fd: int, payload: bytes) -> None:
    view = memoryview(_HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def _text(exc: BaseException) -> tuple[str, bool]:
    """``str(exc)``, or a placeholder naming what went wrong (and False) if that
    raises, as ``__str__`` may in an exception class of the user's."""
    try:
        return str(exc), True
    except BaseException as inner:  # noqa: BLE001 - any failure gets the placeholder
        return f"<str() raised {type(inner).__qualname__}>", False


def _traceback(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(exc))
    except BaseException:  # noqa: BLE001 - a traceback must not take the worker down
        return f"{_type_name(exc)}: (the traceback could not be formatted)\n"


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _error_reply(exc: BaseException) -> tuple[Any, ...]:
    tb = _traceback(exc)
    message, ok = _text(exc)
    exc_bytes: bytes | None = None
    if ok:  # an exception whose str() raises would break whoever shows it: send text
        try:
            exc_bytes = cloudpickle.dumps(exc)
            back = pickle.loads(exc_bytes)  # an exception may pickle yet fail to unpickle
            # ... or unpickle as something else: pickle calls ``cls(*exc.args)``, so a
            # one-argument __init__ that builds its message gets the message back:
            #     class Counted(Exception):
            #         def __init__(self, n): super().__init__(f"{n} rows were bad")
            # Counted(5) would arrive as "5 rows were bad rows were bad". Then the
            # parent gets the text (a RemoteError naming the type), not the copy.
            if type(back) is not type(exc) or str(back) != message:
                exc_bytes = None
        except Exception:  # noqa: BLE001 - any failure means "send the text instead"
            exc_bytes = None
    return ("err", _type_name(exc), message, tb, exc_bytes)


def _call(fn: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):  # an async function runs under its own loop here

        async def wait() -> Any:
            return await result

        result = asyncio.run(wait())
    return result


def _serve(fn_bytes: bytes, args_bytes: bytes, functions: dict[bytes, Any]) -> tuple[Any, ...]:
    """Run one call; the reply to send (never raises)."""
    what = "function"
    try:
        fn = functions.get(fn_bytes)
        if fn is None:
            if len(functions) > 256:
                functions.clear()
            fn = cloudpickle.loads(fn_bytes)
            functions[fn_bytes] = fn
        what = "arguments"
        args, kwargs = cloudpickle.loads(args_bytes)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, never retried
        return ("unloadable", what, _type_name(exc), _text(exc)[0], _traceback(exc))
    try:
        result = _call(fn, args, kwargs)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        return _error_reply(exc)
    try:
        return ("ok", cloudpickle.dumps(result))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        return ("bad_result", type(result).__qualname__, f"{type(exc).__name__}: {_text(exc)[0]}")


def serve_call(fn_bytes: bytes, args_bytes: bytes) -> tuple[float, tuple[Any, ...]]:
    """One call in a worker of another executor (``ExecutorBackend``, which sends this
    function by value): when it began, and the reply :func:`_serve` makes."""
    return time.time(), _serve(fn_bytes, args_bytes, {})


def main() -> None:
    requests = os.dup(0)
    replies = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    out = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    os.dup2(out, 1)
    if out > 2:
        os.close(out)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _guard(
        int(sys.argv[3]) if len(sys.argv) > 3 else None,
        int(sys.argv[4]) if len(sys.argv) > 4 else -1,
    )
    functions: dict[bytes, Any] = {}
    while True:
        header = _read_exactly(requests, _HEADER.size)
        body = None if header is None else _read_exactly(requests, _HEADER.unpack(header)[0])
        if body is None:
            _die()  # the requests pipe closed: the driver is gone (or done with us)
        message = pickle.loads(body)
        if message[0] == "init":
            sys.path[:] = message[1]
            continue
        _, fn_bytes, args_bytes = message
        try:
            _write(replies, pickle.dumps(("started", time.time())))
            reply = _serve(fn_bytes, args_bytes, functions)
            sys.stdout.flush()
            sys.stderr.flush()
            _write(replies, pickle.dumps(reply))
        except BrokenPipeError:
            # The parent is gone (killed, say): nobody wants the reply. Leave quietly
            # instead of printing a traceback into the parent's terminal.
            _die()


if __name__ == "__asyncgraph_worker__":
    main()
