"""Issue 10, bad input accepted: items 14, 23, 24 and 27.

14. A global that cannot be inspected (a proxy whose every lookup raises, a Mock that
    answers every name) is fingerprinted by its type, and a failure the digester does not
    foresee names the task.
23. Generator and async generator functions (also as ``__call__`` and inside
    ``functools.partial``) are refused when the task is defined.
24. ``deps={...}`` keys must be parameter names: identifiers that are not keywords.
27. A task downstream of a task marked done without a result fails with
    ``MissingResultError`` naming both, unless ``None`` was given on purpose; on a store
    the mark survives a load.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
import unittest.mock
from pathlib import Path
from typing import Any

import pytest

import asyncgraph as ag
from asyncgraph import _fingerprint
from asyncgraph._fingerprint import fingerprints, function_digest

# -- 14: globals that cannot be inspected ---------------------------------------------------


class Proxy:
    """Like ``flask.current_app`` outside an app context: every lookup raises.

    ``__class__`` and ``__dict__`` raise too (``isinstance`` reads ``__class__``), and so
    do ``__eq__``, ``__hash__``, ``__reduce__``, ``__reduce_ex__``, ``repr`` and ``str``.
    """

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Working outside of application context.")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("Working outside of application context.")

    @property  # type: ignore[misc]
    def __class__(self) -> Any:
        raise RuntimeError("Working outside of application context.")

    @property
    def __dict__(self) -> Any:  # type: ignore[override]
        raise RuntimeError("Working outside of application context.")

    __eq__ = __hash__ = __reduce__ = __reduce_ex__ = __repr__ = __str__ = _fail  # type: ignore[assignment]
    __len__ = __iter__ = __bool__ = __getstate__ = _fail  # type: ignore[assignment]


current_app = Proxy()
mock_client = unittest.mock.MagicMock()
plain_mock = unittest.mock.Mock()


def uses_proxy() -> Any:
    return current_app.name


def uses_mock() -> Any:
    return mock_client.fetch()


def uses_plain_mock() -> Any:
    return plain_mock.get()


def uses_proxy_in_a_list() -> Any:
    return [current_app, HOLDER]


class Holder:
    def __init__(self) -> None:
        self.app = current_app
        self.client = mock_client
        self.n = 3


HOLDER = Holder()


def test_a_proxy_global_is_fingerprinted_by_its_type() -> None:
    d = function_digest(uses_proxy)
    assert d == function_digest(uses_proxy)
    # Inside containers and other objects' state too.
    assert function_digest(uses_proxy_in_a_list)


def test_a_proxy_global_does_not_stop_runs_loads_or_plans(tmp_path: Path) -> None:
    g = ag.Graph()
    g.add("app", uses_proxy)  # would fail if it ran: it is only fingerprinted here
    g.add("other", lambda: 1)
    db = tmp_path / "s.db"
    g2 = ag.mark_done(g, ["app"], results={"app": "x"})
    out = ag.run_sync(g2, store=db)
    assert out.results == {"app": "x", "other": 1}
    assert ag.load(g, db).status["app"] is ag.State.DONE
    assert set(ag.plan(g, db)["action"]) == {"reuse"}


def test_a_mock_global_has_a_fingerprint_that_does_not_change_as_it_is_used() -> None:
    before = (function_digest(uses_mock), function_digest(uses_plain_mock))
    mock_client.fetch(1)
    mock_client.other.attribute.chain  # noqa: B018 - creates child mocks
    plain_mock.get()
    plain_mock.configure_mock(name="x")
    assert (function_digest(uses_mock), function_digest(uses_plain_mock)) == before


def test_a_mock_as_the_task_function_is_accepted_and_fingerprinted() -> None:
    g = ag.Graph()
    fn = unittest.mock.MagicMock(return_value=5)
    g.add("m", fn, deps=[])
    assert not g.tasks["m"].is_async
    fps = fingerprints(g)
    fn.other.thing()
    assert fingerprints(g) == fps
    assert ag.run_sync(g).results["m"] == 5


def test_a_lazy_module_that_fails_to_load_is_fingerprinted_by_name(tmp_path: Path) -> None:
    (tmp_path / "broken_lazy_mod.py").write_text("raise ImportError('no backend here')\n")
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.path.insert(0, {str(tmp_path)!r})
        spec = importlib.util.find_spec("broken_lazy_mod")
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules["broken_lazy_mod"] = mod
        loader.exec_module(mod)
        broken_lazy_mod = mod

        def task():
            return broken_lazy_mod.VALUE

        from asyncgraph._fingerprint import function_digest
        print(function_digest(task))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 32


def test_an_unforeseen_fingerprint_failure_names_the_task_and_the_global(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = _fingerprint._Digester._value

    def value(self: Any, obj: Any, out: Any, depth: int) -> None:
        if obj is HOLDER:
            raise RuntimeError("a bug in the digester")
        real(self, obj, out, depth)

    monkeypatch.setattr(_fingerprint._Digester, "_value", value)

    def reads_holder() -> int:
        return HOLDER.n

    g = ag.Graph()
    g.add("reader", reads_holder)
    with pytest.raises(ag.InvalidTaskError) as info:
        fingerprints(g)
    message = str(info.value)
    assert "task 'reader'" in message
    assert "'HOLDER'" in message
    assert "a bug in the digester" in message
    assert info.value.task == "reader"


# -- 23: generators are not tasks -----------------------------------------------------------


def gen() -> Any:
    yield 1


async def agen() -> Any:
    yield 1


class GenCall:
    def __call__(self) -> Any:
        yield 1


class AgenCall:
    async def __call__(self) -> Any:
        yield 1


def gen_of(x: int) -> Any:
    yield x


GENERATORS = {
    "generator function": (gen, "generator function"),
    "async generator function": (agen, "async generator function"),
    "__call__ a generator": (GenCall(), "generator function"),
    "__call__ an async generator": (AgenCall(), "async generator function"),
    "partial of a generator function": (functools.partial(gen_of, 1), "generator function"),
    "partial of a partial": (functools.partial(functools.partial(gen_of), 1), "generator"),
    "partial of an async generator": (functools.partial(agen), "async generator function"),
}


@pytest.mark.parametrize("case", list(GENERATORS))
@pytest.mark.parametrize("how", ["add", "decorator", "create_graph"])
def test_generators_are_refused_when_the_task_is_defined(case: str, how: str) -> None:
    fn, what = GENERATORS[case]
    g = ag.Graph()
    with pytest.raises(ag.InvalidTaskError) as info:
        if how == "add":
            g.add("stream", fn, deps=[])
        elif how == "decorator":
            g.task(name="stream", deps=[])(fn)
        else:
            ag.create_graph({"stream": fn}, {"stream": []}, io_bound=["stream"])
    message = str(info.value)
    assert info.value.task == "stream"
    assert message.startswith("task 'stream': ")
    assert what in message
    assert "return a list" in message
    assert len(g) == 0


def test_functions_that_only_return_iterables_are_still_tasks() -> None:
    def returns_list() -> list[int]:
        return list(range(3))  # returns an iterable: not a generator function

    class Listify:
        def __call__(self) -> list[int]:
            return list(gen())

    @functools.wraps(gen)
    def wrapped() -> list[int]:  # __wrapped__ is a generator function: not followed
        return list(gen())

    g = ag.Graph()
    g.add("a", returns_list)
    g.add("b", Listify(), deps=[])
    g.add("c", wrapped, deps=[])
    g.add("d", functools.partial(returns_list))
    assert ag.run_sync(g).results == {"a": [0, 1, 2], "b": [1], "c": [1], "d": [0, 1, 2]}


# -- 24: deps keys are parameter names ------------------------------------------------------


def takes_x(x: int) -> int:
    return x


def takes_any(**kwargs: Any) -> Any:
    return kwargs


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (1, "not int 1"),
        (None, "not NoneType None"),
        (("x",), "not tuple ('x',)"),
        ("1", "'1' is not a Python identifier"),
        ("a-b", "'a-b' is not a Python identifier"),
        ("", "'' is not a Python identifier"),
        ("class", "'class' is a Python keyword"),
        ("None", "'None' is a Python keyword"),
    ],
)
@pytest.mark.parametrize("fn", [takes_x, takes_any, print])
def test_deps_keys_must_be_parameter_names(key: Any, why: str, fn: Any) -> None:
    g = ag.Graph()
    g.add("a", lambda: 1)
    with pytest.raises(ag.InvalidTaskError) as info:
        g.add("t", fn, deps={key: "a"})
    message = str(info.value)
    assert info.value.task == "t"
    assert message.startswith("task 't': deps key ")
    assert why in message
    assert "parameter" in message
    assert "t" not in g


def test_soft_keywords_and_unicode_names_are_parameter_names() -> None:
    def f(match: int, case: int, _: int, π: int) -> int:
        return match + case + _ + π

    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("f", f, deps={"match": "a", "case": "a", "_": "a", "π": "a"})
    assert ag.run_sync(g).results["f"] == 4


# -- 27: marked done without a result -------------------------------------------------------


def chain() -> ag.Graph:
    """a -> b -> c, and lone."""
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a + 1)
    g.add("c", lambda b: b * 10)
    g.add("lone", lambda: "L")
    return g


def _missing(out: ag.Graph, task: str) -> ag.MissingResultError:
    error = out.errors[task]
    assert isinstance(error, ag.MissingResultError)
    return error


def test_the_error_is_a_task_error_exported_from_asyncgraph() -> None:
    assert issubclass(ag.MissingResultError, ag.TaskError)
    assert "MissingResultError" in ag.__all__


async def test_mark_done_without_a_result_fails_the_task_below() -> None:
    marked = ag.mark_done(chain(), ["a"])
    assert marked.status["a"] is ag.State.DONE
    out = await ag.run(marked)
    assert out.status == {
        "a": ag.State.DONE,
        "b": ag.State.FAILED,
        "c": ag.State.SKIPPED,
        "lone": ag.State.DONE,
    }
    error = _missing(out, "b")
    assert (error.task, error.missing) == ("b", ("a",))
    message = str(error)
    assert "task 'b'" in message and "'a'" in message
    assert "mark_done(g, ['a'], results={'a': value})" in message
    assert "results={'a': None}" in message
    assert out.records["b"].attempts == 1


async def test_none_given_on_purpose_is_passed() -> None:
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: repr(a))
    out = await ag.run(ag.mark_done(g, ["a"], results={"a": None}))
    assert out.results == {"a": None, "b": "None"}


async def test_a_result_given_or_already_there_is_passed() -> None:
    ran = await ag.run(chain())
    # a ran (result 1): marking it done keeps that result; reset b and c to run them.
    again = await ag.run(ag.reset(ag.mark_done(ran, ["a"]), ["b"]))
    assert again.results["c"] == 20
    given = await ag.run(ag.mark_done(chain(), ["a"], results={"a": 5}))
    assert given.results["c"] == 60


async def test_mark_done_except_without_results_fails_what_runs_below() -> None:
    out = await ag.run(ag.mark_done_except(chain(), ["c"]))
    error = _missing(out, "c")
    assert error.missing == ("b",)
    assert out.status["c"] is ag.State.FAILED


async def test_the_missing_result_is_shown_for_what_it_is() -> None:
    marked = ag.mark_done(chain(), ["lone"])
    shown = marked.results["lone"]
    assert shown is not None
    assert "no result" in repr(shown)
    assert "no result" in repr(marked.results)


async def test_every_missing_dependency_is_named_and_not_retried() -> None:
    calls: list[str] = []
    g = ag.Graph()
    g.add("x", lambda: 1)
    g.add("y", lambda: 2)

    def both(x: int, y: int) -> int:
        calls.append("both")
        return x + y

    g.add("both", both, retries=3, retry_delay=0)
    out = await ag.run(ag.mark_done(g, ["x", "y"]))
    error = _missing(out, "both")
    assert error.missing == ("x", "y")
    assert "'x', 'y'" in str(error)
    assert out.records["both"].attempts == 1
    assert calls == []


@pytest.mark.parametrize("style", ["positional", "keyword", "dict"])
async def test_every_binding_style_is_checked(style: str) -> None:
    g = ag.Graph()
    g.add("a", lambda: 1)
    if style == "positional":
        g.add("b", lambda v: v, deps=["a"])
    elif style == "keyword":
        g.add("b", lambda a: a)
    else:
        g.add("b", lambda v: v, deps={"v": "a"})
    out = await ag.run(ag.mark_done(g, ["a"]))
    assert _missing(out, "b").missing == ("a",)


async def test_a_cpu_task_below_is_told_too() -> None:
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", abs, deps=["a"], kind="cpu")
    out = await ag.run(ag.mark_done(g, ["a"]), cpu_workers=1)
    assert _missing(out, "b").missing == ("a",)


async def test_fail_fast_stops_on_a_missing_result() -> None:
    with pytest.raises(ag.TaskFailures) as info:
        await ag.run(ag.mark_done(chain(), ["a"]), fail_fast=True)
    assert isinstance(info.value.exceptions[0], ag.MissingResultError)


def test_create_graph_done_without_results() -> None:
    funcs = {"a": lambda: 1, "b": lambda a=0: a + 1, "c": lambda b=0: b + 1}
    deps = {"b": ["a"], "c": ["b"]}
    out = ag.run_sync(ag.create_graph(funcs, deps, io_bound=list(funcs), done=["a"]))
    error = _missing(out, "b")
    assert error.missing == ("a",)
    assert "create_graph" in str(error)
    # None on purpose: taskmap's rule, a None result is not passed (b uses its default).
    given = ag.create_graph(funcs, deps, io_bound=list(funcs), done=["a"], results={"a": None})
    assert ag.run_sync(given).results["c"] == 2


def test_taskmap_compat_still_passes_nothing_for_a_done_task_without_a_result() -> None:
    import asyncgraph.compat.taskmap as taskmap

    def b(*args: Any) -> int:
        return len(args)

    g = taskmap.create_graph({"a": lambda: 1, "b": b}, {"a": [], "b": ["a"]}, done=["a"])
    out = taskmap.run(g)
    assert out.results["b"] == 0


async def test_marked_without_a_result_stays_so_in_a_store(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    g = chain()
    first = await ag.run(ag.mark_done(g, ["a"]), store=db)
    assert first.status["b"] is ag.State.FAILED
    loaded = ag.load(g, db)
    assert loaded.status["a"] is ag.State.DONE  # recorded as marked done...
    assert "no result" in repr(loaded.results["a"])  # ...without a result
    again = await ag.run(g, store=db)  # a is reused as marked; b fails again
    assert _missing(again, "b").missing == ("a",)
    given = ag.mark_done(ag.load(g, db), ["a"], results={"a": 4})
    fixed = await ag.run(ag.reset_failed(given), store=db)
    assert fixed.results["c"] == 50
    assert ag.load(g, db).results["a"] == 4


async def test_a_stored_none_is_still_none(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    g = chain()
    await ag.run(ag.mark_done(g, ["a", "b"], results={"a": None, "b": 7}), store=db)
    loaded = ag.load(g, db)
    assert loaded.results["a"] is None
    assert loaded.results["c"] == 70
