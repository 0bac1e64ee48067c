"""Building a graph fast (issue 15): the fast paths build exactly what the full ones did.

``make_task`` has a fast path (a plan per code object, cheap type checks) in front of the
full one (``_make_task_checked``, every check in order); Tasks and Elements are built by
filling a mutable twin and assigning ``__class__``; a graph defined dependencies first is
validated in one pass. Each is pinned here against the slow way: the same Task (every
field), the same error (type and message), the same order, the same fingerprint.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import pickle
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asyncgraph as ag
from asyncgraph import _fan
from asyncgraph._dag import Dag
from asyncgraph._fingerprint import digests
from asyncgraph._task import (
    _PLANS,
    Element,
    Kind,
    Task,
    _make_task_checked,
    _new_task,
    make_task,
    new_element,
)


async def coro(*a: Any) -> None:
    return None


def plain(a, b):  # type: ignore[no-untyped-def]
    return a


def with_default(a, b=1):  # type: ignore[no-untyped-def]
    return a


def kw_only(a, *, b):  # type: ignore[no-untyped-def]
    return a


def kw_only_default(a, *, b=2):  # type: ignore[no-untyped-def]
    return a


def pos_only(a, /, b):  # type: ignore[no-untyped-def]
    return a


def var_kw(a, **kw):  # type: ignore[no-untyped-def]
    return a


def nothing():  # type: ignore[no-untyped-def]
    return 1


def gen(a):  # type: ignore[no-untyped-def]
    yield a


async def agen(a):  # type: ignore[no-untyped-def]
    yield a


@functools.wraps(plain)
def wrapped(*a, **k):  # type: ignore[no-untyped-def]
    return plain(*a, **k)


class CallableObject:
    def __call__(self, a):  # type: ignore[no-untyped-def]
        return a

    def method(self, a):  # type: ignore[no-untyped-def]
        return a


FUNCTIONS: list[Any] = [
    coro,
    plain,
    with_default,
    kw_only,
    kw_only_default,
    pos_only,
    var_kw,
    nothing,
    gen,
    agen,
    wrapped,
    CallableObject(),
    CallableObject().method,
    functools.partial(plain, 1),
    lambda a: a,
    len,
    42,
]
DEPS: list[Any] = [
    None,
    [],
    ["a"],
    ["a", "b"],
    ("a", "b"),
    ["a", "a"],
    ["me"],
    ["a", 3],
    {"a": "x"},
    {"a": "x", "b": "x"},
    {"b": "x"},
    {"a": "me"},
    {"1a": "x"},
    {"class": "x"},
    {"a": 1},
    {"a", "b"},
    "a",
]
OPTIONS: list[dict[str, Any]] = [
    {},
    {"kind": "cpu"},
    {"kind": Kind.CPU},
    {"kind": "gpu"},
    {"kind": ["io"]},
    {"retries": 2, "retry_delay": 0, "timeout": 1, "priority": -3},
    {"retries": -1},
    {"retries": True},
    {"retry_delay": float("nan")},
    {"retry_delay": float("inf")},
    {"timeout": float("inf")},
    {"timeout": -1},
    {"timeout": float("nan")},
    {"priority": 1.5},
    {"priority": True},
    {"resources": ("db",)},
    {"resources": ["db", "db"]},
    {"resources": []},
    {"skip_none": True},
    {"after": ["z"]},
    {"over": "a"},
]


def outcome(build: Any, name: Any, fn: Any, **kw: Any) -> Any:
    """The fields of the Task built, or the error raised (type and message)."""
    try:
        task = build(name, fn, **kw)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return ("raised", type(exc), str(exc))
    assert type(task) is Task
    return ("built", tuple(getattr(task, f.name) for f in dataclasses.fields(Task)))


@pytest.mark.parametrize("fn", FUNCTIONS, ids=repr)
def test_make_task_builds_what_the_full_path_builds_or_raises_its_error(fn: Any) -> None:
    for deps, options, name in itertools.product(DEPS, OPTIONS, ["me", "", "t\udcff", 5]):
        kw = {"deps": deps, **options}
        expected = outcome(_make_task_checked, name, fn, **kw)
        for _ in range(2):  # cold, then with the function's plan made
            assert outcome(make_task, name, fn, **kw) == expected, (name, fn, kw)


def graph_add(name: Any, fn: Any, **kw: Any) -> Task:
    g = ag.Graph()
    g.add("other", coro, deps=[])
    task = g.add(name, fn, **kw)
    assert g.tasks[name] is task and g.records[name].status is ag.State.PENDING
    return task


@pytest.mark.parametrize("fn", FUNCTIONS, ids=repr)
def test_graph_add_builds_what_the_full_path_builds_or_raises_its_error(fn: Any) -> None:
    for deps, options in itertools.product(DEPS, OPTIONS):
        kw = {"deps": deps, **options}
        kw.pop("skip_none", None)  # not an option of add
        expected = outcome(_make_task_checked, "me", fn, **kw)
        for _ in range(2):
            assert outcome(graph_add, "me", fn, **kw) == expected, (fn, kw)
    g = ag.Graph()
    g.add("me", coro, deps=[])
    with pytest.raises(ag.DuplicateTaskError):
        g.add("me", coro, deps=[])
    assert len(g) == 1


def test_functions_of_one_code_share_a_plan_but_not_their_defaults() -> None:
    def make() -> Any:
        def f(a, b):  # type: ignore[no-untyped-def]
            return a

        return f

    first, second = make(), make()
    assert first.__code__ is second.__code__
    assert make_task("x", first).deps == ("a", "b")
    assert make_task("y", second).deps == ("a", "b")
    second.__defaults__ = (0,)  # same code, now `b` has a default: it names no task
    assert make_task("z", second).deps == ("a",)
    with pytest.raises(ag.SignatureError) as err:
        make_task("w", second, deps=["p", "q", "r"])
    assert err.value.args == _error(_make_task_checked, "w", second, deps=["p", "q", "r"])


def test_a_function_whose_code_changes_is_read_again() -> None:
    def f(a):  # type: ignore[no-untyped-def]
        return a

    def g(a, b, c):  # type: ignore[no-untyped-def]
        return a

    assert make_task("x", f).deps == ("a",)
    f.__code__ = g.__code__
    assert make_task("x", f).deps == ("a", "b", "c")


def test_a_bound_checked_once_is_checked_again_for_another_count() -> None:
    def f(a, b):  # type: ignore[no-untyped-def]
        return a

    assert make_task("x", f, deps=["p", "q"]).args == ("p", "q")
    with pytest.raises(ag.SignatureError, match="cannot accept what its dependencies pass"):
        make_task("y", f, deps=["p"])
    with pytest.raises(ag.SignatureError, match="cannot accept"):
        make_task("y", f, deps={"a": "p"})
    assert make_task("y", f, deps=["p", "q"], skip_none=True).args == ("p", "q")


def test_the_plan_cache_is_bounded_and_holds_no_function() -> None:
    import asyncgraph._task as task_module

    for i in range(task_module._PLANS_MAX + 10):
        ns: dict[str, Any] = {}
        exec(f"def f{i}(a):\n    return a\n", ns)  # a new code object each time
        make_task("t", ns[f"f{i}"])
    assert len(_PLANS) <= task_module._PLANS_MAX
    for plan in _PLANS.values():
        assert not any(callable(getattr(plan, s)) for s in ("code", "sig", "auto"))


def _error(build: Any, *a: Any, **kw: Any) -> tuple[Any, ...]:
    try:
        build(*a, **kw)
    except Exception as exc:  # noqa: BLE001 - compared
        return exc.args
    raise AssertionError("no error")


# -- the constructors ---------------------------------------------------------------------


def _values(cls: type) -> list[Any]:
    return [object() for _ in dataclasses.fields(cls)]


@pytest.mark.parametrize(("cls", "build"), [(Task, _new_task), (Element, new_element)])
def test_the_constructors_build_ordinary_frozen_dataclasses(cls: type, build: Any) -> None:
    values = [f"v{i}" for i in range(len(dataclasses.fields(cls)))]
    fast, slow = build(*values), cls(*values)
    assert type(fast) is cls
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert pickle.loads(pickle.dumps(fast)) == slow
    assert dataclasses.replace(fast, name="other") == dataclasses.replace(slow, name="other")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.name = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        del fast.name
    with pytest.raises(TypeError):
        build(*values[:-1])  # every field, always
    assert not hasattr(fast, "__dict__")


def test_elements_of_a_family_equal_the_ones_the_class_builds() -> None:
    g = ag.Graph()
    g.add("items", lambda: [3, 1, 2], deps=[])
    template = g.add("t", coro, deps=["items"], over="items", retries=2, priority=4)
    found = _fan.items(template, [3, 1, 2])
    fast = _fan.elements(template, found)
    proto = _fan.prototype(template)
    proto[_fan._AT["input"]] = "items"
    for i, e in enumerate(fast):
        args = proto.copy()
        args[_fan._AT["name"]], args[_fan._AT["value"]] = f"t[{i}]", [3, 1, 2][i]
        args[_fan._AT["index"]], args[_fan._AT["at"]] = i, str(i)
        assert type(e) is Element and e == Element(*args)


# -- validation in one pass ---------------------------------------------------------------


def reference_order(tasks: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """Kahn's algorithm with ties by definition order: what topological_order promised."""
    position = {n: i for i, n in enumerate(tasks)}
    indegree = {n: len(d) for n, d in tasks.items()}
    children: dict[str, list[str]] = {}
    for n, ds in tasks.items():
        for d in ds:
            children.setdefault(d, []).append(n)
    heap = [(position[n], n) for n, k in indegree.items() if k == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, n = heapq.heappop(heap)
        out.append(n)
        for c in children.get(n, ()):
            indegree[c] -= 1
            if not indegree[c]:
                heapq.heappush(heap, (position[c], c))
    return tuple(out)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 30), st.randoms(use_true_random=False), st.booleans())
