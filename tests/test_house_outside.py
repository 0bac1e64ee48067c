"""What a check of the house from outside found: errors that say what is wrong.

A store written to the older, shorter protocol, a store class passed for an instance,
a graph class or a taskmap graph passed to ``run_sync``, a scheduler prepared with a
partial or untyped status: each gets an error that names what to do.
"""

from __future__ import annotations

from typing import Any

import pytest

import asyncgraph as ag
import asyncgraph.compat.taskmap as taskmap
from asyncgraph._scheduler import Scheduler
from asyncgraph._task import make_task


class ShortStore:
    """The eight methods an older protocol asked for, and no more."""

    def tasks(self) -> dict[str, Any]:
        return {}

    def runs(self) -> list[Any]:
        return []

    def load_result(self, result_id: int, task: str) -> Any:
        raise KeyError(task)

    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def begin_run(self) -> int:
        return 1

    def write(self, run_id: int, rows: Any) -> None: ...

    def end_run(self, run_id: int, status: str, counts: Any) -> None: ...


def graph() -> ag.Graph:
    g = ag.Graph()
    g.add("a", lambda: 1)
    return g


def test_a_store_lacking_members_is_told_which() -> None:
    for call in (
        lambda: ag.run_sync(graph(), store=ShortStore()),  # type: ignore[arg-type]
        lambda: ag.history(ShortStore()),  # type: ignore[arg-type]
        lambda: ag.load(graph(), ShortStore()),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError) as info:
            call()
        text = str(info.value)
        assert "ShortStore is not a complete Store" in text
        assert "load_results, result_size_limit, close" in text
        assert "asyncgraph.Store" in text


def test_a_store_class_passed_for_an_instance_is_told_so(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match=r"not the class SQLiteStore itself: pass an instance"):
        ag.run_sync(graph(), store=ag.SQLiteStore)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"not the class SQLiteStore itself"):
        ag.history(ag.SQLiteStore)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_graph_class_or_a_taskmap_graph_is_told_what_to_pass() -> None:
    # run_sync and open_run say "run()" as they always have (tests pin it): they run it.
    with pytest.raises(TypeError, match=r"^run\(\) needs an asyncgraph.Graph, not the class"):
        ag.run_sync(ag.Graph)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^run\(\) needs an asyncgraph.Graph, not int$"):
        ag.open_run(3)  # type: ignore[arg-type]
    tm = taskmap.create_graph({"a": lambda: 1}, {"a": []})
    with pytest.raises(TypeError) as info:
        ag.run_sync(tm)  # type: ignore[arg-type]
    assert "not asyncgraph.compat.taskmap.Graph" in str(info.value)
    assert "taskmap's run functions" in str(info.value)


def test_a_scheduler_prepared_with_a_partial_or_untyped_status_says_so() -> None:
    tasks = {n: make_task(n, lambda: None) for n in ("a", "b")}
    with pytest.raises(ValueError, match=r"status of every task.*missing \['b'\]"):
        Scheduler(tasks, ["a", "b"]).prepare({"a": ag.State.PENDING})
    with pytest.raises(ValueError, match=r"status of 'a' must be an asyncgraph.State, not str"):
        Scheduler(tasks, ["a", "b"]).prepare({"a": "pending", "b": ag.State.PENDING})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"unknown \['c'\]"):
        Scheduler(tasks, ["a", "b"]).prepare(
            {"a": ag.State.PENDING, "b": ag.State.PENDING, "c": ag.State.PENDING}
        )


def test_every_engine_and_rewrite_says_the_same_of_a_graph_class(tmp_path: Any) -> None:
    db = tmp_path / "s.db"
    calls = {
        "load": lambda: ag.load(ag.Graph, db),  # type: ignore[arg-type]
        "plan": lambda: ag.plan(ag.Graph, db),  # type: ignore[arg-type]
        "reset": lambda: ag.reset(ag.Graph, "a"),  # type: ignore[arg-type]
        "reset_failed": lambda: ag.reset_failed(ag.Graph),  # type: ignore[arg-type]
    }
    for name, call in calls.items():
        pattern = rf"^{name}\(\) needs an asyncgraph.Graph, not the class"
        with pytest.raises(TypeError, match=pattern):
            call()
    assert not db.exists()
