"""Watching a run: the ``on_event`` callback, the progress bar and logging (``Watch``).

Everything here is fed by the runner's one ``emit`` callable (see ``_events``), on the
loop's thread, and by nothing else: no listener assumes *when* an event comes (with a
store, ``done`` arrives once the result is durable, from a commit callback), only that
it comes through ``emit``. A run without any listener gets ``emit=None`` and pays
nothing.

Listeners, each optional, fanned out by :func:`_fan_out`:

* the progress bar (:class:`_Progress`): counts per kind, the running tasks, redrawn
  at most every 0.1 s; the clock it reads is the event's own ``time``, so an event that
  does not redraw costs a few dict operations;
* a sync ``on_event`` callback, called inline; an async one is handed to one relay task
  owned by the run (:class:`_Relay`), which awaits it event by event, in order, and is
  drained before the run returns. An exception raised by either is logged on the
  ``asyncgraph`` logger (with its traceback) and the run goes on: watching must not
  change what the run does;
* the ``asyncgraph`` logger, only when it is enabled for INFO (failures and retries) or
  DEBUG (every event) at the start of the run; the library adds no handler;
* any ``extra`` listener the caller gives, first (an open run's history, see
  ``_open_run``).

``Watch`` holds them for one run: the runner wraps the run in ``async with watch:``,
which starts the bar and the relay and settles them when the run ends.

State it keeps (``Watch``, for one run)
    emit       the fan-out of the listeners, or None when nobody listens
    progress   the bar's counters and running tasks (``_Progress``), if a bar is shown
    relay      the async callback's queue and its one task (``_Relay``), if it is async
    until      the run's deadline on ``time.monotonic()``, once entered: the drain's bound
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from types import TracebackType
from typing import Any

from ._events import Emit, Event, EventKind
from ._options import OnEvent, Progress
from ._task import is_async_callable

__all__ = ["Progress", "OnEvent", "StreamProgress", "Watch"]

logger = logging.getLogger("asyncgraph")


_QUEUED = EventKind.QUEUED
_STARTED = EventKind.STARTED
_SKIPPED = EventKind.SKIPPED
_SETTLED = (EventKind.DONE, EventKind.FAILED, EventKind.SKIPPED, EventKind.CANCELLED)
#: Seconds between two redraws of the bar (tqdm's own default).
REDRAW_EVERY = 0.1


def _in_jupyter() -> bool:
    """True inside a Jupyter kernel (not a plain IPython terminal)."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    return shell is not None and hasattr(shell, "kernel")