def test_the_order_is_the_heaps_whether_defined_in_order_or_not(
    n: int, rnd: random.Random, shuffle: bool
) -> None:
    deps = {
        f"t{i}": tuple(rnd.sample([f"t{j}" for j in range(i)], min(i, rnd.randint(0, 3))))
        for i in range(n)
    }
    names = list(deps)
    if shuffle:
        rnd.shuffle(names)
    g = ag.Graph()
    for name in names:
        g.add(name, coro, deps=list(deps[name]))
    assert g.topological_order() == reference_order({k: deps[k] for k in names})
    children: dict[str, list[str]] = {}
    for name in names:  # each task's dependents, in definition order
        for d in deps[name]:
            children.setdefault(d, []).append(name)
    made = dict(g._dag._children or {})  # the pass that proved the order made them
    assert made == {k: tuple(v) for k, v in children.items()} == dict(g._dag.child_map())


def test_missing_dependencies_and_cycles_are_reported_as_before() -> None:
    g = ag.Graph()
    g.add("a", coro, deps=[])
    g.add("b", coro, deps=["later"])
    g.add("c", coro, deps=["nowhere"])
    with pytest.raises(ag.MissingDependencyError) as err:
        g.validate()
    assert "'b'" in str(err.value) and "later" in str(err.value)
    h = ag.Graph()
    h.add("a", coro, deps=[])
    h.add("b", coro, deps=["c"])
    h.add("c", coro, deps=["b"])
    with pytest.raises(ag.CycleError, match="b.*c.*b"):
        h.validate()
    assert Dag([make_task("x", coro, deps=[])]).topological_order() == ("x",)


