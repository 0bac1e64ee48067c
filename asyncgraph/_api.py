"""The public Graph: the value of ``_graph`` with its verbs, and ``create_graph``.

:class:`Graph` adds to :class:`~asyncgraph._graph.BaseGraph` what *uses* a graph: running
it, the five rewrites, the tables and the pictures, as httpx's ``Client`` adds ``send`` to
``BaseClient``. Each verb is one call into the module that owns it: the rewrites at
import time, the runner when a run starts, the reports and pictures (pandas, matplotlib)
only when a verb needs them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._exceptions import InvalidTaskError, UnknownTaskError
from ._graph import BaseGraph
from ._lifetime import run
from ._rewrite import mark_done, mark_done_except, reset, reset_failed, results_dict, subgraph
from ._state import NO_RESULT, PENDING_RECORD, State, TaskRecord
from ._sync import run_sync
from ._task import Kind, Task, fast_task, make_task

if TYPE_CHECKING:
    import pandas as pd

    from ._executors.base import Backend
    from ._options import OnEvent, Progress
    from ._pictures import SVG, MermaidText
    from ._store.protocol import Store
    from ._summary import Summary

__all__ = ["Graph", "create_graph"]

F = Callable[..., Any]


class Graph(BaseGraph):
    """A dependency map of functions and coroutines, with each task's state.

    Define tasks with the :meth:`task` decorator or :meth:`add`; run with
    :func:`asyncgraph.run` (or :meth:`run`), which returns a new Graph carrying the
    results, errors and timings. ``Graph(name="nightly")`` names it: the name shows in
    its repr and HTML table, on the progress bar, and in the store's history.
    """

    __slots__ = ()

    # -- rewrites (pure; see asyncgraph._rewrite) ---------------------------------------

    def reset_failed(self) -> Graph:
        """``asyncgraph.reset_failed(graph)``: failed, skipped, cancelled tasks back to pending."""
        return reset_failed(self)

    def reset(self, names: Iterable[str | Task] | str | Task) -> Graph:
        """``asyncgraph.reset(graph, names)``: these tasks and their descendants back to pending."""
        return reset(self, names)

    def mark_done(
        self, names: Iterable[str | Task] | str | Task, results: Mapping[str, Any] | None = None
    ) -> Graph:
        """``asyncgraph.mark_done(graph, names, results)``: these tasks done, with these results."""
        return mark_done(self, names, results)

    def mark_done_except(self, names: Iterable[str | Task] | str | Task) -> Graph:
        """``asyncgraph.mark_done_except(graph, names)``: every task done except ``names``."""
        return mark_done_except(self, names)

    def subgraph(self, targets: Iterable[str | Task] | str | Task) -> Graph:
        """``asyncgraph.subgraph(graph, targets)``: only ``targets`` and their ancestors."""
        return subgraph(self, targets)

    # -- running ----------------------------------------------------------------------

    async def run(
        self,
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
    ) -> Graph:
        """``await graph.run(...)`` is ``await asyncgraph.run(graph, ...)``."""
        return await run(
            self,
            max_io=max_io,
            cpu_workers=cpu_workers,
            limits=limits,
            fail_fast=fail_fast,
            deadline=deadline,
            store=store,
            progress=progress,
            on_event=on_event,
            backend=backend,
        )

    def run_sync(
        self,
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
    ) -> Graph:
        """``graph.run_sync(...)`` is ``asyncgraph.run_sync(graph, ...)``."""
        return run_sync(
            self,
            max_io=max_io,
            cpu_workers=cpu_workers,
            limits=limits,
            fail_fast=fail_fast,
            deadline=deadline,
            store=store,
            progress=progress,
            on_event=on_event,
            backend=backend,
        )

    # -- reporting ----------------------------------------------------------------------

    def to_frame(self) -> pd.DataFrame:
        """A :class:`pandas.DataFrame` with one row per task (see ``docs/api.md``)."""
        from ._report import to_frame

        return to_frame(self)

    # Observing (see docs/observing.md); each lives in _report or _pictures.

    def summary(self) -> Summary:
        """Counts by status and kind, busy and wall time, and the critical path."""
        from ._report import summary

        return summary(self)

    def timeline(self) -> pd.DataFrame:
        """One row per task that ran: its interval and a lane (see ``docs/observing.md``)."""
        from ._report import timeline

        return timeline(self)

    def plot_timeline(self, ax: Any = None) -> Any:
        """A Gantt chart of :meth:`timeline` (needs matplotlib: the ``plot`` extra)."""
        from ._pictures import plot_timeline

        return plot_timeline(self, ax)

    def to_mermaid(self) -> str:
        """Mermaid flowchart text, tasks coloured by status (IO rounded, CPU boxes)."""
        from ._pictures import to_mermaid

        return to_mermaid(self)

    def to_dot(self) -> str:
        """Graphviz DOT text, tasks coloured by status (IO ellipses, CPU boxes)."""
        from ._pictures import to_dot

        return to_dot(self)

    def visualize(self) -> SVG | MermaidText:
        """An SVG picture via graphviz's ``dot``; without it, Mermaid text and a warning."""
        from ._pictures import visualize

        return visualize(self)

    def _repr_html_(self) -> str:
        from ._pictures import to_html

        return to_html(self)


