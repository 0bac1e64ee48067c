"""Fan-out (issue 13) meets what main gained beside it: ``r.cancel(name)`` on an open
run, ``after=`` order-only dependencies, ``priority``, ``ag.fingerprints``, the
decorator's typing, and the local backends. Events and counters, no clocks."""

from __future__ import annotations

import asyncio

import pytest

import asyncgraph as ag

S = ag.State


async def _started(r: ag.OpenRun[ag.Graph], name: str) -> None:
    async for event in r.events():
        if event.kind is ag.EventKind.STARTED and event.task == name:
            return


def _family(gate: asyncio.Event) -> ag.Graph:
    """``score`` over three users; ``score[1]`` blocks until cancelled, the others wait
    for ``gate``; ``publish`` is element-wise, ``report`` the reducer."""
    g = ag.Graph()

    @g.task
    async def users() -> list[int]:
        return [0, 1, 2]

    @g.task(over="users")
    async def score(users: int) -> int:
        if users == 1:
            await asyncio.Event().wait()  # forever: only a cancel ends it
        await gate.wait()
        return users * 10

    @g.task(over="score")
    async def publish(score: int) -> int:
        return score + 1

    @g.task
    def report(score: list[int]) -> int:
        return sum(score)

    return g


# -- (1) cancel(name) of a family, of one element ---------------------------------------


async def test_cancel_one_element_its_children_and_the_reducer_are_skipped():
    gate = asyncio.Event()
    async with ag.open_run(_family(gate)) as r:
        await _started(r, "score[1]")
        assert r.cancel("score[1]") is True
        assert r.cancel("score[1]") is False  # asked already
        gate.set()
    out = r.graph
    st = out.status
    assert st["score[1]"] is S.CANCELLED
    assert isinstance(out.errors["score[1]"], ag.TaskCancelled)
    assert st["publish[1]"] is S.SKIPPED
    assert st["score[0]"] is S.DONE and st["score[2]"] is S.DONE  # the siblings go on
    assert out.results["publish[2]"] == 21
    assert st["report"] is S.SKIPPED
    assert st["score"] is S.CANCELLED  # the family's aggregate
    kinds = {(e.task, e.kind) for e in r._history}
    assert ("score[1]", ag.EventKind.CANCELLED) in kinds


async def test_cancel_the_family_cancels_each_element_not_ended():
    gate = asyncio.Event()
    g = _family(gate)
    async with ag.open_run(g, max_io=2) as r:
        await _started(r, "score[1]")  # score[0] and score[1] hold both slots
        assert r.cancel("score") is True
        assert r.cancel("score") is False  # nothing left to cancel
    out = r.graph
    st = out.status
    assert [st[f"score[{i}]"] for i in range(3)] == [S.CANCELLED] * 3
    assert out.records["score[2]"].attempts == 0  # waiting in line: it never started
    assert all(st[f"publish[{i}]"] is S.SKIPPED for i in range(3))
    assert st["score"] is S.CANCELLED and st["report"] is S.SKIPPED


async def test_cancel_a_family_before_it_expands_no_element_starts():
    gate = asyncio.Event()
    g = ag.Graph()

    @g.task
    async def users() -> list[int]:
        await gate.wait()
        return [0, 1]

    @g.task(over="users")
    async def score(users: int) -> int:
        raise AssertionError("never runs")

    @g.task
    def report(score: list[int]) -> int:
        return sum(score)

    async with ag.open_run(g) as r:
        await _started(r, "users")
        assert r.cancel("score") is True
        gate.set()
    out = r.graph
    assert out.status == {"users": S.DONE, "score": S.CANCELLED, "report": S.SKIPPED}


async def test_cancel_an_element_before_its_family_expands():
    gate = asyncio.Event()
    g = ag.Graph()

    @g.task
    async def users() -> list[int]:
        await gate.wait()
        return [0, 1, 2]

    @g.task(over="users")
    async def score(users: int) -> int:
        return users

    async with ag.open_run(g) as r:
        await _started(r, "users")
        assert r.cancel("score[1]") is True  # not an element yet: cancelled as it expands
        gate.set()
    out = r.graph
    assert out.status["score[1]"] is S.CANCELLED
    assert out.records["score[1]"].attempts == 0
    assert out.status["score[0]"] is S.DONE and out.status["score[2]"] is S.DONE
    with pytest.raises(ag.UnknownTaskError):
        r.cancel("nope[1]")  # not an element of a mapped task: unknown


async def test_cancel_an_element_its_family_does_not_have_is_a_no_op():
    gate = asyncio.Event()
    async with ag.open_run(_family(gate)) as r:
        await _started(r, "score[1]")
        assert r.cancel("score[7]") is False
        assert r.cancel("score[1]") is True
        gate.set()
    assert "score[7]" not in r.graph.status


# -- (2) after= on a mapped task and on an element-wise one ------------------------------


async def test_after_on_a_mapped_and_an_elementwise_task_waits_without_passing():
    order: list[str] = []
    gate = asyncio.Event()
    g = ag.Graph()

    @g.task
    async def setup() -> str:
        await gate.wait()
        order.append("setup")
        return "not passed"

    @g.task
    async def users() -> list[int]:
        gate.set()
        return [1, 2]

    @g.task(over="users", after="setup")
    async def score(users: int) -> int:
        order.append(f"score {users}")
        return users * 10

    @g.task
    async def audit() -> str:
        order.append("audit")
        return "not passed either"

    @g.task(over="score", after=audit)  # after a Task, on an element-wise template
    async def publish(score: int) -> int:
        assert "audit" in order
        return score + 1

    out = await ag.run(g)
    assert out.results["score"] == [10, 20]  # one int each: setup's str not passed
    assert out.results["publish"] == [11, 21]
    assert order.index("setup") < order.index("score 1")
    assert out.tasks["score[0]"].after == ("setup",)
    assert out.tasks["publish[1]"].after == ("audit",)
    assert set(out.tasks["publish[1]"].deps) == {"score[1]", "audit"}