# -- fingerprints -------------------------------------------------------------------------


def test_fingerprints_of_tasks_built_fast_equal_those_built_the_full_way() -> None:
    ident = lambda x: x  # noqa: E731 - a lambda on purpose: the fast path takes it

    def build(make: Any) -> ag.Graph:
        g = ag.Graph()
        g._insert(make("a", plain, deps=["x", "y"], kind="cpu"))
        g._insert(make("x", nothing, deps=[]))
        g._insert(make("y", with_default, deps=["x"]))
        g._insert(make("z", ident))
        g._insert(make("v", kw_only, deps={"a": "x", "b": "z"}))
        g._insert(make("b", var_kw, deps={"a": "a"}, retries=1, timeout=2))
        return g

    fast, slow = build(make_task), build(_make_task_checked)
    for n in fast:
        assert fast.tasks[n] == slow.tasks[n]
    assert digests(fast) == digests(slow)


# -- the decorator and create_graph ---------------------------------------------------------


def test_the_decorator_builds_what_add_builds_and_honours_a_subclass_add() -> None:
    g = ag.Graph()
    for i in range(3):

        @g.task(name=f"t{i}", deps=[f"t{i - 1}"] if i else [], retries=i)
        async def step(*a: Any) -> int:
            return len(a)

    for i in range(3):
        deps = [f"t{i - 1}"] if i else []
        assert g.tasks[f"t{i}"] == _make_task_checked(
            f"t{i}", g.tasks[f"t{i}"].fn, deps=deps, retries=i
        )
    with pytest.raises(ag.InvalidTaskError, match="retries"):
        g.task(name="bad", retries=-1)(coro)
    assert "bad" not in g

    added: list[str] = []

    class Logged(ag.Graph):
        __slots__ = ()

        def add(self, name: str, fn: Any, **kw: Any) -> Task:  # type: ignore[override]
            added.append(name)
            return super().add(name, fn, **kw)

    h = Logged()
    h.task(name="x", deps=[])(coro)
    assert added == ["x"] and "x" in h


