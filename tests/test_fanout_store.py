"""Fan-out on a store: element rows, fingerprints by content, reuse across processes.

A mapped function here never reads a mutable global (see test_mutable_global_rule):
calls are counted in a side file, and the parent's list comes from a file, so the
fingerprints stay those of the code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import asyncgraph as ag
from asyncgraph import State


def build(tmp: Path, *, key: bool = True) -> ag.Graph:
    """users (from users.json) -> score (mapped) -> report; publish element-wise."""
    log = tmp / "calls.log"
    src = tmp / "users.json"
    fail = tmp / "fail"

    g = ag.Graph()

    def users():
        with open(log, "a") as f:
            f.write("users\n")
        return json.loads(src.read_text())

    def score(users):
        with open(log, "a") as f:
            f.write(f"score:{users['id']}\n")
        if fail.exists() and users["id"] in fail.read_text().split():
            raise ValueError(f"bad {users['id']}")
        return users["v"] * 10

    def report(score):
        with open(log, "a") as f:
            f.write("report\n")
        return sorted(score.values()) if isinstance(score, dict) else score

    def publish(score):
        with open(log, "a") as f:
            f.write(f"publish:{score}\n")
        return -score

    g.add("users", users, deps=[])
    g.add("score", score, deps=["users"], over="users", key=(lambda u: u["id"]) if key else None)
    g.add("report", report, deps=["score"])
    g.add("publish", publish, deps=["score"], over="score")
    return g


def users(tmp: Path, ids: str) -> None:
    (tmp / "users.json").write_text(
        json.dumps([{"id": i, "v": ord(i) - ord("a") + 1} for i in ids])
    )


def calls(tmp: Path) -> list[str]:
    log = tmp / "calls.log"
    out = log.read_text().split() if log.exists() else []
    log.write_text("")
    return sorted(out)


def run(tmp: Path, g: ag.Graph) -> ag.Graph:
    return ag.run_sync(g, store=tmp / "s.db")


def test_a_family_on_a_store_runs_then_is_reused_by_a_new_graph(tmp_path):
    users(tmp_path, "abc")
    out = run(tmp_path, build(tmp_path))
    assert out.results["report"] == [10, 20, 30]
    assert calls(tmp_path) == sorted(
        [
            "users",
            "score:a",
            "score:b",
            "score:c",
            "report",
            "publish:10",
            "publish:20",
            "publish:30",
        ]
    )
    again = run(tmp_path, build(tmp_path))  # a new graph object: as a new process
    assert calls(tmp_path) == []
    assert again.results["report"] == [10, 20, 30]
    assert again.results["score[b]"] == 20
    loaded = ag.load(build(tmp_path), tmp_path / "s.db")
    assert loaded.status["score[c]"] is State.DONE
    assert loaded.status["publish[a]"] is State.DONE
    assert loaded.tasks["score[c]"].family == "score"


def test_no_store_mismatch_for_elements(tmp_path):
    users(tmp_path, "abc")
    run(tmp_path, build(tmp_path))
    ag.load(build(tmp_path), tmp_path / "s.db")  # no StoreMismatchError
    g = ag.Graph()
    g.add("other", lambda: 1, deps=[])
    with pytest.raises(ag.StoreMismatchError):
        ag.load(g, tmp_path / "s.db")


def test_a_failed_element_reruns_alone_in_a_new_process(tmp_path):
    users(tmp_path, "abc")
    (tmp_path / "fail").write_text("b")
    out = run(tmp_path, build(tmp_path))
    assert out.status["score[b]"] is State.FAILED
    assert out.status["report"] is State.SKIPPED
    calls(tmp_path)
    (tmp_path / "fail").unlink()
    loaded = ag.load(build(tmp_path), tmp_path / "s.db")
    assert loaded.status["score[b]"] is State.FAILED
    assert loaded.status["score[a]"] is State.DONE
    done = ag.run_sync(ag.reset_failed(loaded), store=tmp_path / "s.db")
    assert calls(tmp_path) == ["publish:20", "report", "score:b"]
    assert done.results["report"] == [10, 20, 30]
    # A plain run of the bare definitions does the same: reset_failed(load(...)).
    assert run(tmp_path, build(tmp_path)).results["publish"] == [-10, -20, -30]
    assert calls(tmp_path) == []


@pytest.mark.parametrize("key", [True, False])
def test_a_list_that_grows_shrinks_and_is_reordered(tmp_path, key):
    db = tmp_path / "s.db"
    users(tmp_path, "abc")
    run(tmp_path, build(tmp_path, key=key))
    calls(tmp_path)

    def rerun_parent():
        g = ag.reset(ag.load(build(tmp_path, key=key), db), "users")
        return ag.run_sync(g, store=db)

    users(tmp_path, "zabc")  # grows at the front
    out = rerun_parent()
    ran = calls(tmp_path)
    assert out.results["report"] == [260, 10, 20, 30]
    if key:
        assert ran == ["publish:260", "report", "score:z", "users"]
    else:  # by position every element's item changed: no element inherits another's
        assert ran.count("users") == 1
        assert {c for c in ran if c.startswith("score:")} == {
            "score:z",
            "score:a",
            "score:b",
            "score:c",
        }
    for i, name in enumerate(n for n in out.tasks if n.startswith("score[")):
        assert out.results[name] == [260, 10, 20, 30][i]

    users(tmp_path, "cb")  # shrinks and is reordered
    out = rerun_parent()
    ran = calls(tmp_path)
    assert out.results["report"] == [30, 20]
    if key:
        assert ran == ["report", "users"]  # c and b: same items, same keys
        assert "score[a]" not in out.status
        assert "score[z]" not in out.status
    loaded = ag.load(build(tmp_path, key=key), db)
    assert len([n for n in loaded.tasks if n.startswith("score[")]) == 2  # gone ones left out


def test_same_list_by_position_reuses_every_element(tmp_path):
    db = tmp_path / "s.db"
    users(tmp_path, "abc")
    run(tmp_path, build(tmp_path, key=False))
    calls(tmp_path)
    g = ag.reset(ag.load(build(tmp_path, key=False), db), "users")
    out = ag.run_sync(g, store=db)
    assert calls(tmp_path) == ["report", "users"]
    assert out.results["score[1]"] == 20


def test_reset_of_one_element_on_a_store(tmp_path):
    db = tmp_path / "s.db"
    users(tmp_path, "abc")
    run(tmp_path, build(tmp_path))
    calls(tmp_path)
    g = ag.reset(ag.load(build(tmp_path), db), "score[c]")
    out = ag.run_sync(g, store=db)
    assert calls(tmp_path) == ["publish:30", "report", "score:c"]  # never a sibling
    assert out.results["score"] == [10, 20, 30]
    out = ag.run_sync(ag.reset(ag.load(build(tmp_path), db), "score"), store=db)
    assert calls(tmp_path) == sorted(
        ["score:a", "score:b", "score:c", "report", "publish:10", "publish:20", "publish:30"]
    )


class Unpicklable:
    """A result whose loading raises: plan must never load one."""

    def __init__(self, v):
        self.v = v

    def __reduce__(self):
        return (_refuse, (self.v,))


def _refuse(v):
    raise AssertionError("plan unpickled a result")


def test_plan_per_element_without_unpickling(tmp_path):
    db = tmp_path / "s.db"
    users(tmp_path, "abc")
    (tmp_path / "fail").write_text("b")
    g = build(tmp_path)
    ag.run_sync(g, store=db)
    plan = ag.plan(build(tmp_path), db)
    rows = {r["name"]: (r["action"], r["reason"]) for _, r in plan.iterrows()}
    assert rows["score[a]"][0] == "reuse"
    assert rows["score[b]"] == ("run", "failed last time")
    assert rows["publish[b]"][0] == "run"
    assert rows["publish[a]"][0] == "reuse"
    assert rows["report"][0] == "run"
    # The parent reruns: the family expands then.
    loaded = ag.reset(ag.load(build(tmp_path), db), "users")
    plan = ag.plan(loaded, db)
    rows = {r["name"]: (r["action"], r["reason"]) for _, r in plan.iterrows()}
    assert rows["users"] == ("run", "reset by the user")
    assert rows["score"][1] == "expands when 'users' runs (last time: 3 elements)"
    assert rows["score[a]"][0] == "run"


def test_plan_never_unpickles_an_element_result(tmp_path):
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("xs", lambda: [1, 2], deps=[])
    g.add("u", Unpicklable, deps=["xs"], over="xs")
    ag.run_sync(g, store=db)
    plan = ag.plan(g, db)
    assert set(plan["name"]) >= {"u[0]", "u[1]"}
    assert set(plan.loc[plan["name"].str.startswith("u["), "action"]) == {"reuse"}


def test_plan_lists_gone_elements(tmp_path):
    db = tmp_path / "s.db"
    users(tmp_path, "abc")
    ag.run_sync(build(tmp_path), store=db)
    users(tmp_path, "ab")
    ag.run_sync(ag.reset(ag.load(build(tmp_path), db), "users"), store=db)
    plan = ag.plan(build(tmp_path), db)
    gone = plan[plan["action"] == "gone"]
    assert list(gone["name"]) == ["score[c]", "publish[c]"] or set(gone["name"]) == {
        "score[c]",
        "publish[c]",
    }
    assert "'users' no longer returns it" in gone.iloc[0]["reason"]


SEEN: list[str] = []  # a mutable global a mapped function reads: see the test below


def _reads_a_global(x):
    SEEN.append(x)  # the list's contents are part of the function's fingerprint
    return x.upper()


def test_mutable_global_rule_reruns_every_element(tmp_path):
    # The documented rule (docs/store.md): a task that closes over a mutable object has
    # that object's state in its fingerprint. A mapped function that appends to a global
    # changes its own fingerprint as it runs, so every element reruns next time.
    db = tmp_path / "s.db"
    SEEN.clear()

    def graph():
        g = ag.Graph()
        g.add("xs", lambda: ["a", "b", "c"], deps=[])
        g.add("up", _reads_a_global, deps=["xs"], over="xs")
        return g

    ag.run_sync(graph(), store=db)
    assert sorted(SEEN) == ["a", "b", "c"]
    ag.run_sync(graph(), store=db)
    assert sorted(SEEN) == ["a", "a", "b", "b", "c", "c"]  # all three again
    plan = ag.plan(graph(), db)
    assert set(plan.loc[plan["name"].str.startswith("up["), "action"]) == {"run"}


def test_an_item_that_cannot_be_digested_falls_back_to_its_position(tmp_path):
    import random
    import threading

    from asyncgraph._fingerprint import element_fingerprint, input_digest

    assert input_digest({"v": 1, "lock": threading.Lock()}) is None
    assert input_digest({"v": 1}) == input_digest({"v": 1})
    assert input_digest({"v": 1}) != input_digest({"v": 2})
    t = ("code", b"binding")
    by_pos = [element_fingerprint(t, [], "0", None, "parent", i) for i in (0, 1)]
    assert by_pos[0] != by_pos[1]
    assert element_fingerprint(t, [], "0", None, "other", 0) != by_pos[0]

    db = tmp_path / "s.db"
    log = tmp_path / "calls.log"

    def graph():
        g = ag.Graph()

        def items():  # a generator's state is counted by its type only (and pickles)
            return [{"v": i, "rng": random.Random(i)} for i in range(3)]

        def use(item):
            with open(log, "a") as f:
                f.write(f"{item['v']}\n")
            return item["v"]

        g.add("items", items, deps=[])
        g.add("use", use, deps=["items"], over="items")
        return g

    ag.run_sync(graph(), store=db)
    log.write_text("")
    out = ag.run_sync(ag.reset(ag.load(graph(), db), "items"), store=db)
    assert log.read_text() == ""  # by position, the parent's code unchanged: reused
    assert out.results["use"] == [0, 1, 2]


def test_a_store_of_a_graph_without_fan_out_takes_one_with_it(tmp_path):
    # Today's stores open, run and resume: the graph gains a mapped task.
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("xs", lambda: [1, 2], deps=[])
    g.add("total", lambda xs: sum(xs), deps=["xs"])
    ag.run_sync(g, store=db)
    g.add("double", lambda xs: xs * 2, deps=["xs"], over="xs")
    out = ag.run_sync(g, store=db)
    assert out.results["double"] == [2, 4]
    again = ag.load(g, db)
    assert again.status["double[1]"] is State.DONE


def test_a_loaded_element_run_on_its_own_finds_its_item_by_key(tmp_path):
    db = tmp_path / "s.db"
    users(tmp_path, "abc")
    run(tmp_path, build(tmp_path))
    calls(tmp_path)
    loaded = ag.load(build(tmp_path), db)
    assert "not loaded" in repr(loaded.tasks["score[b]"].value)  # nothing unpickled
    alone = ag.reset(ag.subgraph(loaded, "score[b]"), "score[b]")
    out = ag.run_sync(alone, store=db)
    assert calls(tmp_path) == ["score:b"]
    assert out.results["score[b]"] == 20
    pos = tmp_path / "pos"
    pos.mkdir()
    users(pos, "xy")
    run(pos, build(pos, key=False))
    calls(pos)
    loaded = ag.load(build(pos, key=False), pos / "s.db")
    out = ag.run_sync(ag.reset(ag.subgraph(loaded, "publish[1]"), "score[1]"), store=pos / "s.db")
    assert calls(pos) == ["publish:250", "score:y"]


def test_an_element_wise_family_over_a_done_one_keeps_its_parents_order(tmp_path):
    db = tmp_path / "s.db"
    # Elements end out of order: the stored rows' order is not the parent's.
    g = ag.Graph()

    async def slow_first(item):
        import asyncio

        if item == "a":
            await asyncio.sleep(0.05)
        return item.upper()

    def graph():
        g = ag.Graph()
        g.add("xs", lambda: ["a", "b", "c"], deps=[])
        g.add("up", slow_first, deps=["xs"], over="xs", key=lambda x: f"k{x}")
        g.add("tag", lambda u: u + "!", deps=["up"], over="up")
        return g

    ag.run_sync(graph(), store=db)
    again = ag.run_sync(ag.reset(ag.load(graph(), db), "tag"), store=db)
    assert again.results["tag"] == ["A!", "B!", "C!"]
    assert again.results["up"] == ["A", "B", "C"]
    del g
