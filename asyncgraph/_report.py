"""Reports on a Graph: the status table, the summary, the timeline, the HTML table.

The only module that imports pandas (the HTML table does not need it, see ``_html``).
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._state import State
from ._summary import Summary

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._graph import BaseGraph

__all__ = ["Summary", "summary", "timeline", "to_frame"]

COLUMNS = ["name", "kind", "status", "attempts", "started", "finished", "duration_s", "error"]


def _error_text(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    return f"{type(exc).__name__}: {exc}"


def to_frame(graph: BaseGraph) -> pd.DataFrame:
    """One row per task, in definition order.

    Columns: ``name``, ``kind`` ("io"/"cpu"), ``status`` (the State's value), ``attempts``
    (int), ``started`` and ``finished`` (UTC timestamps, NaT if never), ``duration_s``
    (float seconds, NaN if not finished) and ``error`` ("Type: message", or NaN when the
    task has no error: pandas' own missing value for text, before a run as after, so
    ``frame.error.isna()`` and ``frame.error.notna()`` select the tasks without and with
    one; the column is pandas' text dtype: ``str`` from pandas 3, ``object`` before).

    A graph with a mapped task has one more column, ``family``: each element's row
    names its template (NaN on every other row, as ``error``: pandas' missing text, so
    ``frame.family.isna()`` selects the tasks that are not elements), and follows the
    template's row.
    """
    dag = graph._dag
    records = graph.records
    fans = bool(dag.fans)
    tasks = dag.tasks if fans else graph.tasks
    names: Iterable[str] = _family_order(graph) if fans else records
    rows = [
        (
            name,
            tasks[name].kind.value,
            (rec := records[name]).status.value,
            rec.attempts,
            rec.started,
            rec.finished,
            rec.duration,
            _error_text(rec.error),
            *((tasks[name].family,) if fans else ()),
        )
        for name in names
    ]
    frame = pd.DataFrame.from_records(rows, columns=[*COLUMNS, "family"] if fans else COLUMNS)
    if fans:
        frame["family"] = _text_column(frame["family"])
    for col in ("started", "finished"):
        frame[col] = pd.to_datetime(frame[col], unit="s", utc=True)
    frame["duration_s"] = frame["duration_s"].astype("float64")
    frame["attempts"] = frame["attempts"].astype("int64")
    frame["error"] = _text_column(frame["error"])
    return frame


def _family_order(graph: BaseGraph) -> list[str]:
    """The graph's tasks in order, each family's elements right after it."""
    dag = graph._dag
    tasks = dag.tasks
    records = graph.records
    families = dag.families()
    order: list[str] = []
    for name in records:
        if tasks[name].family is None:
            order.append(name)
            order.extend(m for m in families.get(name, ()) if m in records)
    return order


#: pandas' dtype for a text column: ``str`` (missing: NaN) from pandas 3, else object.
_TEXT: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object


def _text_column(column: pd.Series) -> pd.Series:
    """``column`` (text or None) with NaN for every missing value, in pandas' text dtype
    (an all-missing column would otherwise be object with None, or float)."""
    values = [math.nan if v is None else v for v in column.tolist()]
    out: pd.Series = pd.Series(values, index=column.index, dtype=_TEXT, name=column.name)
    return out


# -- summary ---------------------------------------------------------------------------


def summary(graph: BaseGraph) -> Summary:
    tasks = graph.tasks
    records = graph.records
    tally: dict[tuple[str, str], int] = {}
    busy = 0.0
    first: float | None = None
    last: float | None = None
    for name, rec in records.items():
        key = (rec.status.value, tasks[name].kind.value)
        tally[key] = tally.get(key, 0) + 1
        duration = rec.duration
        if duration is not None and tasks[name].over is None:  # a family is not busy
            busy += duration
        if rec.started is not None and (first is None or rec.started < first):
            first = rec.started
        if rec.finished is not None and (last is None or rec.finished > last):
            last = rec.finished
    counts = pd.DataFrame(
        [[tally.get((s.value, k), 0) for k in ("io", "cpu")] for s in State],
        index=pd.Index([s.value for s in State], name="status"),
        columns=["io", "cpu"],
        dtype="int64",
    )
    counts["total"] = counts["io"] + counts["cpu"]
    path_s, path = critical_path(graph)
    return Summary(
        tasks=len(records),
        counts=counts,
        busy_s=busy,
        wall_s=None if first is None or last is None else last - first,
        critical_path_s=path_s,
        critical_path=path,
    )


def critical_path(graph: BaseGraph) -> tuple[float, tuple[str, ...]]:
    """The longest duration-weighted chain of done tasks (ties: the first found in
    topological order, following dependencies in binding order)."""
    weights = {
        name: duration
        for name, rec in graph.records.items()
        if rec.status is State.DONE and (duration := rec.duration) is not None
    }
    if graph._dag.fans:  # a family's span is its elements': it links them, weighing 0
        tasks = graph.tasks
        for name in weights:
            if tasks[name].over is not None:
                weights[name] = 0.0
    if not weights:
        return 0.0, ()
    # Chains ending at each task, filled in topological order: max keeps the first of
    # equals, and each link is the first dependency (in binding order) of the longest.
    length, previous = graph._dag.longest_paths(weights)
    end = max(length, key=length.__getitem__)
    path = [end]
    while path[-1] in previous:
        path.append(previous[path[-1]])
    return length[end], tuple(reversed(path))


# -- timeline --------------------------------------------------------------------------

TIMELINE_COLUMNS = ["name", "kind", "status", "start", "finish", "duration_s", "lane"]


def timeline(graph: BaseGraph) -> pd.DataFrame:
    """One row per task that ran (has a start and a finish), ordered by start.

    ``lane`` (int64, from 0) puts each task on the lowest row free at its start, so
    tasks that ran at the same time are on different lanes and the number of lanes is
    the most tasks that ran at once. ``start``/``finish`` are UTC timestamps. A retried
    task spans its first attempt's start to its last attempt's end. A mapped task (a
    family) never runs: its elements are the rows.
    """
    tasks = graph.tasks
    spans = [
        (rec.started, i, rec.finished, name, rec.status.value)  # ties: definition order
        for i, (name, rec) in enumerate(graph.records.items())
        if rec.started is not None and rec.finished is not None and tasks[name].over is None
    ]
    spans.sort()
    free: list[int] = []  # lanes free now (a heap: the lowest first)
    busy: list[tuple[float, int]] = []  # (finish, lane) of tasks still running
    lanes = 0
    rows = []
    for start, _, finish, name, status in spans:
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, lanes = lanes, lanes + 1
        heapq.heappush(busy, (finish, lane))
        rows.append((name, tasks[name].kind.value, status, start, finish, finish - start, lane))
    frame = pd.DataFrame.from_records(rows, columns=TIMELINE_COLUMNS)
    for col in ("start", "finish"):
        frame[col] = pd.to_datetime(frame[col], unit="s", utc=True)
    frame["duration_s"] = frame["duration_s"].astype("float64")
    frame["lane"] = frame["lane"].astype("int64")
    return frame
