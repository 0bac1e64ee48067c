"""What a Dask worker runs for asyncgraph: one attempt of a task (stdlib and cloudpickle only).

:class:`~asyncgraph._executors.dask.DaskExecutor` submits :func:`run_attempt` by
reference: a worker imports this module, which needs only the standard library and
cloudpickle (by value, cloudpickle's module walk cost milliseconds per submit). The
task's own function arrives as cloudpickle bytes (pickled once per run, before anything
starts) and is loaded once per worker (a small cache keyed by those bytes).

An ``async def`` task runs under ``asyncio.run`` in the worker's thread, never on the
worker's event loop: a coroutine that blocks would stall the worker's heartbeats and
have it killed (Dask's ``block_evloop`` case). A failure carries the worker's traceback
text as ``__asyncgraph_traceback__`` (kept when the exception is pickled back); a
``SystemExit`` or ``KeyboardInterrupt`` travels inside a RuntimeError, as
``__asyncgraph_fatal__``, and the driver raises it again.

On a cluster the run owns (its workers on this machine), an attempt first appends its
key to a *journal*, one file per worker process in a directory of the run's own, with
one unbuffered write: a worker that dies after that (``os._exit``, a signal) cannot
take the line with it. When Dask blames every task that was on a dead worker, the
driver reads the journal: a task whose key is not there never started, and is
resubmitted once, free.

A task sent ahead of its inputs' results (``eager=True``) goes through a *gate*
(:func:`run_ahead`): it notes its key under its run's token as it begins, under a lock.
When a run stops, the driver cancels what it sent ahead, then calls
:func:`close_gate` on every worker (``client.run``): from then on no attempt sent ahead
by that run begins on that worker, and the worker says which keys began before. So the
run records each of those tasks as it was: begun (and cancelled), or never started.

State it keeps
    ``_FUNCTIONS``  per worker process: the loaded functions by their bytes (cleared
                    when it holds more than 64).
    ``_JOURNALS``   per worker process: the open journal file of each run's directory
                    (closed by :func:`forget_journal`, or with the process).
    ``_BEGAN``      per worker process: run token -> keys sent ahead that began here
                    (taken by :func:`close_gate`, dropped by :func:`forget_gate` when the
                    run ends).
    ``_CLOSED``     per worker process: the tokens of runs that stopped (the last 4,096;
                    a cancel reaches the worker long before 4,096 more runs stop).
"""

from __future__ import annotations

import asyncio
import binascii
import inspect
import os
import threading
import traceback
from typing import Any

import cloudpickle

__all__ = [
    "NotStarted",
    "close_gate",
    "dumps",
    "forget_gate",
    "forget_journal",
    "journal_has",
    "run_ahead",
    "run_attempt",
]

_FUNCTIONS: dict[bytes, Any] = {}
_JOURNALS: dict[str, Any] = {}
_JOURNAL_LOCK = threading.Lock()
_BEGAN: dict[str, set[str]] = {}
_CLOSED: dict[str, None] = {}
_GATE_LOCK = threading.Lock()


class NotStarted(Exception):  # noqa: N818 - what it says, for the driver's log
    """An attempt sent ahead whose run stopped before it began here: it did not run."""


def run_ahead(
    token: str,
    key: str,
    fn_bytes: bytes,
    is_async: bool,
    args: list[Any],
    kwargs: dict[str, Any],
    journal: tuple[str, str] | None = None,
) -> Any:
    """:func:`run_attempt` of an attempt sent ahead by run ``token`` under ``key``,
    through the run's gate: refused (:class:`NotStarted`) once the run has stopped."""
    with _GATE_LOCK:
        if token in _CLOSED:
            raise NotStarted(f"{key}: its run stopped before it began")
        began = _BEGAN.get(token)
        if began is None:
            began = _BEGAN[token] = set()
        began.add(key)
    return run_attempt(fn_bytes, is_async, args, kwargs, journal)


def close_gate(token: str) -> list[str]:
    """Run ``token`` stopped (called on each worker by the driver): no attempt it sent
    ahead begins here from now on; the keys of those that began here before."""
    with _GATE_LOCK:
        _CLOSED[token] = None
        while len(_CLOSED) > 4096:
            del _CLOSED[next(iter(_CLOSED))]
        return sorted(_BEGAN.pop(token, ()))


