"""Running graphs: order, limits, failures, retries, timeouts, deadline, cancellation.

Concurrency is proven with events and overlap probes; ``fail_after`` only guards
against a hang, it asserts nothing about speed.
"""

from __future__ import annotations

import asyncio
import threading

import anyio
import anyio.lowlevel
import pytest
import uvloop
from conftest import run_until_deadline, statuses

import asyncgraph as ag

GUARD = 30  # seconds: only to turn a hang into a failure, never a speed assertion


async def test_results_flow_through_all_binding_styles():
    g = ag.Graph()

    @g.task
    async def a():
        return 2

    @g.task
    def b(a):  # a plain function: runs in a thread
        return a * 10

    g.add("c", lambda x, y: x - y, deps=["b", "a"])
    g.add("d", lambda *, left, right: (left, right), deps={"left": "a", "right": "c"})
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results == {"a": 2, "b": 20, "c": 18, "d": (2, 18)}
    assert all(r.attempts == 1 for r in out.records.values())
    assert all(r.started <= r.finished for r in out.records.values())


async def test_run_returns_a_new_graph_and_leaves_input_untouched():
    g = ag.Graph()
    g.add("a", lambda: 1)
    out = await g.run()
    assert g.status == {"a": ag.State.PENDING}
    assert out.status == {"a": ag.State.DONE}
    assert out is not g
    again = await out.run()  # nothing pending: returns at once with results intact
    assert again.results == {"a": 1}


async def test_plain_functions_run_in_threads_without_blocking_the_loop():
    r"""
      waiter (thread, blocks on a threading.Event)    setter (coroutine, sets it)
    If the plain function ran on the loop, setter could never run: a hang.
    """
    loop_thread = threading.get_ident()
    flag = threading.Event()
    g = ag.Graph()

    @g.task
    def waiter():
        assert flag.wait(GUARD)
        return threading.get_ident()

    @g.task
    async def setter():
        await anyio.lowlevel.checkpoint()
        flag.set()

    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.results["waiter"] != loop_thread


async def test_io_tasks_overlap_and_max_io_caps_them(probe):
    r"""
    Six IO tasks, max_io=2: two run at once (they wait for each other), never three.
    """
    both = anyio.Event()
    g = ag.Graph()

    def make(name):
        async def fn():
            probe.enter(name)
            if len(probe.active) == 2:
                both.set()
            await both.wait()
            await anyio.lowlevel.checkpoint()
            probe.leave(name)

        return fn

    for i in range(6):
        g.add(f"t{i}", make(f"t{i}"))
    with anyio.fail_after(GUARD):
        out = await ag.run(g, max_io=2)
    assert set(out.status.values()) == {ag.State.DONE}
    assert probe.high_water == 2


async def test_max_io_also_caps_threads(probe):
    lock = threading.Lock()
    g = ag.Graph()
    started = threading.Barrier(2, timeout=GUARD)

    def make(name):
        def fn():
            with lock:
                probe.enter(name)
            started.wait()  # two must be in at once, or this times out
            with lock:
                probe.leave(name)

        return fn

    for i in range(4):
        g.add(f"t{i}", make(f"t{i}"))
    with anyio.fail_after(GUARD):
        out = await ag.run(g, max_io=2)
    assert set(out.status.values()) == {ag.State.DONE}
    assert probe.high_water == 2


async def test_named_limit(probe):
    r"""
    db0..db3 declare resources=("db",) with limits={"db": 1}: never two at once, while
    the free task overlaps with a db task.
    """
    free_started = anyio.Event()
    g = ag.Graph()

    def make(name):
        async def fn():
            probe.enter(name)
            await free_started.wait()
            await anyio.lowlevel.checkpoint()
            probe.leave(name)

        return fn

    for i in range(4):
        g.add(f"db{i}", make(f"db{i}"), resources=("db",))

    @g.task
    async def free():
        probe.enter("free")
        free_started.set()
        await anyio.lowlevel.checkpoint()
        probe.leave("free")

    with anyio.fail_after(GUARD):
        out = await ag.run(g, limits={"db": 1})
    assert set(out.status.values()) == {ag.State.DONE}
    db_overlaps = [{n for n in s if n.startswith("db")} for s in probe.overlaps]
    assert max(len(s) for s in db_overlaps) == 1
    assert any("free" in s and len(s) == 2 for s in probe.overlaps)


