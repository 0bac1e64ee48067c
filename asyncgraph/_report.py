"""Reports on a Graph: the status table. The only module that imports pandas."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from ._graph import Graph

__all__ = ["to_frame"]

COLUMNS = ["name", "kind", "status", "attempts", "started", "finished", "duration_s", "error"]


def _error_text(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    return f"{type(exc).__name__}: {exc}"


def to_frame(graph: Graph) -> pd.DataFrame:
    """One row per task, in definition order.

    Columns: ``name``, ``kind`` ("io"/"cpu"), ``status`` (the State's value), ``attempts``
    (int), ``started`` and ``finished`` (UTC timestamps, NaT if never), ``duration_s``
    (float seconds, NaN if not finished) and ``error`` ("Type: message"; missing, shown
    as NaN/None depending on the pandas version, when the task has no error).
    """
    tasks = graph.tasks
    rows = [
        (
            name,
            tasks[name].kind.value,
            rec.status.value,
            rec.attempts,
            rec.started,
            rec.finished,
            rec.duration,
            _error_text(rec.error),
        )
        for name, rec in graph.records.items()
    ]
    frame = pd.DataFrame.from_records(rows, columns=COLUMNS)
    for col in ("started", "finished"):
        frame[col] = pd.to_datetime(frame[col], unit="s", utc=True)
    frame["duration_s"] = frame["duration_s"].astype("float64")
    frame["attempts"] = frame["attempts"].astype("int64")
    return frame
