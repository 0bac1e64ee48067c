"""Defining graphs in the three styles, and every definition error, before anything runs."""

from __future__ import annotations

import functools
import itertools

import pytest

import asyncgraph as ag


def test_decorator_names_dependencies_by_parameter():
    g = ag.Graph()

    @g.task
    async def users():
        return [1, 2]

    @g.task(kind="cpu", retries=2)
    def scores(users, scale=10):  # a parameter with a default is not a dependency
        return [u * scale for u in users]

    assert g.dependencies("scores") == ("users",)
    t = g.tasks["scores"]
    assert t.kind is ag.Kind.CPU
    assert t.retries == 2
    assert t.kwargs == (("users", "users"),)
    assert g.tasks["users"].is_async
    assert scores([1]) == [10]  # the decorator returns the function unchanged


def test_explicit_add_with_list_and_dict_deps():
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda: 2)
    g.add("pos", lambda x, y: (x, y), deps=["b", "a"])
    g.add("kw", lambda *, left, right: (left, right), deps={"left": "a", "right": "b"})
    assert g.tasks["pos"].args == ("b", "a")
    assert g.tasks["kw"].kwargs == (("left", "a"), ("right", "b"))
    assert g.topological_order() == ("a", "b", "pos", "kw")


def test_decorator_name_option_and_lambda_needs_a_name():
    g = ag.Graph()
    g.task(name="renamed")(lambda: 1)
    assert "renamed" in g
    with pytest.raises(TypeError, match=r"name="):
        g.task(lambda: 1)


def test_create_graph_taskmap_style():
    async def fetch():
        return "x"

    g = ag.create_graph(
        {"fetch": fetch, "a": lambda: 1, "b": lambda x, y: x + y},
        {"fetch": [], "a": [], "b": ["a", "fetch"]},
        io_bound=["fetch"],
        done=["a"],
        results={"a": 5},
    )
    assert g.tasks["fetch"].kind is ag.Kind.IO
    assert g.tasks["b"].kind is ag.Kind.CPU
    assert g.tasks["b"].args == ("a", "fetch")
    assert g.tasks["b"].skip_none
    assert g.status["a"] is ag.State.DONE
    assert g.records["a"].result == 5


def test_create_graph_accepts_sets_and_checks_names():
    g = ag.create_graph({"a": lambda: 1, "b": lambda a: a}, {"b": {"a"}})
    assert g.dependencies("b") == ("a",)
    with pytest.raises(ag.UnknownTaskError) as info:
        ag.create_graph({"a": lambda: 1}, {"a": [], "ghost": []}, io_bound=["phantom"])
    assert info.value.names == ["ghost", "phantom"]
    assert "ghost" in str(info.value)
    assert "phantom" in str(info.value)


def test_create_graph_allows_fewer_parameters_when_results_may_be_none():
    # taskmap's rule: a None result is not passed, so b may take fewer arguments.
    g = ag.create_graph({"a": lambda: None, "b": lambda: 1}, {"b": ["a"]})
    assert g.dependencies("b") == ("a",)
    with pytest.raises(ag.SignatureError, match="'b'"):
        ag.create_graph({"a": lambda: 1, "b": lambda x, y: 1}, {"b": ["a"]})


def test_cycle_error_lists_the_cycle_in_order():
    g = ag.Graph()
    g.add("a", lambda c: c, deps=["c"])
    g.add("b", lambda a: a, deps=["a"])
    g.add("c", lambda b: b, deps=["b"])
    g.add("free", lambda: 1)
    with pytest.raises(ag.CycleError) as info:
        g.validate()
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}
    # each task depends on the next one in the list
    for task, dep in itertools.pairwise(cycle):
        assert dep in g.dependencies(task)
    assert " -> ".join(cycle) in str(info.value)


def test_self_dependency_is_a_cycle():
    g = ag.Graph()
    with pytest.raises(ag.CycleError) as info:
        g.add("a", lambda a: a, deps=["a"])
    assert info.value.cycle == ["a", "a"]
    with pytest.raises(ag.CycleError):
        ag.create_graph({"a": lambda a: a}, {"a": ["a"]})


def test_missing_dependency_names_task_and_dependency():
    g = ag.Graph()

    @g.task
    def b(a, ghost):
        return a

    g.add("a", lambda: 1)
    with pytest.raises(ag.MissingDependencyError) as info:
        g.validate()
    assert info.value.task == "b"
    assert info.value.missing == ["ghost"]
    assert "'ghost'" in str(info.value)
    assert "'b'" in str(info.value)