async def test_start_order_follows_critical_path_then_priority(probe):
    r"""
      a -> b -> c     x(priority 1)    y(priority 2)
    max_io=1 serialises the run, so the start order is the scheduler's order.
    """
    g = ag.Graph()

    def make(name):
        async def fn(*_):
            probe.enter(name)

        return fn

    g.add("x", make("x"), priority=1)
    g.add("a", make("a"))
    g.add("b", make("b"), deps=["a"])
    g.add("c", make("c"), deps=["b"])
    g.add("y", make("y"), priority=2)
    await ag.run(g, max_io=1)
    # issue 16: priority outranks the critical path, which orders equal priorities
    assert probe.started == ["y", "x", "a", "b", "c"]


async def test_failure_is_data_descendants_skipped_independent_branch_runs():
    r"""
      ok -> fine
      bad -> child -> grandchild
    """
    g = ag.Graph()

    @g.task
    async def ok():
        return 1

    @g.task
    def fine(ok):
        return ok + 1

    @g.task
    async def bad():
        raise ConnectionError("database is down")

    @g.task
    def child(bad):
        raise AssertionError("must not run")

    @g.task
    def grandchild(child):
        raise AssertionError("must not run")

    out = await ag.run(g)
    assert statuses(out) == {
        "ok": "done", "fine": "done", "bad": "failed", "child": "skipped",
        "grandchild": "skipped",
    }
    err = out.errors["bad"]
    assert isinstance(err, ConnectionError)
    assert "database is down" in out.records["bad"].traceback
    assert "in bad" in out.records["bad"].traceback
    assert out.results == {"ok": 1, "fine": 2}
    with pytest.raises(ag.TaskFailures) as info:
        out.raise_for_failures()
    assert info.value.exceptions == (err,)
    assert info.value.graph is out
    assert "task 'bad'" in err.__notes__
    try:
        out.raise_for_failures()
    except* ConnectionError as group:
        assert len(group.exceptions) == 1
    assert ag.run_sync(ag.Graph()).raise_for_failures() is not None  # nothing failed


async def test_fail_fast_cancels_the_rest_and_raises():
    r"""
      bad (raises once sleeper has started)     sleeper (waits forever)   later -> after
    """
    sleeper_started = anyio.Event()
    cleaned = []
    g = ag.Graph()

    @g.task
    async def sleeper():
        sleeper_started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cleaned.append("sleeper")

    @g.task
    async def bad():
        await sleeper_started.wait()
        raise ValueError("boom")

    @g.task
    def after(bad):
        return 1

    with anyio.fail_after(GUARD), pytest.raises(ag.TaskFailures) as info:
        await ag.run(g, fail_fast=True)
    out = info.value.graph
    assert statuses(out) == {"sleeper": "cancelled", "bad": "failed", "after": "skipped"}
    assert cleaned == ["sleeper"]
    assert isinstance(info.value.exceptions[0], ValueError)
    assert "fail_fast" in str(out.errors["sleeper"])


async def test_retries_then_success():
    calls = []
    g = ag.Graph()

    @g.task(retries=3, retry_delay=0)
    async def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("transient")
        return "ok"

    out = await ag.run(g)
    assert out.results == {"flaky": "ok"}
    assert out.records["flaky"].attempts == 3
    assert out.records["flaky"].error is None


async def test_retries_exhausted():
    g = ag.Graph()
    g.add("never", lambda: 1 / 0, retries=2, retry_delay=0)
    g.add("after", lambda never: never)
    out = await ag.run(g)
    assert out.records["never"].attempts == 3
    assert isinstance(out.errors["never"], ZeroDivisionError)
    assert out.status["after"] is ag.State.SKIPPED


def test_backoff_is_exponential_with_jitter():
    from asyncgraph._clock import backoff as _backoff

    task = ag.Graph().add("t", lambda: 1, retry_delay=1.0)
    for attempt in (1, 2, 3, 4):
        delays = {_backoff(task, attempt) for _ in range(50)}
        nominal = 2 ** (attempt - 1)
        assert all(0.5 * nominal <= d <= 1.5 * nominal for d in delays)
        assert len(delays) > 1  # jittered