def test_create_graph_builds_what_the_full_path_builds() -> None:
    funcs = {"a": nothing, "b": plain, "c": coro, "d": with_default, "e": len}
    dependencies: dict[str, Any] = {"b": ("a", "c"), "c": {"a"}, "d": ["b"], "e": {"c", "d"}}
    g = ag.create_graph(funcs, dependencies, io_bound=["c"], done=["a"], results={"a": 1})
    for n, fn in funcs.items():
        deps = dependencies.get(n, ())
        deps = sorted(deps) if isinstance(deps, set) else list(deps)
        kind = "io" if n == "c" else "cpu"
        assert g.tasks[n] == _make_task_checked(n, fn, deps=deps, kind=kind, skip_none=True)
    assert g.status["a"] is ag.State.DONE and g.topological_order()[-1] == "e"
    with pytest.raises(ag.InvalidTaskError, match=r"dependencies\['b'\]"):
        ag.create_graph({"b": plain}, {"b": "a"})
    with pytest.raises(ag.SignatureError, match="'b'"):
        ag.create_graph({"a": nothing, "b": plain}, {"b": ["a"]})


def test_a_graph_built_fast_pickles_and_compares_as_before() -> None:
    g = ag.Graph(name="p")
    g.add("x", nothing, deps=[])
    g.add("a", plain, deps=["x", "x2"])
    g.add("x2", with_default, deps=["x"])
    g.add("b", var_kw, deps={"a": "a"}, kind="cpu", retries=1, timeout=3)
    back = pickle.loads(pickle.dumps(g))
    assert dict(back.tasks) == dict(g.tasks) and back.status == g.status
    assert all(type(t) is Task for t in back.tasks.values())
    assert back.topological_order() == ("x", "x2", "a", "b")  # a waits for x2: the heap
    assert repr(back) == repr(g) == "<Graph 'p' 4 tasks: pending 4>"
