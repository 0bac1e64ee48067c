"""Fan-out, in memory: ``over=`` (and ``key=``) on ``Graph.add`` and ``@g.task``.

Elements are real tasks (``score[0]``, ``score[alice]``) in status, results, the table
and events; the template stands for the family. Concurrency and ordering are proven with
events; ``fail_after`` only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections import Counter

import anyio
import pytest
from conftest import run_until_deadline

import asyncgraph as ag
from asyncgraph import State

GUARD = 30  # seconds: only to turn a hang into a failure, never a speed assertion


def users_graph(users, *, key=True, calls=None, fail=(), **score_opts):
    """users -> score (mapped, keyed by id) -> report (reducer); publish element-wise."""
    calls = calls if calls is not None else Counter()
    g = ag.Graph()

    async def users_():
        return users

    g.add("users", users_, deps=[])

    @g.task
    def weights():
        return 10

    def score(users, weights):
        calls[f"score:{users['id']}"] += 1
        if users["id"] in fail:
            raise ValueError(f"bad user {users['id']}")
        return users["v"] * weights

    g.add("score", score, over="users", key=(lambda u: u["id"]) if key else None, **score_opts)

    @g.task
    def report(score):
        calls["report"] += 1
        return sum(score)

    @g.task(over="score")
    async def publish(score):
        calls[f"publish:{score}"] += 1
        return -score

    return g, calls


USERS = [{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "c", "v": 3}]


async def test_elements_are_real_tasks_and_the_template_is_the_family():
    g, calls = users_graph(USERS)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    st = out.status
    for n in ("score[a]", "score[b]", "score[c]", "publish[a]", "publish[b]", "publish[c]"):
        assert st[n] is State.DONE
        assert n in out.tasks
    assert out.results["score[b]"] == 20
    assert out.results["score"] == [10, 20, 30]  # in the parent's order
    assert out.results["report"] == 60
    assert out.results["publish"] == [-10, -20, -30]
    assert out.results["publish[c]"] == -30
    assert st["score"] is State.DONE
    assert out.tasks["score[a]"].family == "score"
    assert out.tasks["score[a]"].fn is g.tasks["score"].fn
    assert calls["report"] == 1
    assert sum(v for k, v in calls.items() if k.startswith("score:")) == 3
    # The input graph is untouched: its Dag has no elements.
    assert "score[a]" not in g.tasks
    assert g.status["score"] is State.PENDING


async def test_positional_names_without_key_and_every_binding_style():
    g = ag.Graph()
    g.add("xs", lambda: [5, 6, 7], deps=[])
    g.add("k", lambda: 100, deps=[])
    g.add("pos", lambda x, k: x + k, deps=["xs", "k"], over="xs")
    g.add("kw", lambda *, item, k: item * k, deps={"item": "xs", "k": "k"}, over="xs")

    @g.task(over="xs")
    def named(xs, k):
        return (xs, k)

    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results["pos"] == [105, 106, 107]
    assert out.results["pos[1]"] == 106
    assert out.results["kw"] == [500, 600, 700]
    assert out.results["named[2]"] == (7, 100)
    assert [n for n in out.tasks if n.startswith("pos[")] == ["pos[0]", "pos[1]", "pos[2]"]


async def test_mapping_maps_by_key_and_collects_a_dict():
    g = ag.Graph()
    g.add("ages", lambda: {"alice": 30, "bob": 40, 7: 1}, deps=[])
    g.add("older", lambda ages: ages + 1, over="ages")

    @g.task(over="older")
    def label(older):
        return f"{older}y"

    @g.task
    def summary(label):
        return label

    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results["older"] == {"alice": 31, "bob": 41, 7: 2}
    assert out.results["older[alice]"] == 31
    assert out.results["older[7]"] == 2
    assert out.results["summary"] == {"alice": "31y", "bob": "41y", 7: "2y"}
    assert out.results["label[bob]"] == "41y"


async def test_a_tuple_and_a_range_map_by_position():
    g = ag.Graph()
    g.add("t", lambda: (1, 2), deps=[])
    g.add("r", lambda: range(3), deps=[])
    g.add("dt", lambda t: t * 2, over="t")
    g.add("dr", lambda r: r * 3, over="r")
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results["dt"] == [2, 4]
    assert out.results["dr"] == [0, 3, 6]


async def test_empty_list_makes_the_family_done_and_the_reducer_runs_with_it():
    g, calls = users_graph([])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["score"] is State.DONE
    assert out.results["score"] == []
    assert out.results["publish"] == []
    assert out.results["report"] == 0
    assert calls["report"] == 1
    assert not [n for n in out.tasks if "[" in n]


async def test_empty_dict_collects_an_empty_dict():
    g = ag.Graph()
    g.add("d", lambda: {}, deps=[])
    g.add("m", lambda d: d, over="d")
    g.add("r", lambda m: m, deps=["m"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results["m"] == {}
    assert out.results["r"] == {}


@pytest.mark.parametrize(
    ("value", "typename"),
    [("abc", "str"), (b"xy", "bytes"), (42, "int"), ({1, 2}, "set"), (None, "NoneType")],
)
async def test_an_unmappable_result_fails_the_mapped_task_not_the_parent(value, typename):
    g = ag.Graph()
    g.add("parent", lambda: value, deps=[])
    g.add("m", lambda parent: parent, over="parent")
    g.add("r", lambda m: m, deps=["m"])
    g.add("other", lambda: 1, deps=[])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["parent"] is State.DONE
    assert out.status["m"] is State.FAILED
    assert out.status["r"] is State.SKIPPED
    assert out.status["other"] is State.DONE
    err = out.errors["m"]
    assert isinstance(err, TypeError)
    msg = str(err)
    assert "'m'" in msg
    assert "'parent'" in msg
    assert typename in msg
    assert "Sequence" in msg
    assert "Mapping" in msg
    assert "list(" in msg  # what to pass
    assert out.records["m"].traceback


async def test_repeated_keys_fail_the_family_naming_both_positions():
    g, calls = users_graph([{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "a", "v": 3}])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["score"] is State.FAILED
    assert out.status["report"] is State.SKIPPED
    assert out.status["publish"] is State.SKIPPED
    msg = str(out.errors["score"])
    assert "positions 0 and 2" in msg
    assert "'a'" in msg
    assert "unique" in msg
    assert not any(k.startswith("score:") for k in calls)  # no element ran
    assert not [n for n in out.tasks if "[" in n]


async def test_keys_that_collide_as_text_are_repeated_too():
    g = ag.Graph()
    g.add("d", lambda: {1: "x", "1": "y"}, deps=[])
    g.add("m", lambda d: d, over="d")
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["m"] is State.FAILED
    assert "keys 1 and '1'" in str(out.errors["m"])


@pytest.mark.parametrize(
    ("key", "what"),
    [
        (lambda u: "", "non-empty"),
        (lambda u: "a[1]", "free of '['"),
        (lambda u: ("a", 1), "tuple"),
        (lambda u: 1.5, "float"),
        (lambda u: True, "bool"),
        (lambda u: u["missing"], "KeyError"),
    ],
)
async def test_malformed_keys_fail_the_family(key, what):
    g = ag.Graph()
    g.add("xs", lambda: [{"id": 1}], deps=[])
    g.add("m", lambda xs: xs, over="xs", key=key)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["xs"] is State.DONE
    assert out.status["m"] is State.FAILED
    msg = str(out.errors["m"])
    assert what in msg
    assert "position 0" in msg
    assert "'m'" in msg


async def test_an_element_named_like_another_task_fails_the_family():
    g = ag.Graph()
    g.add("xs", lambda: [1], deps=[])
    g.add("m", lambda xs: xs, over="xs")
    g.add("m[0]", lambda: 0, deps=[])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["m"] is State.FAILED
    assert "'m[0]'" in str(out.errors["m"])
    assert out.status["m[0]"] is State.DONE


def test_bad_over_and_key_are_refused_when_the_task_is_added():
    g = ag.Graph()
    g.add("xs", lambda: [1], deps=[])
    with pytest.raises(ag.InvalidTaskError, match=r"over='ys' is not one of its dependencies"):
        g.add("m", lambda xs: xs, over="ys")
    with pytest.raises(ag.InvalidTaskError, match=r"key= .* has no over="):
        g.add("m", lambda xs: xs, key=lambda x: x)
    with pytest.raises(ag.InvalidTaskError, match=r"over must be the name"):
        g.add("m", lambda xs: xs, over=3)  # type: ignore[arg-type]
    with pytest.raises(ag.InvalidTaskError, match=r"key must be a function"):
        g.add("m", lambda xs: xs, over="xs", key="id")  # type: ignore[arg-type]
    with pytest.raises(ag.InvalidTaskError, match=r"may not contain"):
        g.add("m[x]", lambda xs: xs, over="xs")
    assert list(g.tasks) == ["xs"]  # nothing partial was added

    @g.task(over="xs", key=str)
    def m(xs):
        return xs

    assert g.tasks["m"].over == "xs"
    assert g.tasks["m"].key is str


async def test_one_failed_element_fails_only_itself():
    g, calls = users_graph(USERS, fail=("b",))
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    st = out.status
    assert st["score[b]"] is State.FAILED
    assert st["score[a]"] is State.DONE
    assert st["score[c]"] is State.DONE
    assert st["publish[a]"] is State.DONE
    assert st["publish[c]"] is State.DONE
    assert st["publish[b]"] is State.SKIPPED
    assert st["score"] is State.FAILED  # the aggregate
    assert st["publish"] is State.SKIPPED
    assert st["report"] is State.SKIPPED
    assert calls["report"] == 0
    assert isinstance(out.errors["score[b]"], ValueError)
    assert "score" not in out.errors  # the element's error is not repeated on the family
    with pytest.raises(ag.TaskFailures) as info:
        out.raise_for_failures()
    assert len(info.value.exceptions) == 1


async def test_per_element_retries_with_varying_failures():
    # Dask's test_map_retries: element i fails its first i attempts.
    attempts: Counter[int] = Counter()
    g = ag.Graph()
    g.add("xs", lambda: [0, 1, 2, 3], deps=[])

    def flaky(x):
        attempts[x] += 1
        if attempts[x] <= x:
            raise RuntimeError(f"attempt {attempts[x]} of {x}")
        return x

    g.add("f", flaky, deps=["xs"], over="xs", retries=2, retry_delay=0)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert [out.records[f"f[{i}]"].attempts for i in range(4)] == [1, 2, 3, 3]
    assert [out.status[f"f[{i}]"] for i in range(4)] == [State.DONE] * 3 + [State.FAILED]
    assert out.status["f"] is State.FAILED
    assert "attempt 3 of 3" in str(out.errors["f[3]"])


async def test_element_timeouts_are_each_elements_own():
    never = asyncio.Event()
    g = ag.Graph()
    g.add("xs", lambda: [0, 1, 2], deps=[])

    async def wait(x):
        if x == 1:
            await never.wait()
        return x

    g.add("w", wait, deps=["xs"], over="xs", timeout=0.05)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["w[1]"] is State.FAILED
    assert out.status["w[0]"] is State.DONE
    assert out.status["w[2]"] is State.DONE
    assert isinstance(out.errors["w[1]"], TimeoutError)


async def test_elementwise_child_waits_only_for_its_counterpart():
    # score[b] cannot finish until publish[a] has run: element-wise, or a hang.
    published_a = asyncio.Event()
    g = ag.Graph()
    g.add("xs", lambda: ["a", "b"], deps=[])

    async def score(x):
        if x == "b":
            await published_a.wait()
        return x

    async def publish(s):
        if s == "a":
            published_a.set()
        return s.upper()

    g.add("score", score, deps=["xs"], over="xs")
    g.add("publish", publish, deps=["score"], over="score")
    g.add("report", lambda p: "".join(p), deps=["publish"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results["report"] == "AB"


async def test_elementwise_child_with_another_dependency_still_pending():
    # publish over score also needs `slow`, which finishes after score's elements start.
    gate = asyncio.Event()
    g = ag.Graph()
    g.add("xs", lambda: [1, 2, 3], deps=[])

    async def slow():
        await gate.wait()
        return 100

    async def score(x):
        if x == 3:
            gate.set()
        return x

    g.add("slow", slow, deps=[])
    g.add("score", score, deps=["xs"], over="xs")
    g.add("publish", lambda s, k: s + k, deps=["score", "slow"], over="score")
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results["publish"] == [101, 102, 103]


async def test_a_chain_of_three_element_wise_families():
    g = ag.Graph()
    g.add("xs", lambda: [1, 2], deps=[])
    g.add("a", lambda x: x + 1, deps=["xs"], over="xs")
    g.add("b", lambda x: x * 10, deps=["a"], over="a")
    g.add("c", lambda x: -x, deps=["b"], over="b")
    g.add("r", lambda a, c: (a, c), deps=["a", "c"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results["c"] == [-20, -30]
    assert out.results["r"] == ([2, 3], [-20, -30])
    assert out.results["c[1]"] == -30


async def test_a_parent_that_fails_skips_the_family():
    g = ag.Graph()

    def boom():
        raise OSError("no users")

    g.add("users", boom, deps=[])
    g.add("score", lambda users: users, over="users")
    g.add("report", lambda score: score, deps=["score"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["users"] is State.FAILED
    assert out.status["score"] is State.SKIPPED
    assert out.status["report"] is State.SKIPPED


async def test_elements_share_a_named_limit(probe):
    g = ag.Graph()
    g.add("xs", lambda: list(range(6)), deps=[])

    async def work(x):
        probe.enter(f"w{x}")
        for _ in range(3):
            await asyncio.sleep(0)
        probe.leave(f"w{x}")
        return x

    g.add("w", work, deps=["xs"], over="xs", resources=("w",))
    with anyio.fail_after(GUARD):
        out = await ag.run(g, limits={"w": 2})
    assert out.results["w"] == list(range(6))
    assert probe.high_water == 2


async def test_elements_run_in_their_parents_order_and_after_io():
    order: list[str] = []
    g = ag.Graph()
    g.add("xs", lambda: ["x", "y", "z"], deps=[])

    def work(x):
        order.append(x)
        return x

    g.add("w", work, deps=["xs"], over="xs")
    with anyio.fail_after(GUARD):
        await ag.run(g, max_io=1)
    assert order == ["x", "y", "z"]


def _pid(x):
    return (x, os.getpid())


async def test_cpu_elements_run_in_the_process_pool():
    g = ag.Graph()
    g.add("xs", lambda: [1, 2, 3], deps=[])
    g.add("p", _pid, deps=["xs"], over="xs", kind="cpu")
    with anyio.fail_after(120):
        out = await ag.run(g, cpu_workers=2)
    got = out.results["p"]
    assert [x for x, _ in got] == [1, 2, 3]
    assert all(pid != os.getpid() for _, pid in got)
    assert out.tasks["p[0]"].kind is ag.Kind.CPU


async def test_events_and_progress_count_every_element():
    events: list[tuple[str, str]] = []
    g, _ = users_graph(USERS, fail=("c",))
    with anyio.fail_after(GUARD):
        await ag.run(g, on_event=lambda e: events.append((e.kind.value, e.task)))
    assert ("queued", "score[a]") in events
    assert ("started", "score[b]") in events
    assert ("done", "score[b]") in events
    assert ("failed", "score[c]") in events
    assert ("skipped", "publish[c]") in events
    assert ("done", "publish[a]") in events
    queued = {t for k, t in events if k == "queued"}
    settled = {t for k, t in events if k in ("done", "failed", "skipped", "cancelled")}
    assert queued <= settled | {"score", "publish"}  # every queued element settles
    assert {"score[a]", "score[b]", "score[c]", "publish[a]", "publish[b]"} <= queued


async def test_fail_fast_on_an_element_cancels_the_rest():
    gate = asyncio.Event()
    g = ag.Graph()
    g.add("xs", lambda: [0, 1], deps=[])

    async def work(x):
        if x == 0:
            raise ValueError("first")
        await gate.wait()

    g.add("w", work, deps=["xs"], over="xs")
    with anyio.fail_after(GUARD), pytest.raises(ag.TaskFailures):
        await ag.run(g, fail_fast=True)


async def test_to_frame_has_a_family_column_with_element_rows_after_the_template():
    g, _ = users_graph(USERS)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    frame = out.to_frame()
    assert "family" in frame.columns
    names = list(frame["name"])
    i = names.index("score")
    assert names[i + 1 : i + 4] == ["score[a]", "score[b]", "score[c]"]
    fam = dict(zip(frame["name"], frame["family"], strict=True))
    assert fam["score[b]"] == "score"
    assert fam["publish[c]"] == "publish"
    assert frame.family[frame.name == "score"].isna().all()  # NaN: missing text (issue 16)
    assert isinstance(fam["score"], float) and math.isnan(fam["score"])
    assert "family" not in ag.Graph().to_frame().columns  # plain graphs: as before


async def test_a_graph_without_fan_out_schedules_as_before():
    g = ag.Graph()
    g.add("a", lambda: [1, 2], deps=[])
    g.add("b", lambda a: a, deps=["a"])
    assert not g._dag.fans
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results["b"] == [1, 2]
    assert not out._dag.fans


# -- rewrites --------------------------------------------------------------------------


async def _failed_once():
    """A run where score[b] failed: the graph, the call counter, the fault to fix."""
    fail = {"b"}
    g, calls = users_graph(USERS, fail=fail)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["score[b]"] is State.FAILED
    calls.clear()
    fail.clear()
    return out, calls


async def test_reset_failed_reruns_only_the_failed_element_and_what_depends_on_it():
    out, calls = await _failed_once()
    again = ag.reset_failed(out)
    assert again.status["score[a]"] is State.DONE
    assert again.status["score[b]"] is State.PENDING
    assert again.status["publish[b]"] is State.PENDING
    assert again.status["publish[a]"] is State.DONE
    with anyio.fail_after(GUARD):
        done = await ag.run(again)
    assert calls == Counter({"score:b": 1, "publish:20": 1, "report": 1})
    assert done.results["report"] == 60
    assert done.results["publish"] == [-10, -20, -30]
    assert all(s is State.DONE for s in done.status.values())


async def test_reset_of_one_element_never_reruns_a_sibling():
    g, calls = users_graph(USERS)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    calls.clear()
    again = ag.reset(out, "score[c]")
    assert {n for n, s in again.status.items() if s is State.PENDING} == {
        "score[c]",
        "score",
        "publish[c]",
        "publish",
        "report",
    }
    with anyio.fail_after(GUARD):
        done = await ag.run(again)
    assert calls == Counter({"score:c": 1, "publish:30": 1, "report": 1})
    assert done.results["score"] == [10, 20, 30]


async def test_reset_of_the_family_reruns_every_element():
    g, calls = users_graph(USERS)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    calls.clear()
    with anyio.fail_after(GUARD):
        done = await ag.run(out.reset("score"))
    assert calls == Counter(
        {"score:a": 1, "score:b": 1, "score:c": 1, "report": 1}
        | {f"publish:{v}": 1 for v in (10, 20, 30)}
    )
    assert done.results["report"] == 60


async def test_resetting_the_parent_re_expands_it():
    box = {"users": USERS}
    g = ag.Graph()
    g.add("users", lambda: box["users"], deps=[])
    g.add("score", lambda users: users["v"], over="users", key=lambda u: u["id"])
    g.add("report", lambda score: score, deps=["score"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    box["users"] = [{"id": "z", "v": 9}, {"id": "a", "v": 1}]
    with anyio.fail_after(GUARD):
        done = await ag.run(ag.reset(out, "users"))
    assert done.results["report"] == [9, 1]
    assert [n for n in done.tasks if n.startswith("score[")] == ["score[z]", "score[a]"]
    assert "score[b]" not in done.status  # gone with the list that no longer has it


async def test_reset_failed_after_the_parent_failed_expands_the_family():
    # Dagster #8411: re-executing from a failure upstream of a dynamic step.
    box = {"fail": True}
    g = ag.Graph()

    def users():
        if box["fail"]:
            raise OSError("down")
        return [1, 2]

    g.add("users", users, deps=[])
    g.add("score", lambda users: users * 2, over="users")
    g.add("report", lambda score: sum(score), deps=["score"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["score"] is State.SKIPPED
    box["fail"] = False
    with anyio.fail_after(GUARD):
        done = await ag.run(ag.reset_failed(out))
    assert done.results["report"] == 6
    assert done.status["score[1]"] is State.DONE


async def test_reset_failed_after_an_empty_family_keeps_it_done():
    # Airflow #43214: a retry of a run with a zero-length map.
    g, _ = users_graph([])
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    with anyio.fail_after(GUARD):
        again = await ag.run(ag.reset_failed(out))
    assert again.results["score"] == []
    with anyio.fail_after(GUARD):
        reset = await ag.run(ag.reset(out, "users"))
    assert reset.results["report"] == 0


async def test_mark_done_of_one_element_leaves_the_other_failed_elements_failed():
    # Airflow #23171: "Mark Success on a mapped task, reruns other failing mapped tasks".
    fail = {"a", "b"}
    g, calls = users_graph(USERS, fail=fail)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    fixed = ag.mark_done(out, "score[a]", {"score[a]": 100})
    assert fixed.status["score[b]"] is State.FAILED
    assert fixed.status["publish[a]"] is State.PENDING
    calls.clear()
    with anyio.fail_after(GUARD):
        done = await ag.run(fixed)
    assert calls == Counter({"publish:100": 1})  # score[b] did not rerun
    assert done.status["score[b]"] is State.FAILED
    assert done.status["score"] is State.FAILED
    assert done.status["report"] is State.SKIPPED
    fixed = ag.mark_done(done, "score[b]", {"score[b]": 7})
    calls.clear()
    with anyio.fail_after(GUARD):
        done = await ag.run(fixed)
    assert calls == Counter({"publish:7": 1, "report": 1})
    assert done.results["score"] == [100, 7, 30]


async def test_subgraph_of_an_element_keeps_its_parent_and_runs_it_alone():
    g, calls = users_graph(USERS)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    sub = ag.subgraph(out, "score[b]")
    assert set(sub.tasks) == {"score[b]", "users", "weights"}
    calls.clear()
    with anyio.fail_after(GUARD):
        done = await ag.run(ag.reset(sub, "score[b]"))
    assert calls == Counter({"score:b": 1})
    assert done.results["score[b]"] == 20
    whole = ag.subgraph(out, "report")
    assert {"score[a]", "score[b]", "score[c]", "score", "users"} <= set(whole.tasks)
    assert "publish" not in whole.tasks


async def test_unknown_element_names_are_listed():
    g, _ = users_graph(USERS)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    with pytest.raises(ag.UnknownTaskError, match=r"score\[zz\]"):
        ag.reset(out, "score[zz]")


async def test_pictures_show_a_family():
    g, _ = users_graph(USERS, fail=("b",))
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    text = out.to_mermaid()
    assert "subgraph" in text
    assert '"score[a]"' in text
    assert "score (3: done 2, failed 1)" in text
    dot = out.to_dot()
    assert "cluster" in dot
    assert '"score[b]"' in dot


def test_key_over_a_mapped_task_is_refused_before_anything_runs():
    ran = []
    g = ag.Graph()
    g.add("xs", lambda: ran.append("xs") or [1], deps=[])
    g.add("a", lambda x: x, deps=["xs"], over="xs")
    g.add("b", lambda x: x, deps=["a"], over="a", key=str)
    with pytest.raises(ag.InvalidTaskError, match=r"key= has no use over a mapped task"):
        ag.run_sync(g)
    assert ran == []


async def test_a_family_is_not_busy_and_links_the_critical_path():
    g, _ = users_graph(USERS)
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    s = out.summary()
    elements = sum(out.records[n].duration for n in out.status if "[" in n)
    plain = sum(out.records[n].duration for n in ("users", "weights", "report"))
    assert s.busy_s == pytest.approx(elements + plain)
    assert "score" not in set(out.timeline()["name"])
    assert "score[a]" in set(out.timeline()["name"])


async def test_a_deadline_cancels_the_unstarted_elements_and_the_family():
    gate = asyncio.Event()
    g = ag.Graph()
    g.add("xs", lambda: [0, 1, 2, 3], deps=[])

    async def work(x):
        if x == 0:
            return x
        await gate.wait()

    g.add("w", work, deps=["xs"], over="xs")
    g.add("r", lambda w: w, deps=["w"])
    with anyio.fail_after(GUARD):
        # the only way this run ends: the deadline, passing once w[0] is done
        out = await run_until_deadline(g, {("done", "w[0]"), ("started", "w[1]")}, max_io=2)
    assert out.status["w[0]"] is State.DONE
    assert {out.status[f"w[{i}]"] for i in (1, 2, 3)} == {State.CANCELLED}
    assert out.status["w"] is State.CANCELLED
    again = ag.reset_failed(out)
    assert again.status["w[0]"] is State.DONE
    assert again.status["w[3]"] is State.PENDING
    gate.set()
    with anyio.fail_after(GUARD):
        done = await ag.run(again)
    assert done.results["r"] == [0, None, None, None]


def test_cpu_elements_on_a_store_are_reused(tmp_path):
    db = tmp_path / "s.db"

    def graph():
        g = ag.Graph()
        g.add("xs", lambda: [1, 2, 3], deps=[])
        g.add("p", _square, deps=["xs"], over="xs", kind="cpu")
        return g

    out = ag.run_sync(graph(), store=db, cpu_workers=1)
    assert out.results["p"] == [1, 4, 9]
    plan = ag.plan(graph(), db)
    assert set(plan.loc[plan["name"].str.startswith("p["), "action"]) == {"reuse"}
    again = ag.run_sync(graph(), store=db, cpu_workers=1)
    assert again.results["p"] == [1, 4, 9]
    assert all(again.records[f"p[{i}]"].attempts == 1 for i in range(3))


def _square(x):
    return x * x


async def test_an_element_marked_done_without_a_result_fails_the_family_naming_it():
    g, calls = users_graph(USERS, fail=("b",))
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    fixed = ag.mark_done(out, "score[b]")  # no result given
    calls.clear()
    with anyio.fail_after(GUARD):
        done = await ag.run(fixed)
    assert done.status["score"] is State.FAILED
    err = done.errors["score"]
    assert isinstance(err, ag.MissingResultError)
    assert "'score[b]'" in str(err)
    assert done.status["report"] is State.SKIPPED
    assert calls["report"] == 0
    assert done.status["publish[b]"] is State.FAILED  # and its element-wise child says why
    assert isinstance(done.errors["publish[b]"], ag.MissingResultError)
