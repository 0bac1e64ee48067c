"""An element's other dependencies rerun: the element runs again (issue 13, trust).

A mapped task's element is reused by its item's content: its fingerprint covers the
item's value, but its other dependencies (``weight`` below) only by their fingerprints,
which cover code, not data. When such a dependency ran again in the run (reset, or
failed last time), its result may differ, and an element computed from the old one is
stale: it runs, as a static task below a rerun task does. Before, the family's
expansion took the element back from the store by its (unchanged) fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncgraph as ag
from asyncgraph import State


def build(tmp: Path, calls: list[int]) -> ag.Graph:
    settings = tmp / "weight.json"
    broken = tmp / "broken"

    g = ag.Graph()

    @g.task
    def items() -> list[int]:
        return [1, 2, 3]

    @g.task
    def weight() -> int:
        if broken.exists():
            raise RuntimeError("the weight's source is down")
        value: int = json.loads(settings.read_text())
        return value

    @g.task(over="items")
    def score(items: int, weight: int) -> int:
        calls.append(items)
        return items * weight

    @g.task(over="score")
    def publish(score: int) -> str:
        return f"<{score}>"

    @g.task
    def total(score: list[int]) -> int:
        return sum(score)

    return g


def test_an_element_whose_other_dependency_was_reset_runs_again(tmp_path):
    db = tmp_path / "s.db"
    (tmp_path / "weight.json").write_text("10")
    calls: list[int] = []
    first = ag.run_sync(build(tmp_path, calls), store=db)
    assert first.results["score"] == [10, 20, 30]
    calls.clear()

    (tmp_path / "weight.json").write_text("100")
    again = ag.reset(ag.load(build(tmp_path, calls), db), "weight")
    out = ag.run_sync(again, store=db)
    assert sorted(calls) == [1, 2, 3]
    assert out.results["score"] == [100, 200, 300]
    assert out.results["publish"] == ["<100>", "<200>", "<300>"]
    assert out.results["total"] == 600

    calls.clear()
    out = ag.run_sync(build(tmp_path, calls), store=db)  # and they are reused from now on
    assert calls == []
    assert out.results["total"] == 600


def test_an_element_whose_other_dependency_failed_last_time_runs_again(tmp_path):
    db = tmp_path / "s.db"
    (tmp_path / "weight.json").write_text("10")
    calls: list[int] = []
    ag.run_sync(build(tmp_path, calls), store=db)  # score[k] done with weight 10
    (tmp_path / "broken").write_text("")
    failed = ag.run_sync(ag.reset(ag.load(build(tmp_path, calls), db), "weight"), store=db)
    assert failed.status["weight"] is State.FAILED
    assert failed.status["score"] is State.SKIPPED
    calls.clear()

    (tmp_path / "broken").unlink()
    (tmp_path / "weight.json").write_text("7")
    out = ag.run_sync(ag.reset_failed(ag.load(build(tmp_path, calls), db)), store=db)
    # The rows of score[k] from the first run have today's fingerprints, but were
    # computed with weight 10: none is taken back.
    assert sorted(calls) == [1, 2, 3]
    assert out.results["score"] == [7, 14, 21]
    assert out.results["total"] == 42


def test_a_parent_that_reran_with_the_same_items_still_reuses_its_elements(tmp_path):
    # The mapped input itself is covered by content: its rerun keeps the elements.
    db = tmp_path / "s.db"
    (tmp_path / "weight.json").write_text("10")
    calls: list[int] = []
    ag.run_sync(build(tmp_path, calls), store=db)
    calls.clear()
    out = ag.run_sync(ag.reset(ag.load(build(tmp_path, calls), db), "items"), store=db)
    assert calls == []
    assert out.results["score"] == [10, 20, 30]
