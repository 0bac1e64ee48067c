"""``run_sync``: a run for scripts, on an event loop of its own, stopped by signals.

``run_sync`` builds the run as :func:`asyncgraph.run` does, then runs it on a new loop
(uvloop when installed: this is the only module that imports it): in this thread, or,
when this thread already runs a loop (a Jupyter cell, a coroutine under ``asyncio.run``),
in a helper thread while this one blocks. While it runs, SIGINT and SIGTERM (each only
if the program left it as Python has it) cancel the run with a reason the runner records
(``_options.STOPPED_BY``), and ``run_sync`` raises KeyboardInterrupt or
:class:`Terminated` once the run has cleaned up. Closing the loop is bounded by the
run's ``cancel_grace``, so a task the run abandoned cannot hold the program.

State it keeps (``_Signals``, one per ``run_sync`` call)
    ``signum``    the signal that asked the run to stop (SIGTERM wins over SIGINT);
    ``loop``, ``task``  the run's loop and main task, once it runs (the handler cancels it);
    ``previous``  the handlers it replaced, put back when the run is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from ._exceptions import Terminated
from ._graph import G, check_graph
from ._lifetime import start
from ._options import CANCEL_GRACE, STOPPED_BY, OnEvent, Progress, RunOptions

if TYPE_CHECKING:
    from ._executors.base import Backend
    from ._store import Store

__all__ = ["run_sync"]


def run_sync(
    graph: G,
    *,
    max_io: int | None = None,
    cpu_workers: int | None = None,
    limits: Mapping[str, int] | None = None,
    fail_fast: bool = False,
    deadline: float | None = None,
    store: str | os.PathLike[str] | Store | None = None,
    progress: Progress = False,
    on_event: OnEvent | None = None,
    backend: Backend | None = None,
    cancel_grace: float = CANCEL_GRACE,
) -> G:
    """:func:`run` for scripts: runs on a new event loop (uvloop when installed).

    Inside a running loop (a Jupyter cell, a coroutine under ``asyncio.run``) it runs on
    its own loop in a helper thread and blocks until done. Ctrl-C cancels the run,
    records running tasks as cancelled, stops the workers and raises KeyboardInterrupt;
    SIGTERM does the same and raises :class:`Terminated` (a ``SystemExit`` with code
    143). Each signal is handled so only while the run runs, in the main thread, and
    only if the program left it to Python's default.
    """
    check_graph(graph)
    options = RunOptions(
        max_io=max_io,
        cpu_workers=cpu_workers,
        limits=limits,
        fail_fast=fail_fast,
        deadline=deadline,
        cancel_grace=cancel_grace,
        store=store,
        progress=progress,
        on_event=on_event,
        backend=backend,
    )
    run = start(graph, options)  # built here: a bad graph is reported from this thread
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_a_loop = False
    else:
        in_a_loop = True
    # Outside the except block, so the run's own errors carry no "no running event
    # loop" context in their tracebacks.
    if in_a_loop:
        return _run_in_helper_thread(run, options.cancel_grace)
    signals = _Signals()
    signals.install()
    try:
        return _run_on_new_loop(run, options.cancel_grace, signals)
    finally:
        signals.restore()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _is_asyncio_sigint_handler(handler: Any) -> bool:
    """asyncio.Runner's own (``asyncio.run``): it only cancels the main task, which a
    ``run_sync`` in helper-thread mode blocks, so Ctrl-C would wait for the run's end."""
    return isinstance(handler, functools.partial) and getattr(
        handler.func, "__func__", None
    ) is getattr(asyncio.Runner, "_on_sigint", object())


def _left_as_python_has_it(signum: int, handler: Any) -> bool:
    if signum == signal.SIGINT:
        return handler is signal.default_int_handler or _is_asyncio_sigint_handler(handler)
    return bool(handler == signal.SIG_DFL)


class _Signals:
    """SIGINT and SIGTERM while a ``run_sync`` runs: each asks the run to stop.

    Installed in the main thread only (where Python runs signal handlers), and each only
    if the program left it as Python has it: SIGINT raising KeyboardInterrupt (or
    ``asyncio.run``'s handler, see ``_is_asyncio_sigint_handler``), SIGTERM ending the
    process. A program that set its own handler keeps it. ``await ag.run()`` installs
    nothing: the loop and its signals are the application's.

    The handler cancels the run's main task on its loop (``call_soon_threadsafe``: the
    loop may run in the helper thread); the run cleans up as for any cancellation, and
    ``run_sync`` raises KeyboardInterrupt or :class:`Terminated` afterwards. No lock:
    the handler writes ``signum`` and then reads ``task``; ``attach`` (on the loop's
    thread) writes ``task`` and then reads ``signum``, so one of them sees the other.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Future[Any] | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                if _left_as_python_has_it(signum, signal.getsignal(signum)):
                    self.previous[signum] = signal.signal(signum, self.handle)
            except ValueError:  # an embedded interpreter without signals (gh-91880)
                continue

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            if signal.getsignal(signum) == self.handle:  # not replaced meanwhile
                signal.signal(signum, handler)
        self.previous.clear()

    def attach(self, loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
        """The run's main task (called on its loop's thread, before the loop runs)."""
        self.loop = loop
        self.task = task
        if self.signum is not None:  # a signal came before the run started
            task.cancel(self.why())

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum != signal.SIGTERM:  # SIGTERM wins: the supervisor's word
            self.signum = signum
        self.request_stop()

    def request_stop(self) -> None:
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to stop
                loop.call_soon_threadsafe(task.cancel, self.why())

    def why(self) -> str | None:
        """The cancellation's message: the run records it as the reason."""
        return None if self.signum is None else STOPPED_BY.get(self.signum)

    def exception(self) -> BaseException | None:
        """What run_sync raises after a signal stopped it (or None)."""
        if self.signum == signal.SIGTERM:
            return Terminated(signal.SIGTERM)
        if self.signum is not None:
            return KeyboardInterrupt()
        return None


