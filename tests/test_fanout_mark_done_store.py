"""``mark_done`` of one element of a done family, run on a store, is recorded there.

A static task marked done with a result is written to the store by the next run on it
(its row has no start time: given, not computed), so the next load has that result. An
element was left to its family's expansion, which decides by content, but a done
family does not expand: the element's given result was shown by that run and lost by
the store. It is now recorded as a static task's is, with the fingerprint the store has
for it; the family and its reducers keep their own results, as a static task's done
descendants do (what ``mark_done`` says).
"""

from __future__ import annotations

import asyncgraph as ag
from asyncgraph import State


def build() -> ag.Graph:
    g = ag.Graph()
    g.add("xs", lambda: [1, 2, 3], deps=[])
    g.add("sq", lambda x: x * x, deps=["xs"], over="xs")
    g.add("total", lambda sq: sum(sq), deps=["sq"])
    return g


def test_an_element_marked_done_in_a_done_family_is_stored(tmp_path):
    db = tmp_path / "s.db"
    ag.run_sync(build(), store=db)
    marked = ag.mark_done(ag.load(build(), db), "sq[2]", {"sq[2]": 100})
    out = ag.run_sync(marked, store=db)
    assert out.results["sq[2]"] == 100
    assert out.results["sq"] == [1, 4, 9] and out.results["total"] == 14

    again = ag.load(build(), db)
    assert again.status["sq[2]"] is State.DONE
    assert again.results["sq[2]"] == 100
    assert again.results["sq"] == [1, 4, 9]
    assert set(ag.plan(build(), db)["action"]) == {"reuse"}


def test_an_element_marked_done_in_a_failed_family_is_stored_by_its_expansion(tmp_path):
    # (the case that worked before: the family runs again and records it)
    db, flag = tmp_path / "s.db", tmp_path / "flag"

    def sq(x: int) -> int:
        if x == 2 and flag.exists():
            raise ValueError("2 fails")
        return x * x

    def graph() -> ag.Graph:
        g = ag.Graph()
        g.add("xs", lambda: [1, 2, 3], deps=[])
        g.add("sq", sq, deps=["xs"], over="xs")
        g.add("total", lambda sq: sum(sq), deps=["sq"])
        return g

    flag.write_text("")
    ag.run_sync(graph(), store=db)
    marked = ag.mark_done(ag.load(graph(), db), "sq[1]", {"sq[1]": 40})
    out = ag.run_sync(marked, store=db)
    assert out.results["sq"] == [1, 40, 9] and out.results["total"] == 50
    assert ag.load(graph(), db).results["sq[1]"] == 40


def test_a_loaded_family_failed_through_its_elements_has_no_error_of_its_own(tmp_path):
    db, flag = tmp_path / "s.db", tmp_path / "flag"

    def sq(x: int) -> int:
        if x == 2 and flag.exists():
            raise ValueError("2 fails")
        return x * x

    g = ag.Graph()
    g.add("xs", lambda: [1, 2, 3], deps=[])
    g.add("sq", sq, deps=["xs"], over="xs")
    flag.write_text("")
    ran = ag.run_sync(g, store=db)
    loaded = ag.load(g, db)
    assert loaded.status["sq"] is State.FAILED
    assert ran.errors.keys() == loaded.errors.keys() == {"sq[1]"}
    try:
        loaded.raise_for_failures()
    except ag.TaskFailures as group:
        assert [type(e).__name__ for e in group.exceptions] == ["RemoteError"]
        assert "2 fails" in str(group.exceptions[0])
    else:
        raise AssertionError("the failed element was not raised")
