"""The run's own task set: its children, its retry timers, and how it stops them.

What an anyio task group does, at the cost of a bare asyncio task: ``start_soon`` costs
35-50 us per task on our 2-core machines against 4-6 us for ``create_task``, and a run
starts one child per attempt. The guarantee is the same: no child outlives the run.
:meth:`TaskSet.stop` is called on every way out, under a shield.

State it keeps
    ``running``    child future -> task name, for each attempt still going (the run's
                   dispatch and done-callback read and write it directly: hot paths);
    ``timers``     task name -> the timer of its retry backoff;
    ``stopping``   set once :meth:`stop` began; reports then wait in ``inbox``;
    ``inbox``      reports that came while stopping, for the run to apply at its close;
    ``finished``   the one future the run awaits, resolved by :meth:`end`;
    ``abandoned``  tasks whose child did not end within ``cancel_grace`` of its cancel.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from typing import Any, Protocol

from ._shield import shielded

__all__ = ["TaskSet"]

logger = logging.getLogger("asyncgraph")


class _Timer(Protocol):
    def cancel(self) -> None: ...


class TaskSet:
    """A run's children and retry timers (see the module's docstring)."""

    def __init__(self, cancel_grace: float) -> None:
        self.cancel_grace = cancel_grace
        self.running: dict[asyncio.Future[Any], str] = {}
        self.timers: dict[str, _Timer] = {}
        self.stopping = False
        self.inbox: deque[Any] = deque()
        self.finished: asyncio.Future[None] | None = None
        self.abandoned: set[str] = set()

    def open(self) -> None:
        """On the run's loop, before the first child starts."""
        self.finished = asyncio.get_running_loop().create_future()

    def end(self, exc: BaseException | None = None) -> None:
        """Resolve ``finished`` (once): the run is over, or fails with ``exc``."""
        finished = self.finished
        if finished is not None and not finished.done():
            if exc is None:
                finished.set_result(None)
            else:
                finished.set_exception(exc)

    async def wait(self) -> None:
        """Until :meth:`end`."""
        assert self.finished is not None, "open() first"
        await self.finished

    async def stop(self) -> None:
        """Cancel every timer and every child still running; wait until each has ended.

        Shielded: we may be here because the run itself is being cancelled, and the
        children (a worker to kill, a thread to abandon) must end first. Bounded: a
        coroutine can catch the cancellation and go on,
            try: await forever() except BaseException: await forever()
        and the run must still end; such a child is abandoned (still a task of the
        loop, no longer the run's) and its task recorded cancelled by the run.
        """
        self.stopping = True
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        children = list(self.running)
        for child in children:
            child.cancel()
        if not children:
            return
        grace = None if math.isinf(self.cancel_grace) else self.cancel_grace
        with shielded():
            _, stuck = await asyncio.wait(children, timeout=grace)
        for child in stuck:
            name = self.running[child]
            self.abandoned.add(name)
            logger.warning(
                "task %r did not end within cancel_grace=%ss of being cancelled (does it "
                "catch CancelledError?): the run abandoned it and recorded it cancelled",
                name,
                self.cancel_grace,
            )
