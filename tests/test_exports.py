"""Exported names say they are ``asyncgraph``'s, and everything still pickles.

Setting ``__module__ = "asyncgraph"`` changes where pickle looks a class or function up:
``pickle.dumps(ag.State.DONE)`` names ``asyncgraph.State``. Workers and stores pickle
graphs, tasks, records, states and errors, so each must come back, here and in a fresh
interpreter that has imported nothing yet.
"""

from __future__ import annotations

import enum
import pickle
import subprocess
import sys
import traceback
import types
import typing

import cloudpickle
import pytest

import asyncgraph as ag
from asyncgraph._api import Graph as ApiGraph
from asyncgraph._graph import BaseGraph

EXPORTED = [getattr(ag, name) for name in ag.__all__]
NAMED = [obj for obj in EXPORTED if isinstance(obj, (type, types.FunctionType))]


def test_every_class_and_function_is_asyncgraphs():
    assert len(NAMED) == len(EXPORTED) - 1  # all but the constant NO_RESULT
    for name in ag.__all__:
        obj = getattr(ag, name)
        if obj is ag.NO_RESULT:
            assert type(obj).__module__ == "asyncgraph._state"  # a constant: its type's
            continue
        assert obj.__module__ == "asyncgraph", name
        assert obj.__qualname__ == name, name


def test_reprs_show_the_public_path():
    assert repr(ag.Graph) == "<class 'asyncgraph.Graph'>"
    assert repr(ag.State) == "<enum 'State'>" and ag.State.__module__ == "asyncgraph"
    assert f"{ag.Task.__module__}.{ag.Task.__qualname__}" == "asyncgraph.Task"
    err = ag.CycleError(["a", "b", "a"])
    text = "".join(traceback.format_exception_only(err))
    assert text.startswith("asyncgraph.CycleError: ")


def test_the_public_graph_is_the_api_class_on_the_base():
    assert ag.Graph is ApiGraph and issubclass(ag.Graph, BaseGraph)
    assert ApiGraph.__slots__ == ()
    g = ag.Graph()
    g.add("a", lambda: 1)
    assert type(g._derive(g.records)) is ag.Graph


#: Their annotations name imports made only for type checkers (before this change too).
UNRESOLVABLE = (ag.Summary, ag.TaskFailures)


@pytest.mark.parametrize(
    "cls",
    [c for c in NAMED if isinstance(c, type) and c not in UNRESOLVABLE],
    ids=lambda c: c.__qualname__,
)
def test_type_hints_still_resolve(cls):
    """get_type_hints looks names up in the module ``__module__`` names, now asyncgraph,
    which has no ``Any`` or ``Callable``: __init__ resolves them where they were written."""
    hints = typing.get_type_hints(cls)
    if cls is ag.TaskRecord:
        assert hints["status"] is ag.State and hints["error"] == BaseException | None


@pytest.mark.parametrize("obj", NAMED, ids=lambda o: o.__qualname__)
def test_classes_and_functions_pickle_by_reference(obj):
    for dumps in (pickle.dumps, cloudpickle.dumps):
        assert pickle.loads(dumps(obj)) is obj


def _members() -> list[enum.Enum]:
    return [*ag.State, *ag.Kind, *ag.EventKind]


@pytest.mark.parametrize("member", _members(), ids=str)
def test_enum_members_round_trip(member):
    for dumps in (pickle.dumps, cloudpickle.dumps):
        assert pickle.loads(dumps(member)) is member


def _ran() -> ag.Graph:
    g = ag.Graph()
    g.add("a", lambda: 2)
    g.add("b", lambda a: a * 10, deps=["a"])
    g.add("bad", lambda: 1 / 0)
    g.add("below", lambda bad: bad, deps=["bad"])
    return g.run_sync()


def test_a_graph_round_trips_with_its_records():
    out = _ran()
    back = cloudpickle.loads(cloudpickle.dumps(out))
    assert type(back) is ag.Graph
    assert back.status == out.status and dict(back.results) == {"a": 2, "b": 20}
    assert type(back.errors["bad"]) is ZeroDivisionError
    assert back.topological_order() == out.topological_order()
    assert back.tasks["b"].deps == ("a",) and back.children("a") == ("b",)
    back.add("more", lambda: 0)  # the copy's Dag is its own
    assert "more" not in out


def test_tasks_records_and_events_round_trip():
    task = ag.Graph().add("t", print, deps=[], kind="cpu", retries=2)
    record = ag.TaskRecord(ag.State.FAILED, None, ValueError("x"), "tb", 3, 1.0, 2.0)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        assert pickle.loads(dumps(task)) == task
        back = pickle.loads(dumps(record))
        assert type(back) is ag.TaskRecord and back.status is ag.State.FAILED
        assert (back.attempts, back.traceback, str(back.error)) == (3, "tb", "x")
    assert pickle.loads(pickle.dumps(ag.NO_RESULT)) is ag.NO_RESULT


#: Errors as they round-trip today (those whose __init__ takes other arguments than
#: their ``args`` do not, before this change or after it; see the report of issue 11).
ERRORS = [
    ag.GraphError("m"),
    ag.PicklingError("a", "its function is a lambda"),
    ag.TaskError("m"),
    ag.UnpicklingError("a", "the result", "no module named x"),
    ag.TaskCancelled("the deadline passed"),
    ag.UnstorableResultError("m"),
    ag.MissingResultError("a", ["b"]),
    ag.StoreError("m"),
]


@pytest.mark.parametrize("err", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_round_trip(err):
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


def test_task_failures_round_trip_with_their_graph():
    out = _ran()
    with pytest.raises(ag.TaskFailures) as info:
        out.raise_for_failures()
    back = cloudpickle.loads(cloudpickle.dumps(info.value))
    assert type(back) is ag.TaskFailures
    assert [type(e) for e in back.exceptions] == [ZeroDivisionError]


def test_a_fresh_interpreter_unpickles_them():
    out = _ran()
    blob = cloudpickle.dumps(
        [out, out.tasks["a"], out.records["b"], ag.State.DONE, ag.Kind.CPU, ERRORS[1]]
    )
    code = (
        "import pickle, sys\n"
        "objs = pickle.loads(sys.stdin.buffer.read())\n"
        "print(*[f'{type(o).__module__}.{type(o).__qualname__}' for o in objs])\n"
        "print(objs[0].status['b'].value, objs[0].results['b'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True)
    lines = proc.stdout.decode().split("\n")
    assert lines[0].split() == [
        "asyncgraph.Graph",
        "asyncgraph.Task",
        "asyncgraph.TaskRecord",
        "asyncgraph.State",
        "asyncgraph.Kind",
        "asyncgraph.PicklingError",
    ]
    assert lines[1] == "done 20"
