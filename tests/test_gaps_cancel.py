"""Issue 16: ``r.cancel("name")`` on an open run cancels that task (recorded
``cancelled``, its descendants skipped) while the rest goes on; ``r.cancel()`` still
cancels the run. Events, not clocks: a task that would block forever is released only by
the cancel, and the others finish because events say so."""

from __future__ import annotations

import asyncio

import pytest

import asyncgraph as ag


def _graph(gate: asyncio.Event) -> ag.Graph:
    g = ag.Graph()

    @g.task
    async def slow() -> int:
        await asyncio.Event().wait()  # forever: only a cancel ends it
        return 0

    @g.task
    def below(slow: int) -> int:
        return slow + 1

    @g.task
    async def fast() -> int:
        await gate.wait()
        return 2

    @g.task
    def after_fast(fast: int) -> int:
        return fast * 10

    return g


async def _started(r: ag.OpenRun[ag.Graph], name: str) -> None:
    async for event in r.events():
        if event.kind is ag.EventKind.STARTED and event.task == name:
            return


async def test_cancel_one_running_task_the_rest_goes_on():
    gate = asyncio.Event()
    async with ag.open_run(_graph(gate)) as r:
        await _started(r, "slow")
        assert r.cancel("slow") is True
        assert r.cancel("slow") is False  # asked already
        gate.set()
    out = r.graph
    assert out.status == {
        "slow": ag.State.CANCELLED,
        "below": ag.State.SKIPPED,
        "fast": ag.State.DONE,
        "after_fast": ag.State.DONE,
    }
    assert isinstance(out.errors["slow"], ag.TaskCancelled)
    assert "r.cancel('slow')" in str(out.errors["slow"])
    assert out.results["after_fast"] == 20
    kinds = {(e.task, e.kind) for e in r._history}
    assert ("slow", ag.EventKind.CANCELLED) in kinds
    assert ("below", ag.EventKind.SKIPPED) in kinds


async def test_cancel_one_waiting_task_it_never_starts():
    gate = asyncio.Event()
    g = _graph(gate)
    async with ag.open_run(g, max_io=1) as r:
        await _started(r, "slow")  # slow holds the only IO slot: fast waits in line
        assert r.cancel(g.tasks["fast"]) is True  # a Task stands for its name
        assert r.cancel("slow") is True
    out = r.graph
    assert out.status == {
        "slow": ag.State.CANCELLED,
        "below": ag.State.SKIPPED,
        "fast": ag.State.CANCELLED,
        "after_fast": ag.State.SKIPPED,
    }
    assert out.records["fast"].attempts == 0
    assert "did not start" in str(out.errors["fast"])


async def test_cancel_a_finished_task_is_a_no_op_and_unknown_names_raise():
    gate = asyncio.Event()
    gate.set()
    async with ag.open_run(_graph(gate)) as r:
        async for name, _ in r.as_completed():
            if name == "after_fast":
                break
        assert r.cancel("fast") is False  # done: stays done
        with pytest.raises(ag.UnknownTaskError, match="nope"):
            r.cancel("nope")
        with pytest.raises(TypeError, match="cancel: task names are strings, not 3"):
            r.cancel(3)  # type: ignore[arg-type]
        assert r.cancel("slow") is True
    assert r.graph.status["fast"] is ag.State.DONE
    assert r.graph.status["slow"] is ag.State.CANCELLED
    assert r.cancel("slow") is False  # the run has ended


async def test_cancel_the_last_task_ends_the_run():
    g = ag.Graph()

    @g.task
    async def only() -> None:
        await asyncio.Event().wait()

    async with ag.open_run(g) as r:
        await _started(r, "only")
        r.cancel("only")
    assert r.graph.status == {"only": ag.State.CANCELLED}