def create_graph(
    funcs: Mapping[str, F],
    dependencies: Mapping[str, Iterable[str]],
    io_bound: Iterable[str] | None = None,
    done: Iterable[str] | None = None,
    results: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
) -> Graph:
    """Build a Graph in taskmap's dict style (``name`` names it, as ``Graph(name=...)``).

    ``dependencies[name]`` lists the tasks whose results are passed positionally, in that
    order; a ``None`` result is not passed. Tasks in ``io_bound`` are IO tasks (coroutines
    on the loop, plain functions in threads); the others run in the process pool.
    ``done`` tasks do not run; ``results`` gives their results to their dependents. A
    done task left out of ``results`` has no result (``NO_RESULT``): a task that depends
    on it fails with :class:`MissingResultError`; give ``results={name: None}`` to pass
    nothing on purpose (taskmap's rule). Everything is checked here, before anything runs.
    """
    if not isinstance(funcs, Mapping):
        raise TypeError(f"funcs must be a dict of name -> function, not {type(funcs).__name__}")
    if not isinstance(dependencies, Mapping):
        raise TypeError(
            f"dependencies must be a dict of name -> list of names, "
            f"not {type(dependencies).__name__}"
        )
    io = _name_set(io_bound, "io_bound")
    done_set = _name_set(done, "done")
    given = results_dict(results, "create_graph")
    unknown = (set(dependencies) | io | done_set | set(given)) - set(funcs)
    if unknown:
        raise UnknownTaskError(
            sorted(unknown), where="create_graph: names without a function in funcs"
        )
    g = Graph(name=name)
    for name, fn in funcs.items():  # the graph's name was used above
        deps = dependencies.get(name, ())
        if type(deps) is not list:
            if isinstance(deps, str) or not isinstance(deps, Iterable):
                raise InvalidTaskError(
                    name,
                    f"dependencies[{name!r}] must be a list or set of task names, "
                    f"not {type(deps).__name__} {deps!r}",
                )
            deps = sorted(deps) if isinstance(deps, (set, frozenset)) else list(deps)
        kind = Kind.IO if name in io else Kind.CPU
        task = fast_task(name, fn, deps, kind, 0, 0.1, None, 0, (), True) or make_task(
            name, fn, deps=deps, kind=kind, skip_none=True
        )
        record = (
            TaskRecord(status=State.DONE, result=given.get(name, NO_RESULT))
            if name in done_set
            else PENDING_RECORD
        )
        g._insert(task, record)
    g.validate()
    return g


def _name_set(names: Iterable[str] | None, what: str) -> set[str]:
    if names is None:
        return set()
    if isinstance(names, str):
        raise TypeError(f"{what} must be a list of task names, not a single string {names!r}")
    return set(names)
