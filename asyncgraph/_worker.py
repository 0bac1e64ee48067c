"""The worker process of the CPU pool. Standard library and cloudpickle only.

Started by :mod:`asyncgraph._process` as ``python -c <boot> THIS_FILE OUT_FD``; it does not
import asyncgraph, so a worker starts fast and never re-runs the user's ``__main__``.

Protocol: frames of an 8-byte big-endian length and a pickle, over the worker's stdin
(requests) and the stdout it had at start (replies). The worker then points fd 1 at the
parent's stdout (``OUT_FD``), so ``print`` in a task goes where the user looks.

    request  ("init", sys_path)                  once, first
             ("call", fn_pickle, args_pickle)    then one per task
    reply    ("ok", result_pickle)
             ("bad_result", result_type_name, reason)    the result would not pickle
             ("err", type_name, message, traceback_text, exc_pickle_or_None)

A worker serves one call at a time and exits when its stdin closes. SIGINT is ignored:
Ctrl-C is the parent's to handle (it kills the workers it no longer needs).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import signal
import struct
import sys
import traceback
from typing import Any

import cloudpickle

_HEADER = struct.Struct(">Q")


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


def _error_reply(exc: BaseException, prefix: str = "") -> tuple[Any, ...]:
    tb = "".join(traceback.format_exception(exc))
    exc_bytes: bytes | None
    try:
        exc_bytes = cloudpickle.dumps(exc)
        pickle.loads(exc_bytes)  # an exception may pickle yet fail to unpickle
    except Exception:  # noqa: BLE001 - any failure means "send the text instead"
        exc_bytes = None
    cls = type(exc)
    return ("err", f"{cls.__module__}.{cls.__qualname__}", prefix + str(exc), tb, exc_bytes)


def _call(fn: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):  # an async function runs under its own loop here

        async def wait() -> Any:
            return await result

        result = asyncio.run(wait())
    return result


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
    functions: dict[bytes, Any] = {}
    while True:
        header = _read_exactly(requests, _HEADER.size)
        if header is None:
            return
        body = _read_exactly(requests, _HEADER.unpack(header)[0])
        if body is None:
            return
        message = pickle.loads(body)
        if message[0] == "init":
            sys.path[:] = message[1]
            continue
        _, fn_bytes, args_bytes = message
        try:
            fn = functions.get(fn_bytes)
            if fn is None:
                if len(functions) > 256:
                    functions.clear()
                fn = functions[fn_bytes] = cloudpickle.loads(fn_bytes)
            args, kwargs = cloudpickle.loads(args_bytes)
            result = _call(fn, args, kwargs)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            reply = _error_reply(exc)
        else:
            try:
                reply = ("ok", cloudpickle.dumps(result))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                reply = ("bad_result", type(result).__qualname__, f"{type(exc).__name__}: {exc}")
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            _write(replies, pickle.dumps(reply))
        except BrokenPipeError:
            # The parent is gone (killed, say): nobody wants the reply. Leave quietly
            # instead of printing a traceback into the parent's terminal.
            return


if __name__ == "__asyncgraph_worker__":
    main()