async def test_a_failed_after_dependency_skips_the_family():
    g = ag.Graph()

    @g.task
    def setup() -> None:
        raise RuntimeError("no setup")

    @g.task
    def users() -> list[int]:
        return [1, 2]

    g.add("score", lambda users: users, over="users", after="setup")
    out = await ag.run(g)
    assert out.status["score"] is S.SKIPPED
    assert "score[0]" not in out.status  # it never expanded


# -- (3) priority on a template applies to its elements ----------------------------------


async def test_a_templates_priority_goes_to_its_elements():
    started: list[str] = []
    g = ag.Graph()

    @g.task
    def users() -> list[int]:
        return [0, 1]

    @g.task(over="users", priority=5)
    async def score(users: int) -> int:
        started.append(f"score[{users}]")
        return users

    # A long chain beside: without the priority its head would go first (critical path).
    g.add("head", lambda: started.append("head"), deps=[], after="users")
    g.add("c1", lambda: started.append("c1"), deps=[], after="head")
    g.add("c2", lambda: started.append("c2"), deps=[], after="c1")
    out = await ag.run(g, max_io=1)
    assert out.tasks["score[1]"].priority == 5
    assert started.index("score[0]") < started.index("head")
    assert started.index("score[1]") < started.index("head")


# -- (4) ag.fingerprints on a graph with a family -----------------------------------------


async def test_fingerprints_cover_the_mapped_tasks_not_their_elements():
    g = ag.Graph()

    @g.task
    def users() -> list[int]:
        return [1, 2]

    @g.task(over="users")
    def score(users: int) -> int:
        return users

    before = ag.fingerprints(g)
    assert list(before) == ["users", "score"]
    out = await ag.run(g)
    after = ag.fingerprints(out)
    assert after == before  # elements are left out: theirs are taken as they expand
    assert "score[0]" in out.status and "score[0]" not in after

    plain = ag.Graph()
    plain.add("users", users)
    plain.add("score", score)  # bound as the mapped one is, by keyword
    # Mapping a task changes its fingerprint: its result (the collected list) is another.
    assert ag.fingerprints(plain)["score"] != before["score"]
    assert ag.fingerprints(plain)["users"] == before["users"]


# -- (6) a family on the ProcessBackend and the InlineBackend ------------------------------


def _cpu_family() -> ag.Graph:
    g = ag.Graph()

    @g.task
    def users() -> list[int]:
        return [1, 2, 3]

    @g.task(over="users", kind="cpu")
    def square(users: int) -> int:
        import os

        return users * users + 0 * os.getpid()

    @g.task(over="square", kind="cpu")
    def plus(square: int) -> int:
        return square + 1

    @g.task
    def total(plus: list[int]) -> int:
        return sum(plus)

    return g


def test_a_cpu_family_on_a_shared_process_backend():
    with ag.ProcessBackend(workers=2) as backend:
        out = ag.run_sync(_cpu_family(), backend=backend)
        again = ag.run_sync(_cpu_family(), backend=backend)  # the pool, shared
    for done in (out, again):
        assert done.results["square"] == [1, 4, 9]
        assert done.results["plus[2]"] == 10
        assert done.results["total"] == 17


def test_a_cpu_family_on_the_inline_backend():
    out = ag.run_sync(_cpu_family(), backend=ag.InlineBackend())
    assert out.results["square"] == [1, 4, 9]
    assert out.results["total"] == 17


async def test_plan_against_another_graph_gives_elements_their_families_action():
    g = ag.Graph()
    g.add("users", lambda: [1, 2])
    g.add("score", lambda users: users, over="users")
    out = await ag.run(g)
    frame = ag.plan(out, g).set_index("name")
    assert list(frame.index) == ["users", "score", "score[0]", "score[1]"]
    assert frame.loc["score[1]", "action"] == "reuse"
    assert frame.loc["score[1]", "reason"] == "as its mapped task 'score' (unchanged)"
    assert frame["fingerprint"].isna().tolist() == [False, False, True, True]
    assert out.sources() == ("users",) and out.terminals() == ("score",)


# -- a family on Dask (a LocalCluster of threads) ------------------------------------------


async def test_a_cpu_family_over_a_cpu_parent_on_dask():
    distributed = pytest.importorskip("distributed")
    g = ag.Graph()

    @g.task(kind="cpu")
    def users() -> list[int]:
        return [1, 2, 3]

    @g.task(over="users", kind="cpu")
    def square(users: int) -> int:
        return users * users  # one item: never the parent's whole list (a Dask future)

    @g.task(kind="cpu")
    def count(users: list[int]) -> int:  # a second CPU dependent: the parent is kept
        return len(users)

    @g.task(over="square", kind="cpu")
    def plus(square: int) -> int:
        return square + 1

    async with (
        distributed.LocalCluster(
            n_workers=1,
            processes=False,
            asynchronous=True,
            dashboard_address=":0",
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster, asynchronous=True, set_as_default=False) as client,
    ):
        out = await ag.run(g, backend=ag.DaskBackend(client))
    assert out.status["plus"] is S.DONE, out.errors
    assert out.results["square"] == [1, 4, 9]
    assert out.results["plus"] == [2, 5, 10]
    assert out.results["count"] == 3
