"""The Dag: the structure under every graph, shared by derived graphs, copied on write."""

from __future__ import annotations

import gc
import weakref

import pytest

import asyncgraph as ag
from asyncgraph._dag import Dag
from asyncgraph._fingerprint import binding_bytes


def task(name: str, *deps: str) -> ag.Task:
    return ag.Task(name=name, fn=print, kind=ag.Kind.IO, args=deps, deps=deps)


def diamond() -> Dag:
    r"""
        a
       / \
      b   c
       \ /
        d
    """
    return Dag([task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")])


def test_structure_of_a_diamond():
    dag = diamond()
    assert list(dag) == ["a", "b", "c", "d"] and len(dag) == 4 and "d" in dag
    assert dag.topological_order() == ("a", "b", "c", "d")
    assert dag.child_map() == {"a": ("b", "c"), "b": ("d",), "c": ("d",)}
    assert dag.children("d") == ()
    assert dag.descendants(["b"]) == {"d"}
    assert dag.ancestors(["d"]) == {"a", "b", "c"}
    assert dag.descendants([]) == set()


def test_topological_order_breaks_ties_by_definition_order():
    dag = Dag([task("z"), task("y", "x"), task("x"), task("w")])
    assert dag.topological_order() == ("z", "x", "y", "w")


def test_add_in_place_until_frozen_then_to_a_copy():
    dag = Dag([task("a")])
    assert dag.add(task("b", "a")) is dag  # nobody else sees it: in place
    assert dag.topological_order() == ("a", "b")
    assert dag.add(task("c", "b")) is dag
    assert dag.topological_order() == ("a", "b", "c")  # the cache was dropped
    assert not dag.frozen
    assert dag.freeze() is dag and dag.frozen
    other = dag.add(task("d", "c"))
    assert other is not dag and not other.frozen
    assert list(dag) == ["a", "b", "c"] and dag.topological_order() == ("a", "b", "c")
    assert list(other) == ["a", "b", "c", "d"]
    assert other.children("c") == ("d",) and dag.children("c") == ()


def test_a_duplicate_raises_before_anything_changes():
    dag = Dag([task("a")]).freeze()
    with pytest.raises(ag.DuplicateTaskError):
        dag.add(task("a"))
    assert list(dag) == ["a"]


def test_derived_graphs_share_one_dag_and_never_see_each_others_tasks():
    g = ag.Graph()
    g.add("a", lambda: 1)
    d1 = g._derive(g.records)
    d2 = ag.mark_done(g, "a", results={"a": 1})
    assert d1._dag is g._dag is d2._dag and g._dag.frozen
    g.add("b", lambda a: a)  # copies the shared Dag first
    d2.add("c", lambda: 3)  # and so does this one, into another copy
    assert list(g) == ["a", "b"] and list(d1) == ["a"] and list(d2) == ["a", "c"]
    assert "b" not in d1.tasks and "b" not in d1.records
    assert g.children("a") == ("b",) and d1.children("a") == ()


def test_a_tasks_view_follows_its_graph_past_a_copy():
    g = ag.Graph()
    g.add("a", lambda: 1)
    view = g.tasks
    g._derive(g.records)  # freezes the shared Dag
    g.add("b", lambda a: a)
    assert "b" in view and list(view) == ["a", "b"] and view["b"].deps == ("a",)
    with pytest.raises(ag.UnknownTaskError):
        view["c"]


def test_the_order_is_computed_once_for_every_derived_graph():
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a)
    order = g.topological_order()
    assert ag.reset(g, "a").topological_order() is order
    assert g._derive(g.records)._dag.child_map() is g._dag.child_map()


def test_a_subset_is_a_new_dag_in_definition_order():
    dag = diamond().freeze()
    sub = dag.subset(["c", "a"])
    assert list(sub) == ["a", "c"] and not sub.frozen
    assert sub.child_map() == {"a": ("c",)} and sub.topological_order() == ("a", "c")


def test_missing_dependency_and_cycle_errors():
    with pytest.raises(ag.MissingDependencyError) as missing:
        Dag([task("a", "nope"), task("b", "gone")]).topological_order()
    assert missing.value.task == "a" and missing.value.missing == ["nope"]
    with pytest.raises(ag.CycleError) as cycle:
        Dag([task("s"), task("a", "s", "c"), task("b", "a"), task("c", "b")]).topological_order()
    assert cycle.value.cycle == ["a", "c", "b", "a"]


def test_check_names():
    dag = diamond()
    assert dag.check_names("a", "here") == ["a"]
    assert dag.check_names(("a", "b"), "here") == ["a", "b"]
    with pytest.raises(ag.UnknownTaskError, match="here: unknown task name") as e:
        dag.check_names(["x", "a", "y"], "here")
    assert e.value.names == ["x", "y"]
    with pytest.raises(TypeError, match="here: task names are strings"):
        dag.check_names(["a", 1], "here")  # type: ignore[list-item]
    with pytest.raises(TypeError, match="here: expected a task name"):
        dag.check_names(3, "here")  # type: ignore[arg-type]


def test_longest_paths_upstream_and_downstream():
    dag = diamond()
    weights = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 1.0}
    length, previous = dag.longest_paths(weights)
    assert length == {"a": 1.0, "b": 6.0, "c": 3.0, "d": 7.0}
    assert previous == {"b": "a", "c": "a", "d": "b"}
    length, following = dag.longest_paths(weights, downstream=True)
    assert length == {"d": 1.0, "c": 3.0, "b": 6.0, "a": 7.0}
    assert following == {"a": "b", "b": "d", "c": "d"}


def test_longest_paths_break_at_unweighted_tasks_and_keep_the_first_of_ties():
    dag = diamond()
    length, previous = dag.longest_paths({"a": 1.0, "c": 1.0, "d": 1.0})
    assert length == {"a": 1.0, "c": 2.0, "d": 3.0}  # b is not on any chain
    assert previous == {"c": "a", "d": "c"}
    length, previous = dag.longest_paths({"b": 1.0, "c": 1.0, "d": 1.0})
    assert previous == {"d": "b"}  # b and c tie: the first dependency in binding order
    assert dag.longest_paths({})[0] == {}


def test_outside_caches_per_dag_freeze_it_and_go_with_it():
    dag = diamond()
    first = binding_bytes(dag)
    assert dag.frozen and binding_bytes(dag) is first
    assert dag.add(task("e")) is not dag  # cached on: a later add copies
    ref = weakref.ref(dag)
    del dag, first
    gc.collect()
    assert ref() is None  # the cache does not keep its Dag alive