async def test_timeout_fails_the_task():
    g = ag.Graph()

    @g.task(timeout=0.01)
    async def stuck():
        await anyio.sleep_forever()

    @g.task
    def fine():
        return 1

    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["stuck"] is ag.State.FAILED
    assert isinstance(out.errors["stuck"], TimeoutError)
    assert "'stuck'" in str(out.errors["stuck"])
    assert "timeout=0.01" in str(out.errors["stuck"])
    assert out.results == {"fine": 1}


async def test_timeout_then_retry_succeeds():
    attempts = []
    g = ag.Graph()

    @g.task(timeout=0.01, retries=1, retry_delay=0)
    async def slow_once():
        attempts.append(1)
        if len(attempts) == 1:
            await anyio.sleep_forever()
        return "second time"

    out = await ag.run(g)
    assert out.results == {"slow_once": "second time"}
    assert out.records["slow_once"].attempts == 2


async def test_deadline_cancels_running_and_unstarted_tasks():
    started = []
    g = ag.Graph()

    @g.task
    async def forever():
        started.append("forever")
        await anyio.sleep_forever()

    @g.task
    def quick():
        return 1

    @g.task
    async def later(forever):
        started.append("later")

    with anyio.fail_after(GUARD):  # the deadline passes once 'quick' is done
        out = await run_until_deadline(g, {("done", "quick"), ("started", "forever")})
    assert statuses(out) == {"forever": "cancelled", "quick": "done", "later": "cancelled"}
    assert started == ["forever"]
    assert "deadline" in str(out.errors["forever"])
    assert "did not start" in str(out.errors["later"])
    with pytest.raises(ag.TaskFailures):
        out.raise_for_failures()  # cancelled tasks count as failures of the run


async def test_cancelling_the_awaiting_task_cancels_children():
    started = anyio.Event()
    cleaned = []
    g = ag.Graph()

    @g.task
    async def long():
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cleaned.append("long")

    @g.task
    def after(long):
        return 1

    task = asyncio.ensure_future(ag.run(g))
    with anyio.fail_after(GUARD):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["long"]


async def test_partly_done_graph_runs_only_pending_with_stored_results():
    calls = []
    g = ag.Graph()
    g.add("a", lambda: calls.append("a") or 1)
    g.add("b", lambda a: calls.append("b") or a + 1, deps=["a"])
    g.add("c", lambda b: calls.append("c") or b * 10, deps=["b"])
    partial = ag.mark_done(g, ["a", "b"], results={"a": 100, "b": 7})
    out = await ag.run(partial)
    assert calls == ["c"]
    assert out.results == {"a": 100, "b": 7, "c": 70}


async def test_pending_task_below_a_failed_one_is_skipped_without_running():
    g = ag.Graph()
    g.add("a", lambda: 1 / 0)
    g.add("b", lambda a: a, deps=["a"])
    first = await ag.run(g)
    again = await ag.run(ag.reset(first, ["b"]))
    assert statuses(again) == {"a": "failed", "b": "skipped"}


async def test_reset_failed_reruns_only_failed_and_descendants():
    broken = {"load"}
    calls = []
    g = ag.Graph()

    def make(name):
        def fn(*args):
            calls.append(name)
            if name in broken:
                raise ConnectionError(name)
            return name

        return fn

    g.add("extract", make("extract"))
    g.add("other", make("other"))
    g.add("load", make("load"), deps=["extract"])
    g.add("report", make("report"), deps=["load"])
    first = await ag.run(g)
    assert statuses(first)["report"] == "skipped"
    broken.clear()
    calls.clear()
    second = await ag.run(ag.reset_failed(first))
    assert sorted(calls) == ["load", "report"]
    assert set(second.status.values()) == {ag.State.DONE}


async def test_create_graph_passes_positionally_and_drops_none():
    async def fetch():
        return "page"

    def nothing():
        return None

    def combine(x, y):
        return f"{x}+{y}"

    g = ag.create_graph(
        {"fetch": fetch, "nothing": nothing, "given": lambda: "unused", "combine": combine},
        {"combine": ["given", "nothing", "fetch"]},
        io_bound=["fetch", "nothing", "combine"],
        done=["given"],
        results={"given": "G"},
    )
    out = await ag.run(g)
    assert out.results["combine"] == "G+page"