class _Progress:
    """A progress bar fed by events: done / failed / skipped / cancelled, and running.

    Its total is the tasks the run settles: those queued, plus those skipped before
    anything started (a failed upstream task from an earlier run). Built only when it
    will be shown (see :meth:`make`), so a silent bar costs nothing per event.
    """

    def __init__(self, open_bar: Callable[[], Any]) -> None:
        self.open_bar = open_bar  # called when the run starts, so no bar is left over
        self.bar: Any = None  # if the run's options turn out to be wrong
        self.counts = dict.fromkeys(EventKind, 0)
        self.running: dict[str, None] = {}  # insertion-ordered: the oldest first
        self.extra = 0  # skipped before anything started: not queued, still settled
        self.shown = 0  # settled tasks the bar has been told about
        self.next_draw = 0.0
        # Following a run (see follow()): how many tasks it has left, which run.
        self.left: Callable[[], int] | None = None
        self.now_running: Callable[[], Collection[str]] = tuple
        self.timer: asyncio.TimerHandle | None = None

    def follow(
        self,
        total: int,
        extra: int,
        left: Callable[[], int],
        running: Callable[[], Collection[str]],
    ) -> None:
        """Read the run's counts instead of its per-task events (issue 15).

        Called by a run of which this bar is the only listener (and which has no store
        and no fan-out): it then sends no ``queued``, ``started`` or ``done`` events (three
        per task, most of the bar's cost), only the rare ones (failed, skipped,
        cancelled, retrying), and the bar redraws on a loop timer every
        :data:`REDRAW_EVERY` seconds, cancelled when it closes, from ``total`` (the tasks
        queued), ``extra`` (skipped before anything started), ``left()`` (the tasks not
        settled yet) and ``running()`` (the running tasks' names, oldest first): done is
        what settled without an event. The last draw, at close, is exact.
        """
        self.counts[_QUEUED] = total
        self.extra = extra
        self.left = left
        self.now_running = running

    def _tick(self) -> None:
        # A loop timer, one at a time, cancelled by close(): never outlives the run.
        self.timer = asyncio.get_running_loop().call_later(REDRAW_EVERY, self._tick)
        self.draw(0.0)

    def _begin_ticking(self) -> None:
        if self.left is not None:
            self.timer = asyncio.get_running_loop().call_later(REDRAW_EVERY, self._tick)

    def _pull(self, left: Callable[[], int]) -> None:
        c = self.counts
        later_skips = c[EventKind.SKIPPED] - self.extra
        c[EventKind.DONE] = (
            c[_QUEUED] - left() - c[EventKind.FAILED] - later_skips - c[EventKind.CANCELLED]
        )

    def _running(self) -> Collection[str]:
        """The running tasks' names, oldest first (a live view when following a run)."""
        return self.running if self.left is None else self.now_running()

    @classmethod
    def make(cls, progress: Progress, label: str | None = None) -> _Progress | None:
        if progress is False:
            return None
        jupyter = _in_jupyter()
        if progress is True and not jupyter and not sys.stderr.isatty():
            return None  # output is not a terminal: silent unless forced
        try:
            import tqdm  # noqa: F401 - only to say which extra is missing
        except ImportError:
            raise ImportError(
                "progress=True needs tqdm: pip install 'asyncgraph[progress]'"
            ) from None
        options: dict[str, Any] = {
            "total": 0,
            "unit": "task",
            "mininterval": 0,  # we throttle ourselves, on the events' clock
            "miniters": 1,
            "dynamic_ncols": True,
        }
        if label is not None:
            options["desc"] = label  # the graph's name (Graph(name=...)), left of the bar
        if jupyter:
            try:
                import ipywidgets  # noqa: F401 - tqdm's notebook bar is a widget
                from tqdm.notebook import tqdm as notebook_tqdm

                # display=False: the bar shows itself through a handle it can update.
                return _NotebookProgress(functools.partial(notebook_tqdm, display=False, **options))
            except ImportError:
                pass  # no ipywidgets: a text bar on the cell's stderr is next best
        from tqdm import tqdm as text_tqdm

        return cls(functools.partial(text_tqdm, file=sys.stderr, disable=False, **options))

    def start(self) -> None:
        self.bar = self.open_bar()
        self._begin_ticking()

    def listener(self) -> Emit:
        """The function that takes each event: a closure over the counters, not a
        method, since it runs about three times per task (see benchmarks/progress.py)."""
        counts = self.counts
        running = self.running
        forget = running.pop
        this = self

        def on_event(event: Event) -> None:
            kind = event[0]
            counts[kind] += 1
            if kind is _STARTED:
                running[event[1]] = None
            elif kind is not _QUEUED:
                forget(event[1], None)
                if kind is _SKIPPED and not counts[_STARTED] and this.left is None:
                    this.extra += 1  # (a followed run said how many: see follow())
            # Following a run, only its timer draws: between two callbacks, where the
            # counts agree (an event comes before the run's own count moves).
            if event[3] >= this.next_draw and this.left is None:
                this.draw(event[3])

        return on_event

    def __call__(self, event: Event) -> None:
        self.listener()(event)  # for one-off use (tests); a run takes listener() once

    def text(self) -> str:
        c = self.counts
        parts = [
            f"done {c[EventKind.DONE]}",
            f"failed {c[EventKind.FAILED]}",
            f"skipped {c[EventKind.SKIPPED]}",
        ]
        if c[EventKind.CANCELLED]:
            parts.append(f"cancelled {c[EventKind.CANCELLED]}")
        running = self._running()
        if running:
            names = list(itertools.islice(running, 3))
            shown = ", ".join(n if len(n) <= 24 else n[:23] + "…" for n in names)
            more = len(running) - len(names)
            parts.append(f"running {shown}" + (f" +{more}" if more else ""))
        return " · ".join(parts)

    def draw(self, now: float) -> None:
        self.next_draw = now + REDRAW_EVERY
        if self.left is not None:
            self._pull(self.left)
        bar = self.bar
        c = self.counts
        settled = sum(c[k] for k in _SETTLED)
        bar.total = c[_QUEUED] + self.extra
        bar.set_postfix_str(self.text(), refresh=False)
        if settled > self.shown:
            bar.update(settled - self.shown)
            self.shown = settled
        else:
            bar.refresh()

    def close(self) -> None:
        self._stop_ticking()
        if self.bar is not None:
            self.draw(0.0)
            self.bar.close()

    def _stop_ticking(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.now_running = tuple  # the run is over: nothing runs (each settled)


class _NotebookProgress(_Progress):
    """The bar in Jupyter: tqdm's widget, kept in step with a total that grows.

    tqdm opens a widget with ``total=0`` as an indeterminate bar (full, ``info`` style)
    and does not pass a later ``total`` to it; this bar sets the widget's ``max`` when
    the total changes, so it fills as tasks settle. It shows the widget through a
    display handle and updates that display when it closes, so a saved notebook's text
    fallback (``text/plain``) reads the final counts, not the opening ``0task``. It ends
    ``success`` when every task it counted is done, ``danger`` otherwise.
    """

    def __init__(self, open_bar: Callable[[], Any]) -> None:
        super().__init__(open_bar)
        self.handle: Any = None  # IPython's DisplayHandle of the widget
        self.widget_total = 0  # the total the widget was last given

    def start(self) -> None:
        import IPython.display

        show: Callable[..., Any] = IPython.display.display  # IPython's is untyped
        self.bar = self.open_bar()
        self.handle = show(self.bar.container, display_id=True)
        self._begin_ticking()

    def draw(self, now: float) -> None:
        total = self.counts[_QUEUED] + self.extra
        if total != self.widget_total:
            # Before the count moves: the widget clamps a value above its max.
            widget = self.bar.container.children[1]
            widget.max = max(total, 1)
            if widget.bar_style == "info":  # tqdm's "no total" look
                widget.bar_style = ""
            self.widget_total = total
        super().draw(now)

    def close(self) -> None:
        self._stop_ticking()
        bar = self.bar
        if bar is None:
            return
        self.draw(0.0)
        c = self.counts
        if sum(c[k] for k in _SETTLED) > c[EventKind.DONE] or self._running():
            bar.disp(bar_style="danger", check_delay=False)  # tqdm keeps it past close
        bar.close()
        if self.handle is not None:
            self.handle.update(bar.container)


class _Relay:
    """Awaits an async ``on_event`` callback for each event, in order, in one task.

    ``push`` (from emit) never blocks: it appends and wakes the task. The run drains it
    (``aclose``) before returning, so no callback is lost; a cancelled run cancels it.
    """

    def __init__(self, callback: Callable[[Event], Awaitable[Any]]) -> None:
        self.callback = callback
        self.queue: collections.deque[Event] = collections.deque()
        self.current: Event | None = None  # the event the callback is being given
        self.since = 0.0  # time.monotonic() when that call began
        self.wake: asyncio.Future[None] | None = None
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._work(), name="on_event")

    def push(self, event: Event) -> None:
        self.queue.append(event)
        self._poke()

    def _poke(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.queue:
                event = self.current = self.queue.popleft()
                self.since = time.monotonic()
                try:
                    await self.callback(event)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # the relay itself is being stopped
                    # The callback awaited something that was cancelled: its own
                    # failure, which must not pass for the run's cancellation.
                    logger.exception("on_event callback failed on %s of %r", event.kind, event.task)
                except Exception:
                    logger.exception("on_event callback failed on %s of %r", event.kind, event.task)
            self.current = None
            if self.closing:
                return
            self.wake = loop.create_future()
            await self.wake

    async def aclose(self, until: float | None, grace: float | None) -> str | None:
        """Deliver what is queued, then stop. Cancelled meanwhile: stop at once.

        Bounded twice: by ``until`` (the run's deadline, on ``time.monotonic()``), and
        by ``grace`` for each call, counted from the later of its start and now. When a
        bound passes, the relay is cancelled (and not waited for: a callback may catch
        the cancellation too) and "deadline" or "grace" is returned.
        """
        task = self.task
        assert task is not None
        self.closing = True
        self._poke()
        began = time.monotonic()
        try:
            while not task.done():
                now = time.monotonic()
                bounds = {}
                if until is not None:
                    bounds["deadline"] = until - now
                if grace is not None and self.current is not None:
                    bounds["grace"] = max(self.since, began) + grace - now
                wait = min(bounds.values()) if bounds else None
                if wait is not None and wait <= 0:
                    self.cancel()
                    return min(bounds, key=bounds.__getitem__)
                # Wakes when the relay is done, or when the current call's bound passes
                # (a later call, if one began meanwhile, gets its own bound).
                await asyncio.wait((task,), timeout=wait)
        except asyncio.CancelledError:
            self.cancel()
            raise
        return None

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _guarded(callback: Callable[[Event], Any]) -> Emit:
    def call(event: Event) -> None:
        try:
            callback(event)
        except Exception:
            logger.exception("on_event callback failed on %s of %r", event.kind, event.task)

    return call


def _log_event(event: Event) -> None:
    kind = event.kind
    if kind is EventKind.FAILED or kind is EventKind.RETRYING:
        error = event.error
        logger.info(
            "task %r %s (attempt %d): %s: %s",
            event.task,
            kind.value,
            event.attempt,
            type(error).__name__,
            error,
        )
    else:
        logger.debug("task %r %s (attempt %d)", event.task, kind.value, event.attempt)


def _log_failures(event: Event) -> None:
    if event.kind is EventKind.FAILED or event.kind is EventKind.RETRYING:
        _log_event(event)


def _fan_out(listeners: list[Emit]) -> Emit | None:
    if not listeners:
        return None
    if len(listeners) == 1:
        return listeners[0]
    first, *rest = listeners

    def emit(event: Event) -> None:
        first(event)
        for listener in rest:
            listener(event)

    return emit


class Watch:
    """The listeners of one run, and their lifetime: ``async with watch:`` around the run.

    Entering starts the bar and the relay; leaving closes the bar and delivers the async
    callbacks still queued, within the run's ``deadline`` if it has one, and each call
    within ``grace`` seconds (the run's ``cancel_grace``) of the run's end or of its own
    start, whichever is later: what is left then is dropped (and logged), so a slow or
    stuck callback cannot hold the run past its deadline, nor forever. A run that ends
    with an error (e.g. TaskFailures) still delivers its events; one that was cancelled
    (or Ctrl-C) stops listening at once.
    """

    def __init__(
        self,
        progress: Progress,
        on_event: OnEvent | None,
        *,
        deadline: float | None = None,
        grace: float | None = None,
        extra: Emit | None = None,
        label: str | None = None,
    ) -> None:
        self.progress = _Progress.make(progress, label)
        self.relay: _Relay | None = None
        self.deadline = deadline
        self.grace = None if grace is None or math.isinf(grace) else grace
        self.until: float | None = None  # the deadline on time.monotonic(), once entered
        listeners: list[Emit] = []
        if extra is not None:
            listeners.append(extra)
        if self.progress is not None:
            listeners.append(self.progress.listener())
        alone = len(listeners) == 1 and extra is None
        if on_event is not None:
            if is_async_callable(on_event):
                self.relay = _Relay(on_event)
                listeners.append(self.relay.push)
            else:
                listeners.append(_guarded(on_event))
        if logger.isEnabledFor(logging.DEBUG):
            listeners.append(_log_event)
        elif logger.isEnabledFor(logging.INFO):
            listeners.append(_log_failures)
        self.emit = _fan_out(listeners)
        #: The bar, when it is the only listener: a run may have it follow its counts
        #: instead of sending it three events a task (see ``_Progress.follow``).
        self.bar_alone = self.progress if alone and len(listeners) == 1 else None

    async def __aenter__(self) -> Watch:
        if self.deadline is not None:
            self.until = time.monotonic() + self.deadline
        if self.progress is not None:
            self.progress.start()
        if self.relay is not None:
            self.relay.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.relay is None:
            return
        if exc is None or isinstance(exc, Exception):
            await self._drain()
        else:
            self.relay.cancel()

    async def _drain(self) -> None:
        relay = self.relay
        assert relay is not None
        bound = await relay.aclose(self.until, self.grace)
        if bound == "deadline":
            logger.warning(
                "on_event: the run's deadline passed with %d event(s) not delivered to "
                "the async callback; they were dropped",
                len(relay.queue) + 1,
            )
        elif bound == "grace":
            event = relay.current
            assert event is not None
            logger.warning(
                "on_event: the async callback %s did not return within cancel_grace=%ss "
                "(on %s of %r) after the run ended; it was cancelled and %d event(s) "
                "were dropped",
                _callback_name(relay.callback),
                self.grace,
                event.kind.value,
                event.task,
                len(relay.queue) + 1,
            )


def _callback_name(callback: Callable[..., Any]) -> str:
    name = getattr(callback, "__qualname__", None) or type(callback).__qualname__
    module = getattr(callback, "__module__", None)
    return f"{module}.{name}" if module else str(name)


# -- streams (issue 14) ------------------------------------------------------------------


class StreamProgress:
    """A stream's progress bar: source batches done, failed and cancelled, and rows/s.

    Fed by the stream's batch events (``source#17``: done, failed, cancelled; queued as
    each is read) through the same ``emit`` as any listener, and told the rows of each
    source batch read (:meth:`rows`), which an Event does not carry. Its total is
    ``max_batches`` when given, else open-ended. Built only when it will be shown.
    """

    def __init__(self, open_bar: Callable[[], Any]) -> None:
        self.open_bar = open_bar
        self.bar: Any = None
        self.counts = dict.fromkeys(EventKind, 0)
        self.n_rows = 0
        self.started = 0.0
        self.shown = 0
        self.next_draw = 0.0

    @classmethod
    def make(cls, progress: Progress, total: int | None) -> StreamProgress | None:
        if progress is False:
            return None
        jupyter = _in_jupyter()
        if progress is True and not jupyter and not sys.stderr.isatty():
            return None
        try:
            import tqdm  # noqa: F401 - only to say which extra is missing
        except ImportError:
            raise ImportError(
                "progress=True needs tqdm: pip install 'asyncgraph[progress]'"
            ) from None
        options: dict[str, Any] = {
            "total": total,
            "unit": "batch",
            "mininterval": 0,
            "miniters": 1,
            "dynamic_ncols": True,
        }
        if jupyter:
            try:
                import ipywidgets  # noqa: F401
                from tqdm.notebook import tqdm as notebook_tqdm

                bar = functools.partial(notebook_tqdm, display=False, **options)
                return _NotebookStreamProgress(bar, total)
            except ImportError:
                pass
        from tqdm import tqdm as text_tqdm

        return cls(functools.partial(text_tqdm, file=sys.stderr, disable=False, **options))

    def start(self) -> None:
        self.bar = self.open_bar()
        self.started = time.time()

    def rows(self, n: int) -> None:
        self.n_rows += n

    def __call__(self, event: Event) -> None:
        if not event[1].startswith("source#"):
            return  # a stage's piece: the bar counts source batches
        self.counts[event[0]] += 1
        if event[3] >= self.next_draw:
            self.draw(event[3])

    def text(self, now: float) -> str:
        c = self.counts
        parts = [f"done {c[EventKind.DONE]}", f"failed {c[EventKind.FAILED]}"]
        if c[EventKind.CANCELLED]:
            parts.append(f"cancelled {c[EventKind.CANCELLED]}")
        spent = now - self.started
        if spent > 0:
            parts.append(f"{self.n_rows / spent:,.0f} rows/s")
        return " · ".join(parts)

    def draw(self, now: float) -> None:
        self.next_draw = now + REDRAW_EVERY
        bar = self.bar
        if bar is None:
            return
        c = self.counts
        settled = c[EventKind.DONE] + c[EventKind.FAILED] + c[EventKind.CANCELLED]
        bar.set_postfix_str(self.text(now), refresh=False)
        if settled > self.shown:
            bar.update(settled - self.shown)
            self.shown = settled
        else:
            bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.draw(time.time())
            self.bar.close()
            self.bar = None


class _NotebookStreamProgress(StreamProgress):
    """A stream's bar in Jupyter: tqdm's widget, shown through a display handle that is
    updated when it closes (so a saved notebook's text reads the final counts, not the
    opening ``0/12``), ending ``danger`` when a batch failed or was cancelled. Without
    ``max_batches`` its ``max`` follows the source batches read so far, so it fills as
    they settle instead of showing tqdm's indeterminate bar."""

    def __init__(self, open_bar: Callable[[], Any], total: int | None) -> None:
        super().__init__(open_bar)
        self.total = total
        self.handle: Any = None  # IPython's DisplayHandle of the widget
        self.widget_total = 0

    def start(self) -> None:
        import IPython.display

        show: Callable[..., Any] = IPython.display.display  # IPython's is untyped
        super().start()
        self.handle = show(self.bar.container, display_id=True)

    def draw(self, now: float) -> None:
        bar = self.bar
        if self.total is None and bar is not None:
            c = self.counts
            seen = max(c[_QUEUED], c[EventKind.DONE] + c[EventKind.FAILED] + c[EventKind.CANCELLED])
            if seen != self.widget_total:  # before the count moves: the widget clamps
                widget = bar.container.children[1]
                widget.max = max(seen, 1)
                if widget.bar_style == "info":  # tqdm's "no total" look
                    widget.bar_style = ""
                bar.total = seen
                self.widget_total = seen
        super().draw(now)

    def close(self) -> None:
        bar = self.bar
        if bar is None:
            return
        self.draw(time.time())
        c = self.counts
        if c[EventKind.FAILED] or c[EventKind.CANCELLED]:
            bar.disp(bar_style="danger", check_delay=False)  # tqdm keeps it past close
        bar.close()
        self.bar = None
        if self.handle is not None:
            self.handle.update(bar.container)
