"""Issue 16, API gaps: order-only dependencies (``after=``), a Task where a name is
expected, the ends of a graph, and a priority that outranks the critical path."""

from __future__ import annotations

import pytest

import asyncgraph as ag
from asyncgraph._scheduler import Scheduler


def _order_graph(events: list[str]) -> ag.Graph:
    g = ag.Graph()

    @g.task
    async def load() -> int:
        events.append("load")
        return 1

    @g.task(after=["load"])
    async def cleanup() -> str:  # no parameter: it gets no result
        events.append("cleanup")
        return "clean"

    return g


async def test_after_waits_without_receiving_the_result():
    events: list[str] = []
    g = _order_graph(events)
    assert g.tasks["cleanup"].after == ("load",)
    assert g.dependencies("cleanup") == ("load",)
    out = await ag.run(g)
    assert events == ["load", "cleanup"]
    assert out.results["cleanup"] == "clean"


async def test_after_on_add_with_data_deps_too_and_a_task_object():
    g = ag.Graph()
    seen: list[tuple[str, tuple[object, ...]]] = []

    async def a() -> int:
        seen.append(("a", ()))
        return 2

    async def side() -> None:
        seen.append(("side", ()))

    async def b(*args: object) -> object:
        seen.append(("b", args))
        return args

    ta = g.add("a", a)
    ts = g.add("side", side)
    g.add("b", b, deps=[ta], after=ts)  # Task objects stand for their names
    assert g.tasks["b"].args == ("a",)
    assert g.tasks["b"].after == ("side",)
    out = await ag.run(g, max_io=1)
    assert out.results["b"] == (2,)  # only the data dependency's result is passed
    assert [s for s, _ in seen][-1] == "b"


async def test_a_failed_order_only_parent_skips_its_dependent():
    g = ag.Graph()

    @g.task
    async def load() -> None:
        raise ValueError("no")

    @g.task(after="load")
    async def cleanup() -> None:
        raise AssertionError("must not run")

    @g.task
    async def other() -> int:
        return 3

    out = await ag.run(g)
    assert out.status == {
        "load": ag.State.FAILED,
        "cleanup": ag.State.SKIPPED,
        "other": ag.State.DONE,
    }


def test_after_shows_in_pictures_plan_subgraph_and_reset(tmp_path):
    g = _order_graph([])
    mermaid = g.to_mermaid()
    assert "t0 -.-> t1" in mermaid  # dashed: order only
    assert "t0 -> t1 [style=dashed];" in g.to_dot()
    assert set(g.subgraph("cleanup")) == {"load", "cleanup"}
    done = ag.run_sync(g)
    again = done.reset("load")
    assert again.status["cleanup"] is ag.State.PENDING
    assert done.descendants("load") == {"cleanup"}
    frame = ag.plan(g, tmp_path / "s.db")
    assert list(frame["name"]) == ["load", "cleanup"]


def test_a_name_in_both_deps_and_after_is_a_data_dependency():
    g = ag.Graph()
    g.add("a", lambda: 1)
    t = g.add("b", lambda a: a, after=["a"])
    assert t.after == () and t.deps == ("a",)


@pytest.mark.parametrize(
    ("after", "match"),
    [
        (3, "after must be a list of task names, not int 3"),
        ([3], r"after must hold task names \(str or Tasks\), found int 3"),
        (["a", "a"], r"after lists \['a'\] more than once"),
    ],
)
def test_bad_after_is_refused_naming_the_task_and_the_parameter(after, match):
    g = ag.Graph()
    g.add("a", lambda: 1)
    with pytest.raises(ag.InvalidTaskError, match=match):
        g.add("b", lambda: 2, after=after)
    assert "b" not in g  # nothing half-added


def test_after_a_missing_task_or_itself_is_refused():
    g = ag.Graph()
    g.add("b", lambda: 2, after=["nope"])
    with pytest.raises(ag.MissingDependencyError, match="nope"):
        g.validate()
    with pytest.raises(ag.CycleError):
        ag.Graph().add("c", lambda: 1, after=["c"])


def test_after_changes_the_fingerprint_but_leaves_others_as_they_were():
    def make(after: list[str] | None) -> ag.Graph:
        g = ag.Graph()
        g.add("a", _one)
        g.add("b", _two, after=after)
        return g

    plain, ordered = ag.fingerprints(make(None)), ag.fingerprints(make(["a"]))
    assert plain["a"] == ordered["a"]
    assert plain["b"] != ordered["b"]