async def test_run_sync_inside_a_running_loop():
    r"""A notebook cell: the loop is running, and run_sync must still work."""
    g = ag.Graph()

    @g.task
    async def where():
        return threading.get_ident(), type(asyncio.get_running_loop())

    out = ag.run_sync(g)
    thread, loop_type = out.results["where"]
    assert thread != threading.get_ident()
    assert loop_type is uvloop.Loop
    assert g.run_sync().results["where"][1] is uvloop.Loop


def test_run_sync_uses_uvloop_in_a_script():
    g = ag.Graph()
    g.add("loop", lambda: None)

    @g.task
    async def loop_type():
        return type(asyncio.get_running_loop())

    assert ag.run_sync(g).results["loop_type"] is uvloop.Loop


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_io": 0}, ValueError, "max_io must be at least 1"),
        ({"max_io": "4"}, TypeError, "max_io must be an int"),
        ({"cpu_workers": -1}, ValueError, "cpu_workers must be at least 1"),
        ({"limits": {"db": 0}}, ValueError, r"limits\['db'\] must be at least 1"),
        ({"limits": [("db", 1)]}, TypeError, "limits must be a dict"),
        ({"limits": {1: 2}}, TypeError, r"limits keys are resource names \(str\), not 1"),
        ({"fail_fast": "yes"}, TypeError, "fail_fast must be True or False"),
        ({"deadline": 0}, ValueError, "deadline must be a number of seconds > 0"),
        ({"deadline": float("nan")}, ValueError, "deadline"),
    ],
)
async def test_bad_run_options(options, error, match):
    ran = []
    g = ag.Graph()
    g.add("a", lambda: ran.append(1))
    with pytest.raises(error, match=match):
        await ag.run(g, **options)
    assert ran == []


async def test_run_needs_a_graph():
    with pytest.raises(TypeError, match="needs an asyncgraph.Graph, not dict"):
        await ag.run({"a": lambda: 1})  # type: ignore[arg-type]


async def test_a_task_that_cancels_itself_fails_instead_of_hanging():
    g = ag.Graph()

    @g.task
    async def self_cancel():
        raise asyncio.CancelledError

    @g.task
    async def fine():
        return 1

    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["self_cancel"] is ag.State.FAILED
    assert isinstance(out.errors["self_cancel"], ag.TaskCancelled)
    assert "from inside" in str(out.errors["self_cancel"])
    assert out.results == {"fine": 1}


def test_run_sync_errors_carry_no_event_loop_context():
    g = ag.Graph()
    g.add("b", lambda: 1 / 0)
    with pytest.raises(ag.TaskFailures) as info:
        ag.run_sync(g, fail_fast=True)
    assert info.value.__context__ is None


async def test_a_callable_raising_before_returning_its_coroutine_fails_its_task():
    class Picky:
        async def __call__(self):
            return 1

    class Broken(Picky):
        def __call__(self):  # looks async (a Picky), raises when called
            raise RuntimeError("broken before the first await")

    g = ag.Graph()
    g.add("broken", Broken(), kind="io")
    g.tasks["broken"]  # defined fine
    object.__setattr__(g.tasks["broken"], "is_async", True)  # take the hot path
    g.add("fine", Picky())
    with anyio.fail_after(GUARD):
        out = await ag.run(g)
    assert out.status["broken"] is ag.State.FAILED
    assert "broken before the first await" in str(out.errors["broken"])
    assert out.results == {"fine": 1}


async def test_a_deep_chain_does_not_recurse():
    r"""3000 tasks in a chain (well past the default recursion limit of 1000)."""
    g = ag.Graph()

    async def inc(x=0):
        return x + 1

    g.add("t0", inc, deps=[])
    for i in range(1, 3000):
        g.add(f"t{i}", inc, deps=[f"t{i - 1}"])
    out = await ag.run(g)
    assert out.results["t2999"] == 3000
    assert len(ag.reset(out, "t0").descendants("t0")) == 2999
    assert len(out.ancestors("t2999")) == 2999


def yields_then(k, action):
    """A coroutine function that lets the loop turn ``k`` times, then calls ``action``."""

    async def fn():
        for _ in range(k):
            await asyncio.sleep(0)
        return action()

    return fn


def raiser(message):
    def action():
        raise ValueError(message)

    return action


