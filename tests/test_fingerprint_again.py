"""A graph's fingerprints taken again (``load`` then ``run``) are exact (issue 15).

``digests`` keeps the last answer for each frozen Dag and gives it again only when every
function's digest, taken again, is what it was: a global edited in between (a notebook's
constant) changes the answer as it did when nothing was kept.
"""

from __future__ import annotations

import asyncgraph as ag
from asyncgraph._fingerprint import _LAST, digests

SCALE = 2
LIMITS = {"top": 10}


def scaled(x: int) -> int:
    return x * SCALE


def capped(scaled: int) -> int:
    return min(scaled, LIMITS["top"])


def build() -> ag.Graph:
    g = ag.Graph()
    g.add("x", lambda: 3, deps=[])
    g.add("scaled", scaled, deps=["x"])
    g.add("capped", capped)
    g.add("other", lambda: 1, deps=[])
    return g


def test_the_second_answer_is_the_first_and_a_fresh_graphs():
    g = build()
    first = digests(g)
    assert g._dag in _LAST
    again = digests(ag.reset(g, "x"))  # a derived graph: the same Dag
    assert again == first
    assert again is not first  # the caller's own dict (a run adds its elements to it)
    assert digests(build()) == first


def test_a_global_edited_in_between_changes_the_fingerprints_again():
    global SCALE
    g = build()
    first = digests(g)
    SCALE = 3
    try:
        again = digests(g)
        fresh = digests(build())
    finally:
        SCALE = 2
    assert again == fresh
    assert again["scaled"] != first["scaled"] and again["capped"] != first["capped"]
    assert again["x"] == first["x"] and again["other"] == first["other"]
    assert digests(g) == first  # and back


def test_a_constant_changed_in_place_is_seen_too():
    g = build()
    first = digests(g)
    LIMITS["top"] = 20
    try:
        again = digests(g)
    finally:
        LIMITS["top"] = 10
    assert again["capped"][0] != first["capped"][0]  # its own code digest
    assert again["scaled"] == first["scaled"]


def test_load_then_an_edit_then_run_stores_what_ran(tmp_path):
    global SCALE
    db = tmp_path / "s.db"
    ag.run_sync(build(), store=db)
    loaded = ag.reset(ag.load(build(), db), "scaled")  # fingerprints taken here
    SCALE = 5
    try:
        out = ag.run_sync(loaded, store=db)
        assert out.results["capped"] == 10 and out.results["scaled"] == 15
        # The rows carry the fingerprints of the code that ran: reused with SCALE 5,
        plan = ag.plan(build(), db)
        assert set(plan["action"]) == {"reuse"}
    finally:
        SCALE = 2
    # and not with SCALE 2.
    plan = ag.plan(build(), db)
    actions = dict(zip(plan["name"], plan["action"], strict=True))
    assert actions["scaled"] == actions["capped"] == "run"
    assert actions["x"] == actions["other"] == "reuse"
