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

State it keeps
    ``_FUNCTIONS``  per worker process: the loaded functions by their bytes (cleared
                    when it holds more than 64).
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from typing import Any

import cloudpickle

__all__ = ["dumps", "run_attempt"]

_FUNCTIONS: dict[bytes, Any] = {}


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def run_attempt(fn_bytes: bytes, is_async: bool, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Load the task's function (once per worker) and call it with ``args``/``kwargs``."""
    try:
        fn = _FUNCTIONS.get(fn_bytes)
        if fn is None:
            fn = cloudpickle.loads(fn_bytes)
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