async def test_a_failure_that_lands_while_stopping_is_recorded_as_a_failure():
    r"""
    fail_fast: 'a' fails; 'b' fails one loop turn later, while the run is stopping.
    b's own exception must be kept (FAILED), not overwritten by a cancellation.
    """
    g = ag.Graph()
    g.add("a", yields_then(3, raiser("a broke")))
    g.add("b", yields_then(4, raiser("b broke")))
    g.add("below_b", lambda b: b, deps=["b"])
    with pytest.raises(ag.TaskFailures) as info:
        await ag.run(g, fail_fast=True)
    out = info.value.graph
    assert out.status["a"] is ag.State.FAILED
    assert out.status["b"] is ag.State.FAILED
    assert str(out.errors["b"]) == "b broke"
    assert out.status["below_b"] is ag.State.SKIPPED


async def test_a_base_exception_that_is_not_an_exception_is_a_failure():
    class Abort(BaseException):
        pass

    async def aborts():
        raise Abort("stop")

    g = ag.Graph()
    g.add("aborts", aborts)
    g.add("after", lambda aborts: 1, deps=["aborts"])
    out = await ag.run(g)
    assert statuses(out) == {"aborts": "failed", "after": "skipped"}
    err = out.errors["aborts"]
    assert isinstance(err, ag.TaskError)
    assert isinstance(err.__cause__, Abort)
    assert "Abort" in str(err)
    with pytest.raises(ag.TaskFailures):
        out.raise_for_failures()
    with pytest.raises(ag.TaskFailures) as info:
        await ag.run(g, fail_fast=True)
    assert isinstance(info.value.exceptions[0], ag.TaskError)


async def test_a_task_added_to_the_input_during_the_run_is_not_in_the_result():
    started = anyio.Event()
    release = anyio.Event()
    g = ag.Graph()

    @g.task
    async def a():
        started.set()
        await release.wait()
        return 1

    run = asyncio.ensure_future(ag.run(g))
    with anyio.fail_after(GUARD):
        await started.wait()
        g.add("late", lambda: 2)
        release.set()
        out = await run
    assert list(out) == ["a"]
    assert out.results == {"a": 1}
    assert out.run_sync().results == {"a": 1}  # a consistent graph
    assert "late" in g


async def test_io_tasks_start_before_cpu_tasks_end_to_end(monkeypatch):
    r"""
      cpu_a  cpu_b   io_c   io_d      (all ready at once, CPU ones defined first)
    Start order is recorded in this process: an IO coroutine when its body starts, a
    CPU task when the runner hands it to the pool. Both IO tasks come first.
    """
    from asyncgraph._executors import process as _process

    order: list[str] = []
    real_call = _process.ProcessPool.call

    async def recording_call(self, task, fn_bytes, args, *rest):
        order.append(task)
        return await real_call(self, task, fn_bytes, args, *rest)

    monkeypatch.setattr(_process.ProcessPool, "call", recording_call)
    g = ag.Graph()
    g.add("cpu_a", where_am_i, kind="cpu")
    g.add("cpu_b", where_am_i, kind="cpu")

    def io(name):
        async def fn():
            order.append(name)

        return fn

    g.add("io_c", io("io_c"))
    g.add("io_d", io("io_d"))
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=2)
    assert set(out.status.values()) == {ag.State.DONE}
    assert order[:2] == ["io_c", "io_d"]
    assert sorted(order[2:]) == ["cpu_a", "cpu_b"]


def where_am_i():
    import os

    return os.getpid()


async def test_deadline_during_a_retry_backoff_cancels_with_the_last_error():
    g = ag.Graph()
    g.add("flaky", lambda: 1 / 0, retries=3, retry_delay=60)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, deadline=0.2)
    rec = out.records["flaky"]
    assert rec.status is ag.State.CANCELLED
    assert rec.attempts == 1
    assert "waiting to retry after ZeroDivisionError" in str(rec.error)
    assert "deadline" in str(rec.error)


async def test_structure_is_computed_once_per_graph(monkeypatch):
    from asyncgraph import _scheduler

    calls = []
    real = _scheduler.critical_paths

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_scheduler, "critical_paths", counting)
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a, deps=["a"])
    # Two tasks ready at once, so the run needs their order (a run that never has two
    # never computes the paths: issue 15's lazy keys, tests/test_fused.py).
    g.add("c", lambda: 2)
    await ag.run(g)
    await ag.run(g)
    assert len(calls) == 1  # the graph's cache serves the second run
