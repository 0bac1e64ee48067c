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
