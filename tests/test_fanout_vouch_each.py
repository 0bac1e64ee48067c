"""Each element a re-expanded family keeps vouches for itself (issue 13).

When a mapped task's parent reruns, its family expands again and keeps, by their items'
content, the elements whose item is unchanged; their store rows stay older than the
parent's new row. A family collected done vouches for them (its row is as recent as the
parent's). One that did not end done (an element failed, the run was cancelled) used to
vouch for nothing, so the next run took its kept elements for stale and computed them
again. Now the run re-stamps each element it kept with its own run id once its last
row is committed (``SQLiteStore.vouch``): call counters across three runs prove the
work is done once, and the cases below prove no stale result is ever reused.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncgraph as ag
from asyncgraph import EventKind, State


def build(tmp: Path) -> ag.Graph:
    """users (read from a file) -> score (mapped, by key) -> publish (element-wise);
    total reduces score. score fails on an item while ``fail-<item>`` exists, and
    waits forever on one while ``hang-<item>`` does. Each call is logged to a file (a
    list in the functions' closure would be part of their fingerprints)."""
    source = tmp / "users.json"
    log = tmp / "calls.log"

    def call(what: str) -> None:
        with log.open("a") as f:
            f.write(what + "\n")

    g = ag.Graph()

    @g.task
    def users() -> list[dict[str, Any]]:
        call("users")
        found: list[dict[str, Any]] = json.loads(source.read_text())
        return found

    @g.task(over="users", key=lambda u: u["id"])
    async def score(users: dict[str, Any]) -> int:
        call(f"score {users['id']}")
        if (tmp / f"fail-{users['id']}").exists():
            raise ValueError(f"{users['id']} fails")
        if (tmp / f"hang-{users['id']}").exists():
            await asyncio.Event().wait()
        return int(users["n"]) * 10

    @g.task(over="score")
    def publish(score: int) -> str:
        call(f"publish {score}")
        return f"<{score}>"

    @g.task
    def total(score: list[int]) -> int:
        call("total")
        return sum(score)

    return g


def calls(tmp: Path) -> list[str]:
    """The calls logged since the last look, sorted; the log starts again."""
    log = tmp / "calls.log"
    found = sorted(log.read_text().splitlines()) if log.exists() else []
    log.unlink(missing_ok=True)
    return found


def users(tmp: Path, **n: int) -> None:
    (tmp / "users.json").write_text(json.dumps([{"id": k, "n": v} for k, v in n.items()]))


def actions(plan: Any) -> dict[str, str]:
    return dict(zip(plan["name"], plan["action"], strict=True))


def test_a_failed_family_vouches_for_each_element_it_kept(tmp_path):
    db = tmp_path / "s.db"
    users(tmp_path, a=1, b=2, c=3, d=4)
    ag.run_sync(build(tmp_path), store=db)  # run 1: everything done
    assert calls(tmp_path) == sorted(
        ["users", "total"]
        + [f"score {k}" for k in "abcd"]
        + [f"publish {n}" for n in (10, 20, 30, 40)]
    )

    # run 2: the parent reruns; c's and d's items changed, d fails; a and b are kept
    users(tmp_path, a=1, b=2, c=5, d=6)
    (tmp_path / "fail-d").write_text("")
    out = ag.run_sync(ag.reset(ag.load(build(tmp_path), db), "users"), store=db)
    assert calls(tmp_path) == ["publish 50", "score c", "score d", "users"]
    assert out.status["score"] is State.FAILED and out.status["total"] is State.SKIPPED

    # what the next run will do, without unpickling: a, b and c reused, d runs
    (tmp_path / "fail-d").unlink()
    plan = actions(ag.plan(build(tmp_path), db))
    assert {k: plan[f"score[{k}]"] for k in "abcd"} == {
        "a": "reuse",
        "b": "reuse",
        "c": "reuse",
        "d": "run",
    }
    assert plan["publish[a]"] == plan["publish[b]"] == plan["publish[c]"] == "reuse"

    # run 3: a plain run of the same definitions computes d (and what it feeds) only
    out = ag.run_sync(build(tmp_path), store=db)
    assert calls(tmp_path) == ["publish 60", "score d", "total"]
    assert out.results["score"] == [10, 20, 50, 60]
    assert out.results["publish"] == ["<10>", "<20>", "<50>", "<60>"]
    assert out.results["total"] == 140


def test_a_cancelled_family_vouches_for_each_element_it_kept(tmp_path):
    db = tmp_path / "s.db"
    users(tmp_path, a=1, b=2, c=3)
    ag.run_sync(build(tmp_path), store=db)
    calls(tmp_path)

    async def cancelled_when_c_starts() -> ag.Graph:
        graph = ag.reset(ag.load(build(tmp_path), db), "users")
        async with ag.open_run(graph, store=db) as r:
            async for event in r.events():
                if event.kind is EventKind.STARTED and event.task == "score[c]":
                    r.cancel()
                    break
        return r.graph

    users(tmp_path, a=1, b=2, c=7)
    (tmp_path / "hang-c").write_text("")
    out = asyncio.run(cancelled_when_c_starts())
    assert out.status["score[c]"] is State.CANCELLED
    assert out.status["score[a]"] is State.DONE and out.status["score[b]"] is State.DONE
    assert calls(tmp_path) == ["score c", "users"]

    (tmp_path / "hang-c").unlink()
    out = ag.run_sync(build(tmp_path), store=db)
    assert calls(tmp_path) == ["publish 70", "score c", "total"]
    assert out.results["total"] == 100


def test_a_vouched_element_whose_item_changes_later_runs_again(tmp_path):
    # The re-stamp says "valid for the inputs of that run", nothing more: a later change
    # of its item is seen by content as the family expands again.
    db = tmp_path / "s.db"
    users(tmp_path, a=1, b=2)
    ag.run_sync(build(tmp_path), store=db)
    users(tmp_path, a=1, b=3)
    (tmp_path / "fail-b").write_text("")
    ag.run_sync(ag.reset(ag.load(build(tmp_path), db), "users"), store=db)  # a vouched
    (tmp_path / "fail-b").unlink()
    calls(tmp_path)

    users(tmp_path, a=9, b=3)
    out = ag.run_sync(ag.reset(ag.load(build(tmp_path), db), "users"), store=db)
    assert calls(tmp_path) == [
        "publish 30",
        "publish 90",
        "score a",
        "score b",
        "total",
        "users",
    ]
    assert out.results["score"] == [90, 30]


def test_the_re_stamp_comes_after_every_row_of_the_run(tmp_path):
    # So a crash before it leaves the elements as they were: computed again next time.
    db = tmp_path / "s.db"
    users(tmp_path, a=1, b=2)
    ag.run_sync(build(tmp_path), store=db)

    seen: list[tuple[str, list[str]]] = []

    class Recording(ag.SQLiteStore):
        def write(self, run_id: int, rows: Any, counts: Any = None) -> None:
            seen.append(("write", [r[0] for r in rows]))
            super().write(run_id, rows, counts)

        def vouch(self, run_id: int, results: Any) -> None:
            seen.append(("vouch", sorted(results)))
            super().vouch(run_id, results)

    users(tmp_path, a=1, b=3)
    (tmp_path / "fail-b").write_text("")
    store = Recording(db)
    try:
        ag.run_sync(ag.reset(ag.load(build(tmp_path), store), "users"), store=store)
    finally:
        store.close()
    assert seen[-1] == ("vouch", ["publish[a]", "score[a]"])
    assert [kind for kind, _ in seen].count("vouch") == 1
    written = [n for kind, names in seen if kind == "write" for n in names]
    assert "users" in written and "score[b]" in written


def test_vouch_re_stamps_only_a_row_that_still_holds_the_result(tmp_path):
    db = tmp_path / "s.db"
    users(tmp_path, a=1, b=2)
    ag.run_sync(build(tmp_path), store=db)
    store = ag.SQLiteStore(db)
    try:
        before = store.tasks()
        store.acquire()
        run = store.begin_run()
        store.vouch(
            run,
            {
                "score[a]": before["score[a]"].result_id,  # still its result: re-stamped
                "score[b]": before["score[b]"].result_id + 1,  # another result: left
            },
        )
        store.end_run(run, "done", {})
        store.release()
        after = store.tasks()
    finally:
        store.close()
    assert after["score[a]"].run_id == run > before["score[a]"].run_id
    assert after["score[b]"] == before["score[b]"]
    assert after["score[a]"].finished == before["score[a]"].finished
    assert [r for r in after if after[r] != before[r]] == ["score[a]"]
