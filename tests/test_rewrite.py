"""Rewrites are pure: each returns a new Graph and never touches its input."""

from __future__ import annotations

import pytest
from conftest import statuses

import asyncgraph as ag


@pytest.fixture
def ran() -> ag.Graph:
    r"""
      a -> b -> c        d (fails) -> e -> f        g (cancelled)
    """
    graph = ag.Graph()
    graph.add("a", lambda: 1)
    graph.add("b", lambda a: a + 1, deps=["a"])
    graph.add("c", lambda b: b + 1, deps=["b"])
    graph.add("d", lambda: 1 / 0)
    graph.add("e", lambda d: d, deps=["d"])
    graph.add("f", lambda e: e, deps=["e"])
    graph.add("g", lambda: 0)
    out = ag.run_sync(graph)
    records = dict(out.records)
    records["g"] = ag.TaskRecord(status=ag.State.CANCELLED, error=ag.TaskCancelled("x"))
    return out._derive(records)


def test_reset_failed(ran):
    before = statuses(ran)
    new = ag.reset_failed(ran)
    assert statuses(new) == {
        "a": "done", "b": "done", "c": "done",
        "d": "pending", "e": "pending", "f": "pending", "g": "pending",
    }
    assert new.records["d"] == ag.TaskRecord()
    assert statuses(ran) == before  # untouched
    assert new.results == {"a": 1, "b": 2, "c": 3}
    assert statuses(ran.reset_failed()) == statuses(new)


def test_reset_names_and_descendants(ran):
    new = ag.reset(ran, ["b"])
    assert statuses(new)["b"] == "pending"
    assert statuses(new)["c"] == "pending"
    assert statuses(new)["a"] == "done"
    assert statuses(ag.reset(ran, "a")) | {} == {
        **statuses(ran), "a": "pending", "b": "pending", "c": "pending"}


def test_mark_done_with_results_reopens_skipped_descendants(ran):
    new = ag.mark_done(ran, "d", results={"d": 42})
    assert new.status["d"] is ag.State.DONE
    assert new.results["d"] == 42
    assert statuses(new)["e"] == "pending"  # was skipped because of d
    assert statuses(new)["f"] == "pending"
    out = ag.run_sync(new)
    assert out.results["f"] == 42


def test_mark_done_keeps_an_existing_result(ran):
    new = ran.mark_done(["a"])
    assert new.results["a"] == 1
    with pytest.raises(ValueError, match=r"results given for \['b'\]"):
        ag.mark_done(ran, ["a"], results={"b": 1})
    with pytest.raises(ag.UnknownTaskError, match="'zz'"):
        ag.mark_done(ran, ["a"], results={"zz": 1})


def test_mark_done_except(ran):
    new = ag.mark_done_except(ran, ["c", "f"])
    st = statuses(new)
    assert st["c"] == "pending"
    assert st["f"] == "pending"
    assert all(v == "done" for k, v in st.items() if k not in ("c", "f"))
    assert new.results["b"] == 2


def test_subgraph_keeps_targets_and_ancestors(ran):
    sub = ag.subgraph(ran, ["c"])
    assert list(sub) == ["a", "b", "c"]
    assert sub.results == {"a": 1, "b": 2, "c": 3}
    assert len(ran) == 7
    assert list(ran.subgraph("e")) == ["d", "e"]


@pytest.mark.parametrize("rewrite", [
    lambda g: ag.reset(g, ["a", "nope", "ghost"]),
    lambda g: ag.mark_done(g, ["a", "nope", "ghost"]),
    lambda g: ag.mark_done_except(g, ["nope", "ghost"]),
    lambda g: ag.subgraph(g, ["ghost", "nope"]),
])
def test_unknown_names_are_listed(ran, rewrite):
    before = statuses(ran)
    with pytest.raises(ag.UnknownTaskError) as info:
        rewrite(ran)
    assert info.value.names == ["ghost", "nope"]
    assert "'ghost', 'nope'" in str(info.value)
    assert statuses(ran) == before


@pytest.mark.parametrize("rewrite", ["reset", "mark_done", "mark_done_except", "subgraph"])
@pytest.mark.parametrize(
    ("names", "match"),
    [
        (3, "expected a task name or a list of task names, not int 3"),
        (None, "expected a task name or a list of task names, not NoneType None"),
        ([1, "zz"], "task names are strings, not 1"),
    ],
)
def test_names_of_the_wrong_type_are_refused_by_name(ran, rewrite, names, match):
    with pytest.raises(TypeError, match=f"^{rewrite}: {match}$"):
        getattr(ag, rewrite)(ran, names)


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda: ag.reset_failed({}),
        lambda: ag.reset({}, ["a"]),
        lambda: ag.mark_done({}, ["a"]),
        lambda: ag.mark_done_except({}, ["a"]),
        lambda: ag.subgraph({}, ["a"]),
    ],
)
def test_a_rewrite_needs_a_graph(rewrite):
    with pytest.raises(TypeError, match=r"^\w+\(\) needs an asyncgraph.Graph, not dict$"):
        rewrite()


def test_results_must_be_a_mapping(ran):
    with pytest.raises(TypeError, match="mark_done: results must be a dict of task name"):
        ag.mark_done(ran, ["a"], [1])
    with pytest.raises(TypeError, match="create_graph: results must be a dict of task name"):
        ag.create_graph({"a": lambda: 1}, {"a": []}, done=["a"], results=[1])


def test_added_task_on_a_derived_graph_does_not_leak_back(ran):
    new = ag.reset_failed(ran)
    new.add("extra", lambda: 1)
    assert "extra" not in ran
