"""Time for a run: the wall clock of its records, its timers and its time limits.

A run reads time through a :class:`Clock`, never from :mod:`time` or the loop directly,
so a test can hand it a clock it advances by hand: a timeout, a deadline or a retry's
backoff then happens at once, exactly when the test says, with no wall time waited
(trio's ``MockClock`` idea). The default, :data:`SYSTEM_CLOCK`, is the real thing.

The backoff jitter comes from a ``random.Random`` the run is given for the same reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio

if TYPE_CHECKING:
    from ._task import Task

__all__ = ["MAX_BACKOFF", "SYSTEM_CLOCK", "Clock", "SystemClock", "Timer", "backoff"]


class Timer(Protocol):
    """What :meth:`Clock.call_later` returns (an ``asyncio.TimerHandle`` will do)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where a run gets its time from (everything on the loop's thread)."""

    def time(self) -> float:
        """Wall time, in seconds since the epoch: what records and events say."""
        ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Call ``callback(*args)`` once, ``delay`` seconds from now (a retry's backoff)."""
        ...

    def move_on_after(self, delay: float | None) -> anyio.CancelScope:
        """A cancel scope that cancels what it holds ``delay`` seconds after it is made
        (None: never): a task's timeout, the run's deadline."""
        ...


class SystemClock:
    """The real clock: ``time.time``, the running loop's timers, anyio's scopes."""

    time = staticmethod(time.time)

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    def move_on_after(self, delay: float | None) -> anyio.CancelScope:
        return anyio.move_on_after(delay)


SYSTEM_CLOCK = SystemClock()


#: The longest wait before a retry, in seconds, before jitter: the exponential growth
#: stops there (or at ``retry_delay`` itself, if that is longer). Celery's default cap.
MAX_BACKOFF = 600.0


def backoff(
    task: Task, attempt: int, uniform: Callable[[float, float], float] = random.uniform
) -> float:
    """Exponential backoff with jitter: ``retry_delay * 2**(attempt-1)``, capped at
    ``max(MAX_BACKOFF, retry_delay)``, times 0.5-1.5.

    The exponent is bounded and the power is a float, so attempt 2000 costs what
    attempt 2 costs (an int ``2**1024`` does not fit in a float: OverflowError).
    """
    delay = task.retry_delay
    if delay == 0:
        return 0.0
    grown = delay * 2.0 ** min(attempt - 1, 64)  # 2**64 passes any cap; inf at worst
    return min(grown, max(MAX_BACKOFF, delay)) * uniform(0.5, 1.5)