def _run_on_new_loop(run: Coroutine[Any, Any, G], grace: float, signals: _Signals) -> G:
    """``asyncio.Runner(...).run(run)``, with signals that stop the run (see _Signals)
    and a close that cannot hang (see _shut_down)."""
    loop = _loop_factory()()
    result: G | None = None
    error: BaseException | None = None
    task: asyncio.Task[G] | None = None
    try:
        task = loop.create_task(run)
        signals.attach(loop, task)
        try:
            result = loop.run_until_complete(task)
        except asyncio.CancelledError as exc:
            if signals.signum is None:
                raise
            error = exc
        except BaseException as exc:
            if signals.signum is None:
                raise
            error = exc  # it ended by itself as the signal came: the signal wins
    finally:
        try:
            _shut_down(loop, grace, task)
        finally:
            loop.close()
    stopped = signals.exception()
    if stopped is not None:
        # A signal asked the run to stop: whatever it returned or raised meanwhile,
        # the program is told it was interrupted, after the cleanup.
        if isinstance(error, asyncio.CancelledError):
            error = None  # the cancellation is how the signal stopped it: no news
        raise stopped from error
    assert result is not None
    return result


def _shut_down(
    loop: asyncio.AbstractEventLoop, grace: float, main: asyncio.Task[Any] | None
) -> None:
    """What ``asyncio.Runner.close`` does, each step but one bounded by ``grace`` seconds.

    Cancel the tasks left on the loop, then shut down the async generators and the
    default executor. The run's own task (``main``) is left only if a KeyboardInterrupt
    or SystemExit escaped the loop; it is waited for to its end, since its cleanup (the
    store's last commit) is bounded already. Any other task left here is one the run
    abandoned because it caught its cancellation (see ``_Run._stop_children``):
    asyncio.Runner would wait for it forever. After ``grace`` it is left pending and the
    loop is closed anyway.
    """
    timeout = None if math.isinf(grace) else grace
    left = asyncio.all_tasks(loop)
    for task in left:
        task.cancel()
    if main is not None and not main.done():
        loop.run_until_complete(asyncio.wait({main}))
    if left:
        loop.run_until_complete(asyncio.wait(left, timeout=timeout))
        for task in left:
            if task is main:  # its error is already on its way to the caller
                continue
            if task.done() and not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception during run_sync() shutdown",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
    for step in (loop.shutdown_asyncgens, loop.shutdown_default_executor):
        loop.run_until_complete(asyncio.wait({loop.create_task(step())}, timeout=timeout))


def _run_in_helper_thread(run: Coroutine[Any, Any, G], grace: float) -> G:
    # We are inside a running loop (a notebook cell calling run_sync, or a coroutine
    # under asyncio.run):
    #     ag.run_sync(g)   # <- asyncio.run() would raise "cannot be called from a
    #                      #    running event loop"
    # so run on a fresh loop in a helper thread and block this one until it ends. The
    # signals are caught here, in the main thread, and passed on to the helper's loop:
    # the calling loop cannot act on them while we block it (asyncio.run's own SIGINT
    # handler would only cancel a task that is stuck in this call).
    outcome: dict[str, Any] = {}
    signals = _Signals()

    def target() -> None:
        try:
            outcome["value"] = _run_on_new_loop(run, grace, signals)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="asyncgraph-run_sync", daemon=True)
    signals.install()
    try:
        thread.start()
        try:
            thread.join()
        except KeyboardInterrupt:
            # A KeyboardInterrupt that did not come through our handler (the program's
            # own SIGINT handler raised it, or we are not in the main thread): stop the
            # run there, wait for its cleanup, then re-raise.
            if signals.signum is None:
                signals.signum = signal.SIGINT
            signals.request_stop()
            thread.join()
            raise
    finally:
        signals.restore()
    if "error" in outcome:
        raise outcome["error"]
    value: G = outcome["value"]
    return value
