"""The executor seam: routing, lanes, each executor, and real graphs run through ``_Run``
on the inline executor (every attempt on this thread, in the scheduler's order)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

import asyncgraph as ag
from asyncgraph._executors import (
    InlineExecutor,
    LoopExecutor,
    ProcessExecutor,
    ThreadExecutor,
    default_executors,
)
from asyncgraph._executors.base import Executor, route
from asyncgraph._options import RunOptions
from asyncgraph._runner import _Run
from asyncgraph._task import Kind

GUARD = 30  # seconds: a hang guard only, never an assertion


def make_run(g: ag.Graph, executors: Sequence[Executor], **options: Any) -> _Run:
    defaults: dict[str, Any] = {
        "max_io": None,
        "cpu_workers": 1,
        "limits": {},
        "fail_fast": False,
        "deadline": None,
    }
    defaults.update(options)
    return _Run(g, RunOptions(**defaults), executors=executors)


# -- routing and lanes ------------------------------------------------------------------


def test_the_default_executors_route_each_kind_and_give_the_lanes_io_first():
    table, lanes = route(default_executors(max_io=8, cpu_workers=3))
    assert isinstance(table[Kind.IO][True], LoopExecutor)  # coroutine functions
    assert isinstance(table[Kind.IO][False], ThreadExecutor)  # plain functions
    assert isinstance(table[Kind.CPU][True], ProcessExecutor)
    assert table[Kind.CPU][False] is table[Kind.CPU][True]
    # The CPU lane admits two calls per worker (one may wait in its worker behind a
    # short one: process.DEPTH, session 17); 3 run at once, the pool's size.
    assert lanes == [("io", 8, (Kind.IO,)), ("cpu", 3 * 2, (Kind.CPU,))]
    cpu = table[Kind.CPU][True]
    assert isinstance(cpu, ProcessExecutor) and cpu.workers == 3


def test_the_inline_executor_takes_every_kind_in_one_lane():
    table, lanes = route([InlineExecutor(capacity=2)])
    assert {id(ex) for pair in table.values() for ex in pair} == {id(table[Kind.IO][True])}
    assert lanes == [("inline", 2, (Kind.IO, Kind.CPU))]


def test_a_kind_no_executor_serves_is_refused():
    with pytest.raises(ValueError, match="no executor runs 'cpu' tasks"):
        route([LoopExecutor(None), ThreadExecutor(None)])


def test_a_kind_split_over_two_lanes_is_refused():
    class OtherLoop(LoopExecutor):
        lane = "other"

    with pytest.raises(ValueError, match="'io' tasks would go to two lanes, 'io' and 'other'"):
        route([ThreadExecutor(None), OtherLoop(None), ProcessExecutor(1)])


# -- each executor ---------------------------------------------------------------------


async def test_a_coroutine_is_its_own_task_on_the_loop_executor():
    async def fn(x: int) -> int:
        return x + 1

    g = ag.Graph()
    g.add("one", lambda: 1)
    t = g.add("c", fn, deps=["one"])
    child = LoopExecutor(None).start(t, [41], {}, lambda n, w: None)
    # The hot path: no wrapper frame, the task's coroutine is the function's own.
    assert child.get_coro().cr_code is fn.__code__  # type: ignore[union-attr]
    assert await child == 42


async def test_a_coroutine_that_raises_before_its_first_await_fails_its_future():
    g = ag.Graph()

    def not_a_coroutine_after_all() -> None:
        raise RuntimeError("before any await")

    t = dataclasses.replace(g.add("t", lambda: None), fn=not_a_coroutine_after_all, is_async=True)
    child = LoopExecutor(None).start(t, [], {}, lambda n, w: None)
    with pytest.raises(RuntimeError, match="before any await"):
        await child


async def test_a_plain_function_runs_in_another_thread_on_the_thread_executor():
    g = ag.Graph()
    t = g.add("t", threading.get_ident)
    ex = ThreadExecutor(max_io=2)
    try:
        ident = await ex.start(t, [], {}, lambda n, w: None)
    finally:
        await ex.aclose()
    assert ident != threading.get_ident()


def test_the_process_executor_reports_every_task_that_cannot_travel_at_once():
    lock = threading.Lock()
    g = ag.Graph()
    g.add("bad1", lambda: lock, kind="cpu")
    g.add("good", os.getpid, kind="cpu")
    g.add("bad2", lambda: lock.locked(), kind="cpu")
    ex = ProcessExecutor(1)
    with pytest.raises(ag.PicklingError) as info:
        ex.check(g.tasks, list(g.tasks))
    assert info.value.tasks == ("bad1", "bad2")
    assert ex.pool is None  # no worker for a run that does not start


def test_the_process_executor_starts_no_pool_without_a_cpu_task():
    ex = ProcessExecutor(2)
    ex.check({}, [])
    assert ex.pool is None


async def test_the_process_executor_runs_in_a_worker_and_reports_its_start():
    g = ag.Graph()
    t = g.add("pid", os.getpid, kind="cpu")
    ex = ProcessExecutor(1)
    ex.check(g.tasks, [t.name])
    began: list[tuple[str, float]] = []
    try:
        with anyio.fail_after(GUARD):
            pid = await ex.start(t, [], {}, lambda n, w: began.append((n, w)))
    finally:
        await ex.aclose()
    assert pid != os.getpid()
    assert [n for n, _ in began] == ["pid"]


# -- real graphs through _Run on the inline executor -------------------------------------


async def test_a_graph_runs_inline_in_the_schedulers_order_on_this_thread():
    r"""
      a -> b -> c        d (a leaf, defined last)       cpu_e (kind="cpu", no deps)
    One at a time: the longest remaining path first, then definition order. Every
    attempt, the CPU one too, runs on this thread, in this process.
    """
    where: list[tuple[str, int, int]] = []

    def here(name: str) -> Any:
        def fn(*args: Any) -> str:
            where.append((name, os.getpid(), threading.get_ident()))
            return name

        return fn

    async def b(a: str) -> str:
        where.append(("b", os.getpid(), threading.get_ident()))
        await asyncio.sleep(0)
        return a + "b"

    g = ag.Graph()
    g.add("a", here("a"))
    g.add("b", b)
    g.add("c", here("c"), deps=["b"])
    g.add("d", here("d"))
    g.add("cpu_e", here("cpu_e"), kind="cpu")
    with anyio.fail_after(GUARD):
        out = await make_run(g, [InlineExecutor()]).run()
    assert [n for n, _, _ in where] == ["a", "b", "c", "d", "cpu_e"]
    assert {(pid, ident) for _, pid, ident in where} == {(os.getpid(), threading.get_ident())}
    assert out.results == {"a": "a", "b": "ab", "c": "c", "d": "d", "cpu_e": "cpu_e"}


async def test_failures_retries_and_skips_inline():
    calls: list[str] = []

    def flaky() -> int:
        calls.append("flaky")
        if calls.count("flaky") < 2:
            raise ValueError("once")
        return 1

    def broken() -> None:
        calls.append("broken")
        raise KeyError("no")

    g = ag.Graph()
    g.add("flaky", flaky, retries=1, retry_delay=0)
    g.add("broken", broken)
    g.add("after", lambda broken: broken)
    with anyio.fail_after(GUARD):
        out = await make_run(g, [InlineExecutor()]).run()
    assert out.status == {
        "flaky": ag.State.DONE,
        "broken": ag.State.FAILED,
        "after": ag.State.SKIPPED,
    }
    assert out.records["flaky"].attempts == 2
    assert isinstance(out.errors["broken"], KeyError)
    assert "KeyError" in (out.records["broken"].traceback or "")


async def test_two_inline_slots_overlap_two_coroutines():
    both = asyncio.Event()
    inside: set[str] = set()

    def probe(name: str) -> Any:
        async def fn() -> None:
            inside.add(name)
            if len(inside) == 2:
                both.set()
            await both.wait()  # both are in at once, or this never ends

        return fn

    g = ag.Graph()
    g.add("x", probe("x"))
    g.add("y", probe("y"))
    with anyio.fail_after(GUARD):
        out = await make_run(g, [InlineExecutor(capacity=2)]).run()
    assert set(out.status.values()) == {ag.State.DONE}