async def test_cancel_before_the_run_has_started_applies_once_it_does(tmp_path):
    gate = asyncio.Event()
    async with ag.open_run(_graph(gate), store=tmp_path / "s.db") as r:
        assert r.cancel("slow") is True  # the store is still being read
        gate.set()
    out = r.graph
    assert out.status["slow"] is ag.State.CANCELLED
    assert out.status["below"] is ag.State.SKIPPED
    assert out.status["after_fast"] is ag.State.DONE
    stored = ag.SQLiteStore(tmp_path / "s.db").tasks()
    assert stored["slow"].status is ag.State.CANCELLED  # recorded in the store too


async def test_cancel_a_task_waiting_to_retry():
    tries: list[int] = []
    g = ag.Graph()

    @g.task(retries=5, retry_delay=3600)  # a long backoff: only the cancel ends it
    async def flaky() -> None:
        tries.append(1)
        raise ValueError("again")

    @g.task
    async def other() -> int:
        return 1

    async with ag.open_run(g) as r:
        async for event in r.events():
            if event.kind is ag.EventKind.RETRYING:
                break
        assert r.cancel("flaky") is True
    assert r.graph.status == {"flaky": ag.State.CANCELLED, "other": ag.State.DONE}
    assert len(tries) == 1
    assert "waiting to retry" in str(r.graph.errors["flaky"])


async def test_cancel_a_cpu_task_kills_its_worker_only():
    g = ag.Graph()
    g.add("spin", _spin, kind="cpu")
    g.add("ok", _one, kind="cpu")
    async with ag.open_run(g, cpu_workers=2) as r:
        await _started(r, "spin")
        r.cancel("spin")
    assert r.graph.status == {"spin": ag.State.CANCELLED, "ok": ag.State.DONE}


async def test_cancel_without_a_name_still_cancels_the_run():
    gate = asyncio.Event()
    async with ag.open_run(_graph(gate)) as r:
        await _started(r, "slow")
        assert r.cancel() is True
    assert set(r.graph.status.values()) <= {ag.State.CANCELLED, ag.State.PENDING}
    assert r.graph.status["slow"] is ag.State.CANCELLED


def _spin() -> None:
    import threading

    threading.Event().wait()  # forever: the worker is killed


def _one() -> int:
    return 1


def test_scheduler_drop_takes_a_waiting_task_out_wherever_it_waits():
    from asyncgraph._scheduler import Scheduler

    g = ag.Graph()
    for name in ("a", "b", "c"):
        g.add(name, _one, resources=["db"])
    g.add("d", _one, after=["c"])
    dag = g._dag
    s = Scheduler(dag.tasks, dag.topological_order(), max_io=2, limits={"db": 1})
    s.prepare(dict.fromkeys(dag.tasks, ag.State.PENDING))
    (first,) = s.get_ready()  # one db unit: the others park on it
    assert first.name == "c"  # the longest path (c then d)
    with pytest.raises(ValueError, match="not waiting to run"):
        s.drop("c")  # running
    assert s.drop("b") == []  # parked on the limit
    assert s.drop("d") == []  # waiting for its dependency
    with pytest.raises(ValueError, match="not waiting to run"):
        s.drop("b")
    s.done("c")
    assert [t.name for t in s.get_ready()] == ["a"]
    s.done("a")
    assert not s.is_active() and s.get_ready() == []


async def test_a_task_that_catches_the_cancel_and_fails_is_not_retried():
    g = ag.Graph()
    tries: list[int] = []
    inside = asyncio.Event()

    @g.task(retries=3, retry_delay=0)
    async def stubborn() -> None:
        tries.append(1)
        if len(tries) > 1:
            return  # a retry (a bug) ends at once, so the test fails instead of hanging
        inside.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    async with ag.open_run(g) as r:
        await inside.wait()  # in its try block (STARTED is sent before its first step)
        assert r.cancel("stubborn") is True
    assert r.graph.status == {"stubborn": ag.State.FAILED}
    assert "cleanup failed" in str(r.graph.errors["stubborn"])
    assert len(tries) == 1  # a cancel is not retried, however the task ended
