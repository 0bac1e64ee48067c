"""A store path in a directory that does not exist is refused by every reader, as a run
refuses it: ``load``, ``plan`` and ``plan_stream`` planned every task (or batch) "new"
for a typo in the path, and the run that followed failed only then."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import asyncgraph as ag


def _graph() -> ag.Graph:
    g = ag.Graph()
    g.add("a", lambda: 1)
    return g


@pytest.mark.parametrize(
    "call",
    [
        lambda g, p: ag.plan(g, p),
        lambda g, p: ag.load(g, p),
        lambda g, p: ag.run_sync(g, store=p),
        lambda g, p: ag.SQLiteStore(p),
    ],
    ids=["plan", "load", "run", "SQLiteStore"],
)
def test_a_store_in_a_missing_directory_is_refused(tmp_path: Path, call) -> None:
    path = tmp_path / "nodir" / "nightly.db"
    with pytest.raises(ag.StoreError) as info:
        call(_graph(), str(path))
    assert "the directory" in str(info.value) and "does not exist" in str(info.value)
    assert str(path.parent) in str(info.value)
    assert not path.parent.exists()  # nothing written


def test_plan_stream_refuses_a_store_in_a_missing_directory(tmp_path: Path) -> None:
    g = ag.Graph()

    @g.stream
    async def double(source: pd.DataFrame) -> pd.DataFrame:
        return source * 2

    path = tmp_path / "nodir" / "s.db"
    with pytest.raises(ag.StoreError, match="does not exist"):
        ag.plan_stream(g, store=str(path))
    assert not path.parent.exists()


def test_a_new_store_in_an_existing_directory_still_plans_every_task_new(tmp_path: Path) -> None:
    plan = ag.plan(_graph(), str(tmp_path / "first.db"))
    assert list(plan["reason"]) == ["new"]
    assert not (tmp_path / "first.db").exists()
