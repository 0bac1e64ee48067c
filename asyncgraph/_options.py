"""A run's options, in one form: :class:`RunOptions`, validated once when it is built.

``run``, ``run_sync``, ``open_run`` (and through them ``Graph.run*`` and the CLI) keep
their fully typed keyword parameters and build one ``RunOptions`` of them before
anything starts, so a wrong option is reported by the call that took it, naming the
parameter. Everything past that point takes the one object.

Also here, since both ends of a run read them: ``CANCEL_GRACE``, and the reasons
``run_sync``'s signal handler gives the cancellation (``STOPPED_BY``), which the runner
records on the tasks it cancels.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._events import Event

if TYPE_CHECKING:
    import random

    from ._clock import Clock
    from ._executors.base import Backend
    from ._store.protocol import Store

__all__ = ["CANCEL_GRACE", "STOPPED_BY", "OnEvent", "Progress", "RunOptions"]

#: ``cancel_grace=``'s default, in seconds: how long a stopping run waits for a cancelled
#: task to end before abandoning it (a coroutine that catches CancelledError and goes
#: on). Half of ``docker stop``'s 10 s, so the cleanup after it fits before the SIGKILL.
CANCEL_GRACE = 5.0

#: The reasons recorded on the tasks a signal cancelled (the cancellation's message).
STOPPED_BY: dict[int, str] = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}

#: ``progress=``: False (no bar), True (a bar when stderr is a terminal or in Jupyter),
#: or "force" (a bar on stderr whatever it is).
Progress: TypeAlias = bool | Literal["force"]
#: ``on_event=``: called with each Event; a coroutine function is awaited (in order).
OnEvent: TypeAlias = Callable[[Event], Any]

#: The default of a field that ``__post_init__`` resolves (``cpu_workers``, ``limits``).
_RESOLVED: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """The options of one run, as :func:`asyncgraph.run` documents them.

    Built from what the caller gave; ``cpu_workers`` is then the number of workers (if
    not given: the backend's ``default_cpu_workers``, else the CPU count), ``limits`` a
    dict of its own (empty if not given) and ``cancel_grace`` a float. ``store`` is as
    given (a path or a Store): the run opens a path itself.
    """

    max_io: int | None = None
    cpu_workers: int = _RESOLVED
    limits: Mapping[str, int] = _RESOLVED
    fail_fast: bool = False
    deadline: float | None = None
    cancel_grace: float = CANCEL_GRACE
    store: str | os.PathLike[str] | Store | None = None
    progress: Progress = False
    on_event: OnEvent | None = None
    #: Where the run's work goes (None: the loop, threads and a process pool of the
    #: run's own, as ``default_executors`` makes them).
    backend: Backend | None = None
    #: Test seams, not public options: the run's wall time, timers and time limits
    #: (None: the system clock) and the backoff's jitter (None: a fresh Random).
    clock: Clock | None = None
    rng: random.Random | None = None

    if TYPE_CHECKING:  # what callers pass: None for the defaults __post_init__ resolves

        def __init__(
            self,
            *,
            max_io: int | None = None,
            cpu_workers: int | None = None,
            limits: Mapping[str, int] | None = None,
            fail_fast: bool = False,
            deadline: float | None = None,
            cancel_grace: float = CANCEL_GRACE,
            store: str | os.PathLike[str] | Store | None = None,
            progress: Progress = False,
            on_event: OnEvent | None = None,
            backend: Backend | None = None,
            clock: Clock | None = None,
            rng: random.Random | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        """Every check, in the order the parameters come; TypeError or ValueError naming
        the parameter, before anything starts."""
        _check_int("max_io", self.max_io)
        _check_int("cpu_workers", self.cpu_workers)
        limits = self.limits
        if limits is not None:
            if not isinstance(limits, Mapping):
                raise TypeError(
                    f"limits must be a dict of name -> int, not {type(limits).__name__}"
                )
            for key, value in limits.items():
                if not isinstance(key, str):
                    raise TypeError(f"limits keys are resource names (str), not {key!r}")
                _check_int(f"limits[{key!r}]", value, allow_none=False)
        if not isinstance(self.fail_fast, bool):
            raise TypeError(f"fail_fast must be True or False, not {self.fail_fast!r}")
        _check_deadline(self.deadline)
        _check_cancel_grace(self.cancel_grace)
        _check_store(self.store)
        _check_progress(self.progress)
        _check_on_event(self.on_event)
        _check_backend(self.backend)
        resolve = object.__setattr__  # frozen: the one place these are written
        resolve(
            self,
            "cpu_workers",
            self.cpu_workers or _backend_workers(self.backend) or os.cpu_count() or 1,
        )
        resolve(self, "limits", dict(limits or {}))
        resolve(self, "cancel_grace", float(self.cancel_grace))


def _check_int(name: str, value: Any, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")


def _check_deadline(deadline: Any) -> None:
    if deadline is None:
        return
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        raise TypeError(f"deadline must be a number of seconds, not {type(deadline).__name__}")
    if not deadline > 0 or math.isinf(deadline):
        raise ValueError(f"deadline must be a number of seconds > 0, not {deadline!r}")


def _check_cancel_grace(grace: Any) -> None:
    if isinstance(grace, bool) or not isinstance(grace, (int, float)):
        raise TypeError(f"cancel_grace must be a number of seconds, not {type(grace).__name__}")
    if not grace > 0:
        raise ValueError(f"cancel_grace must be a number of seconds > 0, not {grace!r}")


def _check_store(store: Any) -> None:
    if store is None or isinstance(store, (str, os.PathLike)):
        return
    from ._store.protocol import check_store  # only for runs given a store object

    check_store(store)


def _check_progress(progress: Any) -> None:
    if isinstance(progress, str):
        if progress != "force":
            raise ValueError(f"progress must be True, False or 'force', not {progress!r}")
    elif not isinstance(progress, bool):
        raise TypeError(
            f"progress must be True, False or 'force', not {type(progress).__name__} {progress!r}"
        )


def _check_on_event(on_event: Any) -> None:
    if on_event is not None and not callable(on_event):
        raise TypeError(
            f"on_event must be a function taking an Event (or None), not "
            f"{type(on_event).__name__} {on_event!r}"
        )


def _check_backend(backend: Any) -> None:
    if isinstance(backend, type):  # backend=ag.ProcessBackend, not ag.ProcessBackend()
        raise TypeError(
            f"backend must be a backend object, not the class {backend.__name__}: "
            f"pass {backend.__name__}(...) (a ProcessBackend started, as `async with "
            "ag.ProcessBackend() as pool:`)"
        )
    if backend is not None and not callable(getattr(backend, "executors", None)):
        raise TypeError(
            f"backend must be an asyncgraph backend (such as asyncgraph.ProcessBackend()), "
            f"or None for a process pool of the run's own; not {type(backend).__name__} "
            f"{backend!r}"
        )


def _backend_workers(backend: Any) -> int | None:
    """What a backend says it runs at once (``default_cpu_workers``), if it says: a run
    given no ``cpu_workers`` uses that many (a shared pool's size, say)."""
    workers = getattr(backend, "default_cpu_workers", None)
    if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1:
        return workers
    return None
