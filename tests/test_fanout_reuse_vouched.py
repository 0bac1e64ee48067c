"""A family re-expanded after its parent reran keeps its elements reusable afterwards.

Resetting a mapped task's parent reruns the parent; the family expands again and keeps,
by their items' content, the elements whose item is unchanged. Those elements' store rows
are older than the parent's new one, so the next run used to take them for stale
("upstream result changed") and ran them all again: work done twice. A family collected
done in the later run vouches for its elements; one that was not (failed) vouches
element by element: each element it kept has its row re-stamped with that run's id
(``SQLiteStore.vouch``), so it is reused too (issue 13; more in
``test_fanout_vouch_each.py``).
"""

from __future__ import annotations

from pathlib import Path

import asyncgraph as ag
from asyncgraph import State


def build(items: list[int], calls: list[str]) -> ag.Graph:
    g = ag.Graph()

    @g.task
    def users() -> list[int]:
        calls.append("users")
        return list(items)

    @g.task(over="users")
    def score(users: int) -> int:
        calls.append(f"score {users}")
        if users < 0:
            raise ValueError("negative")
        return users * 10

    @g.task(over="score")
    def publish(score: int) -> int:
        calls.append(f"publish {score}")
        return score

    @g.task
    def total(score: list[int]) -> int:
        calls.append("total")
        return sum(score)

    return g


def test_after_the_parent_reran_the_next_run_reuses_every_element(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    calls: list[str] = []
    ag.run_sync(build([1, 2, 3], calls), store=store)
    assert len(calls) == 8
    calls.clear()
    again = ag.reset(ag.load(build([1, 2, 4], calls), store), "users")
    out = ag.run_sync(again, store=store)
    # the parent reran; only the new item's element (and its publish) was computed
    assert sorted(calls) == ["publish 40", "score 4", "total", "users"]
    assert out.results["total"] == 70
    calls.clear()
    plan = ag.plan(build([1, 2, 4], calls), store)
    assert set(plan["action"]) == {"reuse"}, plan
    out = ag.run_sync(build([1, 2, 4], calls), store=store)
    assert calls == []
    assert out.results["score"] == [10, 20, 40] and out.results["total"] == 70


def test_a_family_that_did_not_end_done_vouches_for_the_elements_it_kept(
    tmp_path: Path,
) -> None:
    # (its kept siblings were computed again before: work done twice; each kept element
    # now vouches for itself, and a stale result is still never reused)
    store = tmp_path / "s.db"
    calls: list[str] = []
    ag.run_sync(build([1, 2, 3], calls), store=store)
    calls.clear()
    # the parent reruns and one new item fails: the family is not collected done
    out = ag.run_sync(ag.reset(ag.load(build([1, 2, -3], calls), store), "users"), store=store)
    assert out.status["score[2]"] is State.FAILED and out.status["score"] is State.FAILED
    calls.clear()
    out = ag.run_sync(ag.reset_failed(ag.load(build([1, 2, -3], calls), store)), store=store)
    assert out.status["score[2]"] is State.FAILED
    assert calls == ["score -3"]  # the failed element only: its kept siblings are reused
    assert out.results["score[0]"] == 10 and out.results["score[1]"] == 20