def test_create_graph_reports_missing_dependency_eagerly():
    with pytest.raises(ag.MissingDependencyError, match="'nope'"):
        ag.create_graph({"a": lambda x: x}, {"a": ["nope"]})


def test_duplicate_name():
    g = ag.Graph()
    g.add("a", lambda: 1)
    with pytest.raises(ag.DuplicateTaskError, match="'a'"):
        g.add("a", lambda: 2)
    assert len(g) == 1  # nothing half-added


def test_signature_mismatch_names_task_and_parameters():
    g = ag.Graph()
    g.add("a", lambda: 1)
    with pytest.raises(ag.SignatureError) as info:
        g.add("b", lambda x, y: x, deps=["a"])
    message = str(info.value)
    assert "'b'" in message
    assert "(x, y)" in message
    assert "1 positional" in message
    with pytest.raises(ag.SignatureError, match=r"signature \(x\).*keyword\(s\) z"):
        g.add("c", lambda x: x, deps={"z": "a"})
    with pytest.raises(ag.SignatureError, match="positional-only"):

        def posonly(a, /):
            return a

        g.add("d", posonly)
    assert list(g) == ["a"]


def test_partial_and_callable_objects_are_tasks():
    class Scale:
        def __call__(self, x):
            return x * 3

    class AsyncThing:
        async def __call__(self):
            return 1

    g = ag.Graph()
    g.add("x", functools.partial(lambda base, plus: base + plus, plus=1), deps=["one"])
    g.add("one", lambda: 1)
    g.add("s", Scale(), deps=["one"])
    g.add("aw", AsyncThing())
    assert g.tasks["aw"].is_async
    assert not g.tasks["s"].is_async
    out = g.run_sync()
    assert out.results == {"x": 2, "one": 1, "s": 3, "aw": 1}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"kind": "gpu"}, r"unknown kind 'gpu'.*\['io', 'cpu'\]"),
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"retries": 1.5}, "retries must be an int >= 0"),
        ({"timeout": -2}, "timeout must be a number >= 0"),
        ({"timeout": float("nan")}, "timeout must be a number >= 0"),
        ({"retry_delay": float("inf")}, "retry_delay must be a finite number >= 0"),
        ({"retry_delay": "1"}, "retry_delay must be a finite number >= 0"),
        ({"priority": "high"}, "priority must be an int"),
        ({"resources": "db"}, "resources must be a list of limit names"),
        ({"deps": "a"}, "deps must be a list of task names"),
        ({"deps": ["a", "a"]}, "more than once"),
    ],
)
def test_bad_task_options(options, match):
    g = ag.Graph()
    with pytest.raises(ag.InvalidTaskError, match=match) as info:
        g.add("t", lambda *a: 1, **options)
    assert info.value.task == "t"
    assert isinstance(info.value, ValueError)
    assert len(g) == 0


def test_not_callable():
    with pytest.raises(ag.InvalidTaskError, match="must be callable"):
        ag.Graph().add("t", 42)  # type: ignore[arg-type]


def test_validation_happens_before_any_task_runs():
    ran = []
    g = ag.Graph()
    g.add("first", lambda: ran.append("first"))
    g.add("b", lambda x: x, deps=["missing"])
    with pytest.raises(ag.MissingDependencyError):
        g.run_sync()
    assert ran == []


def test_queries():
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a, deps=["a"])
    g.add("c", lambda b: b, deps=["b"])
    g.add("d", lambda a: a, deps=["a"])
    assert g.descendants("a") == {"b", "c", "d"}
    assert g.ancestors(["c"]) == {"a", "b"}
    assert set(g.children("a")) == {"b", "d"}
    with pytest.raises(ag.UnknownTaskError) as info:
        g.descendants(["a", "x", "y"])
    assert info.value.names == ["x", "y"]
    with pytest.raises(ag.UnknownTaskError):
        g.tasks["nope"]
    assert repr(g) == "<Graph 4 tasks: pending 4>"


@pytest.mark.parametrize("deps", ["a", "ab", None, 3])
def test_create_graph_dependency_values_must_be_collections(deps):
    with pytest.raises(ag.InvalidTaskError, match=r"dependencies\['b'\] must be a list or set"):
        ag.create_graph({"a": lambda: 1, "b": lambda x: x}, {"b": deps})
