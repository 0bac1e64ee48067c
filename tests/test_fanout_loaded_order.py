"""A loaded graph lists a family's elements by position when their names say it.

The store writes an element's row when it ends, and a rerun element's row is newer than
its kept siblings': a loaded family (and ``plan``) listed ``t[1]`` after ``t[2]`` once
``t[1]`` had been run again. Elements named by position are now in that order; elements
named by ``key=`` keep the store's order (each run's in the order they started).
"""

from __future__ import annotations

from pathlib import Path

import asyncgraph as ag


def build(flag: Path) -> ag.Graph:
    def work(x: int) -> int:
        if x == 20 and flag.exists():
            raise ValueError("20 fails")
        return x

    g = ag.Graph()
    g.add("xs", lambda: [x * 10 for x in range(12)], deps=[])
    g.add("t", work, deps=["xs"], over="xs")
    return g


def test_elements_by_position_are_listed_in_order_after_a_rerun(tmp_path):
    db, flag = tmp_path / "s.db", tmp_path / "flag"
    flag.write_text("")
    ag.run_sync(build(flag), store=db)
    flag.unlink()
    ag.run_sync(build(flag), store=db)  # t[2] runs again: its row is the newest
    want = [f"t[{i}]" for i in range(12)]
    loaded = ag.load(build(flag), db)
    assert [n for n in loaded.tasks if n.startswith("t[")] == want
    plan = ag.plan(build(flag), db)
    assert [n for n in plan["name"] if n.startswith("t[")] == want
    assert loaded.results["t"] == [x * 10 for x in range(12)]
