"""Where a run's attempts run: one executor per kind of place, behind one Protocol.

``base``     the :class:`~.base.Executor` Protocol, the routing, ``with_timeout``, and
             :class:`~.base.InlineExecutor` (the runner's test double);
``local``    :class:`~.local.LoopExecutor` (coroutines) and
             :class:`~.local.ThreadExecutor` (plain functions), the ``"io"`` lane;
``process``  :class:`~.process.ProcessExecutor` over a run's own
             :class:`~.process.ProcessPool`, the ``"cpu"`` lane;
``threads``  the run's daemon threads; ``_worker.py`` the worker script (run in the
             workers; ``futures`` also sends its ``serve_call`` by value);
``shared``   :class:`~.shared.SharedPool`, a process pool on a thread of its own that
             many runs share, and each run's :class:`~.shared.SharedProcessExecutor`;
``futures``  CPU tasks on a user's ``concurrent.futures.Executor``.

None of them is public: the backends (``asyncgraph._backends``) hand them to runs.
"""

from __future__ import annotations

from collections.abc import Callable

from .._clock import SYSTEM_CLOCK, Clock
from .base import Executor, InlineExecutor
from .local import LoopExecutor, ThreadExecutor
from .process import ProcessExecutor

__all__ = [
    "Executor",
    "InlineExecutor",
    "LoopExecutor",
    "ProcessExecutor",
    "ThreadExecutor",
    "default_executors",
]


def default_executors(
    max_io: int | None,
    cpu_workers: int,
    clock: Clock = SYSTEM_CLOCK,
    pickled: Callable[[str, bytes], None] | None = None,
) -> list[Executor]:
    """What a run uses unless told otherwise: the loop and threads (IO first), then
    worker processes (which tell ``pickled`` each result's bytes as the worker made
    them: the run's ledger, for the store)."""
    return [
        LoopExecutor(max_io, clock),
        ThreadExecutor(max_io, clock),
        ProcessExecutor(cpu_workers, clock, pickled),
    ]
