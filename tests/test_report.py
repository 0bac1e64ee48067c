"""The status table."""

from __future__ import annotations

import pandas as pd

import asyncgraph as ag


def test_to_frame_columns_dtypes_and_rows():
    g = ag.Graph()

    @g.task
    async def a():
        return 1

    g.add("b", lambda a: a / 0, deps=["a"], retries=1, retry_delay=0)
    g.add("c", lambda b: b, deps=["b"])
    out = ag.run_sync(g)
    frame = out.to_frame()
    assert list(frame.columns) == [
        "name", "kind", "status", "attempts", "started", "finished", "duration_s", "error"]
    assert list(frame["name"]) == ["a", "b", "c"]
    assert list(frame["status"]) == ["done", "failed", "skipped"]
    assert list(frame["attempts"]) == [1, 2, 0]
    assert frame["attempts"].dtype == "int64"
    assert isinstance(frame["started"].dtype, pd.DatetimeTZDtype)
    assert frame["duration_s"].dtype == "float64"
    assert frame.loc[1, "error"] == "ZeroDivisionError: division by zero"
    assert pd.isna(frame.loc[0, "error"])
    assert pd.isna(frame.loc[2, "started"])
    assert frame.loc[0, "duration_s"] >= 0


def test_to_frame_of_an_empty_graph():
    frame = ag.Graph().to_frame()
    assert frame.empty
    assert "status" in frame.columns
