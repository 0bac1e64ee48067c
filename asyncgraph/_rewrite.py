"""Pure rewrites: each takes a Graph and returns a new one, never touching its input.

They are how a failed run is repaired: reset what must run again, mark what is known to be
done, or cut the graph down to what a target needs. A name that is not a task raises
:class:`~asyncgraph.UnknownTaskError` listing every unknown name, before anything changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ._graph import Graph, _results_dict
from ._state import FINISHED_BADLY, NO_RESULT, PENDING_RECORD, State, TaskRecord

__all__ = ["mark_done", "mark_done_except", "reset", "reset_failed", "subgraph"]


def reset_failed(graph: Graph) -> Graph:
    """Failed, skipped and cancelled tasks, and all their descendants, back to pending."""
    _check_graph(graph, "reset_failed")
    bad = [n for n, r in graph.records.items() if r.status in FINISHED_BADLY]
    return _to_pending(graph, set(bad) | graph.descendants(bad))


def reset(graph: Graph, names: Iterable[str] | str) -> Graph:
    """``names`` and all their descendants back to pending, whatever their state."""
    start = _check_graph(graph, "reset")._check_names(names, "reset")
    return _to_pending(graph, set(start) | graph.descendants(start))


def mark_done(
    graph: Graph, names: Iterable[str] | str, results: Mapping[str, Any] | None = None
) -> Graph:
    """Mark ``names`` done, with ``results[name]`` as their result.

    A task without a given result keeps the one it has if it is done already (it ran, or
    was loaded done from a store); any other gets no result at all (``NO_RESULT``), and
    a task that depends on it then fails with :class:`~asyncgraph.MissingResultError`
    naming both, instead of being handed ``None``. To pass ``None`` on purpose, give it:
    ``results={name: None}``. Descendants that were skipped because of these tasks go
    back to pending, so the next run runs them; a run skips them again if another of
    their ancestors is still failed.
    """
    marked = _check_graph(graph, "mark_done")._check_names(names, "mark_done")
    given = _results_dict(results, "mark_done")
    stray = [n for n in given if n not in marked]
    if stray:
        graph._check_names(stray, "mark_done results")  # unknown names first
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
    for n in graph.descendants(marked):
        if records[n].status in (State.SKIPPED, State.CANCELLED):
            records[n] = PENDING_RECORD
    return graph._derive(records)


def mark_done_except(graph: Graph, names: Iterable[str] | str) -> Graph:
    """Mark every task done except ``names``, which go back to pending.

    Tasks that are already done keep their results; the others are done without a
    result (``NO_RESULT``), so a task of ``names`` below one of them fails with
    :class:`~asyncgraph.MissingResultError` (use :func:`mark_done` with ``results`` to
    give them one). This runs exactly ``names`` next time, as taskmap's
    ``mark_as_done_except`` does.
    """
    keep = set(_check_graph(graph, "mark_done_except")._check_names(names, "mark_done_except"))
    records = {}
    for n, r in graph.records.items():
        if n in keep:
            records[n] = PENDING_RECORD
        elif r.status is State.DONE:
            records[n] = r
        else:
            records[n] = TaskRecord(status=State.DONE, result=NO_RESULT)
    return graph._derive(records)


def subgraph(graph: Graph, targets: Iterable[str] | str) -> Graph:
    """The ``targets`` and all their ancestors, with their current states."""
    start = _check_graph(graph, "subgraph")._check_names(targets, "subgraph")
    return graph._subset(set(start) | graph.ancestors(start))


def _check_graph(graph: Graph, where: str) -> Graph:
    if not isinstance(graph, Graph):
        raise TypeError(f"{where}() needs an asyncgraph.Graph, not {type(graph).__name__}")
    return graph


def _to_pending(graph: Graph, names: set[str]) -> Graph:
    records = dict(graph.records)
    for n in names:
        records[n] = PENDING_RECORD
    return graph._derive(records)