def forget_gate(token: str) -> None:
    """Run ``token`` ended with nothing left on the cluster: drop what it noted here."""
    with _GATE_LOCK:
        _BEGAN.pop(token, None)


def _note(journal: str, key: str) -> None:
    """Append ``key`` to this process's file in ``journal`` (one unbuffered write)."""
    f = _JOURNALS.get(journal)
    if f is None:
        with _JOURNAL_LOCK:
            f = _JOURNALS.get(journal)
            if f is None:
                path = os.path.join(journal, f"started-{os.getpid()}")
                f = _JOURNALS[journal] = open(path, "ab", buffering=0)  # noqa: SIM115
    f.write(key.encode() + b"\n")


def journal_has(journal: str, key: str) -> bool:
    """Whether an attempt under ``key`` started on a worker (read on the driver)."""
    line = key.encode() + b"\n"
    try:
        names = os.listdir(journal)
    except OSError:
        return True  # no journal to ask: count it as started (never a free rerun)
    for name in names:
        try:
            with open(os.path.join(journal, name), "rb") as f:
                data = f.read()
        except OSError:
            continue
        if data.startswith(line) or b"\n" + line in data:
            return True
    return False


def forget_journal(journal: str) -> None:
    """Close this process's file of ``journal`` (worker threads in the driver's process)."""
    with _JOURNAL_LOCK:
        f = _JOURNALS.pop(journal, None)
    if f is not None:
        f.close()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def run_attempt(
    fn_bytes: bytes,
    is_async: bool,
    args: list[Any],
    kwargs: dict[str, Any],
    journal: tuple[str, str] | None = None,
) -> Any:
    """Load the task's function (once per worker) and call it with ``args``/``kwargs``;
    ``fn_bytes`` is its cloudpickle in base64 (``dask._shippable`` says why);
    ``journal`` is ``(directory, key)``: the attempt notes there that it started."""
    if journal is not None:
        _note(*journal)
    try:
        fn = _FUNCTIONS.get(fn_bytes)
        if fn is None:
            fn = cloudpickle.loads(binascii.a2b_base64(fn_bytes))
            if len(_FUNCTIONS) >= 64:
                _FUNCTIONS.clear()
            _FUNCTIONS[fn_bytes] = fn
        if is_async:
            return asyncio.run(fn(*args, **kwargs))
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):  # a lambda returning a coroutine
            result = asyncio.run(_awaited(result))
        return result
    except (SystemExit, KeyboardInterrupt) as exc:
        # Raised in a Dask worker's thread, these break the worker's state machine;
        # carried in an Exception instead, and raised again on the driver, where the
        # run ends with them as it does on the process pool.
        carrier = RuntimeError(f"the task raised {type(exc).__name__}({exc})")
        carrier.__asyncgraph_fatal__ = exc  # type: ignore[attr-defined]
        carrier.__asyncgraph_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
        raise carrier from None
    except BaseException as exc:  # noqa: BLE001 - raised again, or carried as text
        text = traceback.format_exc()
        try:
            cloudpickle.dumps(exc)
        except Exception:  # noqa: BLE001 - it cannot go back as itself: its text goes
            kind = type(exc)
            remote = (f"{kind.__module__}.{kind.__qualname__}", str(exc), text)
        else:
            exc.__asyncgraph_traceback__ = text  # type: ignore[attr-defined]
            raise
    # Outside the handler, so the carrier has no __context__ (Dask pickles an error's
    # causes and context with it): Dask would send back a bare Exception of the repr;
    # the driver makes a RemoteError of this, as the process pool does.
    carrier = RuntimeError(f"{remote[0]}: {remote[1]}")
    carrier.__asyncgraph_remote__ = remote  # type: ignore[attr-defined]
    raise carrier


def dumps(value: Any) -> bytes:
    """A result's bytes, made on the worker that holds it (for the driver's store)."""
    data: bytes = cloudpickle.dumps(value)
    return data
