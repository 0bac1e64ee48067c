"""``_options.RunOptions``: the one form of a run's options, validated once when built.

The messages are the public ones (``run``, ``run_sync`` and ``open_run`` raise them
before anything starts); tests/test_runner.py and tests/test_store.py check them
through the public calls too.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

import asyncgraph as ag
from asyncgraph._options import CANCEL_GRACE, STOPPED_BY, RunOptions


def test_the_defaults_are_resolved() -> None:
    options = RunOptions()
    assert options.max_io is None
    assert options.cpu_workers == (os.cpu_count() or 1)
    assert options.limits == {}
    assert options.fail_fast is False
    assert options.deadline is None
    assert options.cancel_grace == CANCEL_GRACE == 5.0
    assert options.store is None
    assert options.progress is False
    assert options.on_event is None


def test_what_is_given_is_kept() -> None:
    def listen(event: ag.Event) -> None:
        pass

    limits = {"db": 2}
    options = RunOptions(
        max_io=3,
        cpu_workers=2,
        limits=limits,
        fail_fast=True,
        deadline=1.5,
        cancel_grace=2,
        store="s.db",
        progress="force",
        on_event=listen,
    )
    assert (options.max_io, options.cpu_workers, options.limits) == (3, 2, {"db": 2})
    assert options.fail_fast is True and options.deadline == 1.5
    assert options.cancel_grace == 2.0 and type(options.cancel_grace) is float
    assert options.store == "s.db" and options.progress == "force"
    assert options.on_event is listen
    limits["db"] = 9  # the options keep a dict of their own
    assert options.limits == {"db": 2}


def test_frozen_slotted_keyword_only() -> None:
    options = RunOptions(max_io=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_io = 2  # type: ignore[misc]
    assert not hasattr(options, "__dict__")
    with pytest.raises(TypeError):
        RunOptions(1)  # type: ignore[misc]
    assert RunOptions(max_io=1) == options


@pytest.mark.parametrize(
    ("given", "error", "message"),
    [
        ({"max_io": 0}, ValueError, "max_io must be at least 1, not 0"),
        ({"max_io": True}, TypeError, "max_io must be an int, not bool True"),
        ({"max_io": 1.0}, TypeError, "max_io must be an int, not float 1.0"),
        ({"cpu_workers": 0}, ValueError, "cpu_workers must be at least 1, not 0"),
        ({"cpu_workers": "2"}, TypeError, "cpu_workers must be an int, not str '2'"),
        ({"limits": [("db", 1)]}, TypeError, "limits must be a dict of name -> int, not list"),
        ({"limits": {1: 2}}, TypeError, "limits keys are resource names (str), not 1"),
        ({"limits": {"db": 0}}, ValueError, "limits['db'] must be at least 1, not 0"),
        ({"limits": {"db": None}}, TypeError, "limits['db'] must be an int, not NoneType None"),
        ({"fail_fast": 1}, TypeError, "fail_fast must be True or False, not 1"),
        ({"deadline": "1"}, TypeError, "deadline must be a number of seconds, not str"),
        ({"deadline": True}, TypeError, "deadline must be a number of seconds, not bool"),
        ({"deadline": 0}, ValueError, "deadline must be a number of seconds > 0, not 0"),
        ({"deadline": float("inf")}, ValueError, "deadline must be a number of seconds > 0"),
        ({"deadline": float("nan")}, ValueError, "deadline must be a number of seconds > 0"),
        ({"cancel_grace": None}, TypeError, "cancel_grace must be a number of seconds, not"),
        ({"cancel_grace": -1}, ValueError, "cancel_grace must be a number of seconds > 0"),
        ({"store": 3}, TypeError, "store must be a file path or a Store object"),
        ({"progress": "maybe"}, ValueError, "progress must be True, False or 'force', not"),
        ({"progress": 1}, TypeError, "progress must be True, False or 'force', not int 1"),
        ({"on_event": 3}, TypeError, "on_event must be a function taking an Event"),
    ],
)
def test_each_wrong_option_is_named(given: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error) as caught:
        RunOptions(**given)
    assert message in str(caught.value)


def test_an_infinite_grace_is_allowed() -> None:
    assert RunOptions(cancel_grace=float("inf")).cancel_grace == float("inf")


def test_a_store_path_or_object(tmp_path: Path) -> None:
    assert RunOptions(store=tmp_path / "s.db").store == tmp_path / "s.db"
    store = ag.SQLiteStore(tmp_path / "t.db")
    try:
        assert RunOptions(store=store).store is store
    finally:
        store.close()


def test_the_checks_go_in_the_order_of_the_parameters() -> None:
    with pytest.raises(ValueError, match="max_io"):
        RunOptions(max_io=0, cpu_workers=0, progress="maybe")
    with pytest.raises(TypeError, match="store"):
        RunOptions(store=3, progress="maybe")


def test_the_public_calls_report_them_before_anything_starts() -> None:
    g = ag.Graph()
    ran: list[str] = []
    g.add("a", lambda: ran.append("a"))
    with pytest.raises(ValueError, match="cpu_workers must be at least 1"):
        ag.run_sync(g, cpu_workers=0)
    with pytest.raises(ValueError, match="progress must be"):
        ag.open_run(g, progress="maybe")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="run\\(\\) needs an asyncgraph.Graph, not dict"):
        ag.run_sync({}, max_io=0)  # type: ignore[arg-type]
    assert ran == []


def test_the_signal_reasons() -> None:
    import signal

    assert STOPPED_BY == {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