def _one() -> int:
    return 1


def _two() -> int:
    return 2


# -- a Task where a name is expected ---------------------------------------------------


def test_a_task_object_stands_for_its_name_everywhere():
    g = ag.Graph()
    a = g.add("a", _one)
    b = g.add("b", lambda a: a, deps={"a": a})
    c = g.add("c", lambda x: x, deps=[b])
    assert g.dependencies(c) == ("b",)
    assert g.children(a) == ("b",)
    assert g.descendants(a) == {"b", "c"}
    assert g.ancestors([c]) == {"a", "b"}
    assert set(g.subgraph(b)) == {"a", "b"}
    assert g.mark_done(a, results={"a": 1}).status["a"] is ag.State.DONE
    assert ag.reset(g, [a]).status["a"] is ag.State.PENDING


async def test_a_decorated_function_stands_for_its_task_in_deps_and_after():
    g = ag.Graph()

    @g.task
    async def load() -> int:
        return 4

    @g.task(after=[load])
    async def cleanup() -> str:
        return "ok"

    g.add("double", lambda x: x * 2, deps=[load], after=cleanup)
    assert g.tasks["double"].args == ("load",) and g.tasks["double"].after == ("cleanup",)
    assert (await ag.run(g)).results["double"] == 8
    shared = ag.Graph()
    shared.add("x", _one)
    shared.add("y", _one)  # two tasks share _one: it names neither
    with pytest.raises(ag.InvalidTaskError, match="found function"):
        shared.add("z", _two, after=[_one])


def test_a_wrong_type_gets_one_line_naming_the_parameter_not_a_task_repr():
    g = ag.Graph()
    a = g.add("a", _one)
    with pytest.raises(ag.InvalidTaskError) as info:
        g.add("b", lambda x: x, deps=[object()])
    text = str(info.value)
    assert "deps must hold task names" in text and "\n" not in text and len(text) < 200
    with pytest.raises(TypeError, match=r"^reset: task names are strings, not 3$"):
        ag.reset(g, [a, 3])
    long = list(range(100))
    with pytest.raises(TypeError) as info2:
        ag.reset(g, [long])
    assert len(str(info2.value)) < 120


# -- the ends of a graph -----------------------------------------------------------------


def test_sources_and_terminals():
    g = ag.Graph()
    assert g.sources() == () and g.terminals() == ()
    g.add("a", _one)
    g.add("x", _two)
    g.add("b", lambda a: a)
    g.add("c", lambda: 3, after=["b"])
    assert g.sources() == ("a", "x")
    assert g.terminals() == ("x", "c")
    assert ag.run_sync(g).terminals() == ("x", "c")


# -- priority outranks the critical path ---------------------------------------------------


def _drain(s: Scheduler) -> list[str]:
    out = []
    while s.is_active():
        (t,) = s.get_ready()
        out.append(t.name)
        s.done(t.name)
    return out


def test_priority_outranks_the_critical_path_then_path_then_definition_order():
    g = ag.Graph()
    g.add("leaf", _one)  # path 1, priority 0
    g.add("urgent", _two, priority=5)  # path 1 but the highest priority
    g.add("head", _one)  # path 3: first among priority 0
    g.add("mid", _one, after=["head"])
    g.add("tail", _one, after=["mid"])
    g.add("low", _two, priority=-1)
    dag = g._dag
    s = Scheduler(dag.tasks, dag.topological_order(), max_io=1)
    s.prepare(dict.fromkeys(dag.tasks, ag.State.PENDING))
    assert _drain(s) == ["urgent", "head", "mid", "leaf", "tail", "low"]


async def test_priority_wins_in_a_real_run():
    g = ag.Graph()
    started: list[str] = []

    def make(name: str):  # type: ignore[no-untyped-def]
        async def fn(*_: object) -> None:
            started.append(name)

        return fn

    g.add("a", make("a"))
    g.add("b", make("b"), deps=["a"])
    g.add("c", make("c"), deps=["b"])
    g.add("now", make("now"), priority=1)
    await ag.run(g, max_io=1)
    assert started == ["now", "a", "b", "c"]
