"""Typed events: one for each transition of a task during a run.

The runner builds an :class:`Event` only when someone listens (a callback, a progress
bar, the store), so a run without listeners pays one ``is None`` check per transition.
Events are delivered on the loop's thread, in the order the transitions happened.

``queued`` is sent once per task the run is going to run, when the run starts (so a
progress bar knows its total); ``started`` at each attempt; ``retrying`` when an attempt
failed and another follows after a backoff; then exactly one of ``done``, ``failed``,
``skipped`` or ``cancelled``. With a store, ``done`` is sent only once the task's result
is durable in the store.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Event", "EventKind", "Emit"]


class EventKind(enum.Enum):
    """What happened to a task. The values are stable: never change them."""

    QUEUED = "queued"
    STARTED = "started"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value


class Event(NamedTuple):
    """One transition of one task (immutable).

    A NamedTuple, not a frozen dataclass: a run with a listener builds about three per
    task (queued, started, done), and a frozen dataclass costs three times as much to
    build (530 ns against 180 ns here), which alone was a 20 % slowdown of a 100k no-op
    task run with a progress bar.

    ``attempt`` counts the attempts of this run (0 for ``queued`` and for tasks that
    never started); ``time`` is seconds since the epoch; ``error`` is set for
    ``retrying``, ``failed`` and ``cancelled``.
    """

    kind: EventKind
    task: str
    attempt: int
    time: float
    error: BaseException | None = None


#: How the runner hands an event on: called on the loop's thread, must not block.
Emit = Callable[[Event], None]
