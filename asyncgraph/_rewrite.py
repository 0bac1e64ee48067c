"""Pure rewrites: each takes a graph and returns a new one, never touching its input.

They are how a failed run is repaired: reset what must run again, mark what is known to be
done, or cut the graph down to what a target needs. A name that is not a task raises
:class:`~asyncgraph.UnknownTaskError` listing every unknown name, before anything changes.

The new graph is of the input's class (``_derive``/``_subset`` keep ``type(graph)``), so
``ag.reset(g, ...)`` of an :class:`asyncgraph.Graph` is one too; they share its Dag.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from ._exceptions import UnknownTaskError
from ._fan import family_of
from ._graph import BaseGraph, check_graph
from ._state import FINISHED_BADLY, NO_RESULT, PENDING_RECORD, State, TaskRecord
from ._task import Task

__all__ = ["mark_done", "mark_done_except", "reset", "reset_failed", "results_dict", "subgraph"]

G = TypeVar("G", bound=BaseGraph)


def reset_failed(graph: G) -> G:
    """Failed, skipped and cancelled tasks, and all their descendants, back to pending."""
    _check_graph(graph, "reset_failed")
    bad = [n for n, r in graph._record_copy().items() if r.status in FINISHED_BADLY]
    return _to_pending(graph, set(bad) | graph.descendants(bad))


def reset(graph: G, names: Iterable[str | Task] | str | Task) -> G:
    """``names`` and all their descendants back to pending, whatever their state.

    A mapped task's name resets its whole family (every element); an element's name
    (``score[c]``) resets that element, what depends on it element-wise and the
    family's reducers, never a sibling.
    """
    start = _names(_check_graph(graph, "reset"), names, "reset")
    families = graph._dag.families()
    if families:
        start = [*start, *(m for n in start for m in families.get(n, ()))]
    return _to_pending(graph, set(start) | graph.descendants(start))


def mark_done(
    graph: G, names: Iterable[str | Task] | str | Task, results: Mapping[str, Any] | None = None
) -> G:
    """Mark ``names`` done, with ``results[name]`` as their result.

    A task without a given result keeps the one it has if it is done already (it ran, or
    was loaded done from a store); any other gets no result at all (``NO_RESULT``), and
    a task that depends on it then fails with :class:`~asyncgraph.MissingResultError`
    naming both, instead of being handed ``None``. To pass ``None`` on purpose, give it:
    ``results={name: None}``. Descendants that were skipped because of these tasks go
    back to pending, so the next run runs them; a run skips them again if another of
    their ancestors is still failed.
    """
    marked = _names(_check_graph(graph, "mark_done"), names, "mark_done")
    given = results_dict(results, "mark_done")
    stray = [n for n in given if n not in marked]
    if stray:
        _names(graph, stray, "mark_done results")  # unknown names first
        raise ValueError(
            f"mark_done: results given for {sorted(stray)}, which are not among the names "
            "being marked done; add them to names"
        )
    records = dict(graph.records)
    for n in marked:
        if n in given:
            result = given[n]
        elif records[n].status is State.DONE:
            result = records[n].result
        else:
            result = NO_RESULT
        records[n] = TaskRecord(status=State.DONE, result=result)
    families = graph._dag.families()
    for n in graph.descendants(marked):
        rec = records[n]
        if rec.status in (State.SKIPPED, State.CANCELLED) or (
            # a family failed only through its elements: it is collected again next run
            n in families and rec.status is State.FAILED and rec.error is None
        ):
            records[n] = PENDING_RECORD
    return graph._derive(records)


def mark_done_except(graph: G, names: Iterable[str | Task] | str | Task) -> G:
    """Mark every task done except ``names``, which go back to pending.

    Tasks that are already done keep their results; the others are done without a
    result (``NO_RESULT``), so a task of ``names`` below one of them fails with
    :class:`~asyncgraph.MissingResultError` (use :func:`mark_done` with ``results`` to
    give them one). This runs exactly ``names`` next time, as taskmap's
    ``mark_as_done_except`` does.
    """
    checked = _check_graph(graph, "mark_done_except")
    keep = set(_names(checked, names, "mark_done_except"))
    records = {}
    for n, r in graph.records.items():
        if n in keep:
            records[n] = PENDING_RECORD
        elif r.status is State.DONE:
            records[n] = r
        else:
            records[n] = TaskRecord(status=State.DONE, result=NO_RESULT)
    return graph._derive(records)


def subgraph(graph: G, targets: Iterable[str | Task] | str | Task) -> G:
    """The ``targets`` and all their ancestors, with their current states.

    A mapped task's ancestors include its elements; an element without its mapped task
    (``subgraph(g, "score[c]")``) keeps its parent and other dependencies and runs as a
    task of its own, on the item it had.
    """
    start = _names(_check_graph(graph, "subgraph"), targets, "subgraph")
    return graph._subset(set(start) | graph._dag.ancestors(start))


def _names(graph: BaseGraph, names: Iterable[str | Task] | str | Task, where: str) -> list[str]:
    """``graph._dag.check_names``, whose UnknownTaskError says, for a name of an element
    of a mapped task that has no elements in this graph, where to find them."""
    try:
        return graph._dag.check_names(names, where)
    except UnknownTaskError as exc:
        tasks = graph._dag.tasks
        families = graph._dag.families()
        pending = sorted(
            {
                split[0]
                for n in exc.names
                if (split := family_of(n)) is not None
                and (t := tasks.get(split[0])) is not None
                and t.over is not None
                and split[0] not in families
            }
        )
        if pending:
            which = ", ".join(repr(t) for t in pending)
            exc.args = (
                f"{exc.args[0]}; {which} maps over its parent's result and has no elements "
                "in this graph yet: they exist once its family has expanded, in the graph "
                "a run returns or in ag.load(graph, store)",
            )
        raise


def _check_graph(graph: G, where: str) -> G:
    check_graph(graph, where)
    return graph


def _to_pending(graph: G, names: set[str]) -> G:
    records = graph._record_copy()  # a dict: graph.records is a view, a call per item
    for n in names:
        records[n] = PENDING_RECORD
    return graph._derive(records)


def results_dict(results: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """``results`` as a dict, or TypeError naming ``where`` (also for ``create_graph``)."""
    if results is None:
        return {}
    if not isinstance(results, Mapping):
        raise TypeError(
            f"{where}: results must be a dict of task name -> result, not {type(results).__name__}"
        )
    return dict(results)
