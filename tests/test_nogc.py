"""``_nogc.paused``: the collector is off inside, and as it was after (issue 15)."""

from __future__ import annotations

import gc

import pytest

import asyncgraph as ag
from asyncgraph._nogc import paused


def test_paused_turns_the_collector_off_and_back_on():
    assert gc.isenabled()
    with paused():
        assert not gc.isenabled()
        with paused():  # nested: the inner one leaves it to the outer
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_paused_turns_it_back_on_when_the_block_raises():
    with pytest.raises(ValueError), paused():
        raise ValueError("inside")
    assert gc.isenabled()


def test_a_program_that_runs_without_the_collector_keeps_it_off():
    gc.disable()
    try:
        with paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_load_plan_and_a_run_that_expands_leave_the_collector_on(tmp_path):
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("xs", lambda: [1, 2, 3], deps=[])
    g.add("double", lambda x: 2 * x, deps=["xs"], over="xs")
    ag.run_sync(g, store=db)
    assert gc.isenabled()
    ag.plan(g, db)
    assert gc.isenabled()
    loaded = ag.load(g, db)
    assert gc.isenabled()
    out = ag.run_sync(ag.reset(loaded, "xs"), store=db)
    assert out.results["double"] == [2, 4, 6]
    assert gc.isenabled()
