"""Time for a run: the wall clock of its records, its timers and its time limits.

A run reads time through a :class:`Clock`, never from :mod:`time` or the loop directly,
so a test can hand it a clock it advances by hand: a timeout, a deadline or a retry's
backoff then happens at once, exactly when the test says, with no wall time waited
(trio's ``MockClock`` idea). The default, :data:`SYSTEM_CLOCK`, is the real thing.

The backoff jitter comes from a ``random.Random`` the run is given for the same reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "Timer"]


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
