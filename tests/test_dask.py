"""The Dask backend's semantics, on a LocalCluster of threads (processes=False).

Dask's own scenarios are ported as asyncgraph runs (names from
``distributed/tests/test_client.py`` next to each); worker death, process leaks and the
driver crash are in tests/test_dask_processes.py. Skipped without ``distributed``.

The tests that take ``client`` share one user's cluster per loop backend for the module
(tests/dask_fixtures.py: each gets it clean, or fails at set-up); the run's own cluster
(``DaskBackend()``) is kept for the cases that are about it: the first one below, the
named resources (workers of the run's own, declared by ``cluster_kwargs``), a Cluster
object and an address.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dask_fixtures import clean, scheduler_keys, shared_threads_client

import asyncgraph as ag

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[Any]:
    """A user's cluster and asynchronous client (one worker thread each on two workers),
    one per loop backend for the module (tests/dask_fixtures.py), closed by the tests,
    never by asyncgraph."""
    async for c in shared_threads_client():
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def client(shared: Any) -> Any:
    return await clean(shared)  # as the last test left it: nothing of its own


# Gates shared with the worker threads (processes=False): module globals, so the task
# functions that use them pickle by reference and find the same objects here.
STARTED = threading.Event()
RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def gates() -> Iterator[None]:
    STARTED.clear()
    RELEASE.clear()
    yield
    RELEASE.set()  # whatever the test did, no worker thread stays blocked


def hold() -> int:
    """Blocks its worker thread until the test releases it."""
    STARTED.set()
    RELEASE.wait(30)
    return 1


def use(data: list[int]) -> int:
    STARTED.set()
    RELEASE.wait(30)
    return sum(data)


def square(x: int) -> int:
    return x * x


def fails(x: int) -> int:
    raise ValueError(f"no good: {x}")


async def add_async(x: int, y: int = 1) -> int:
    await asyncio.sleep(0)
    return x + y


def threads_cluster() -> ag.DaskBackend:
    return ag.DaskBackend(processes=False, n_workers=2)


# -- results, failures, skipped ---------------------------------------------------------


async def test_results_failures_as_data_and_skipped_descendants() -> None:
    g = ag.Graph()
    g.add("a", lambda: 3, kind="cpu")
    g.add("b", square, deps=["a"], kind="cpu")
    g.add("bad", fails, deps=["a"], kind="cpu")
    g.add("after_bad", square, deps=["bad"], kind="cpu")
    g.add("local", lambda b: b + 1, deps=["b"])  # an IO thread, on the driver
    done = await ag.run(g, backend=threads_cluster())
    assert done.results == {"a": 3, "b": 9, "local": 10}
    assert done.status["bad"] is ag.State.FAILED
    assert done.status["after_bad"] is ag.State.SKIPPED
    rec = done.records["bad"]
    assert isinstance(rec.error, ValueError) and str(rec.error) == "no good: 3"
    assert rec.traceback is not None and "in fails" in rec.traceback  # the worker's


@pytest.mark.asyncio(loop_scope="module")
async def test_async_task_and_partial_of_one(client: Any) -> None:
    # test_async_task, test_async_task_with_partial
    g = ag.Graph()
    g.add("a", functools.partial(add_async, 1), kind="cpu")
    g.add("p", functools.partial(add_async, y=10), deps=["a"], kind="cpu")
    done = await ag.run(g, backend=ag.DaskBackend(client))
    assert done.results == {"a": 2, "p": 12}


@pytest.mark.asyncio(loop_scope="module")
async def test_lambdas_and_closures_ship(client: Any) -> None:
    offset = 5
    g = ag.Graph()
    g.add("a", lambda: offset, kind="cpu")
    g.add("b", lambda a: [a, offset * 2], deps=["a"], kind="cpu")
    done = await ag.run(g, backend=ag.DaskBackend(client))
    assert done.results == {"a": 5, "b": [5, 10]}


@pytest.mark.asyncio(loop_scope="module")
async def test_a_function_that_cannot_travel_is_refused_before_anything_runs(client: Any) -> None:
    lock = threading.Lock()
    g = ag.Graph()
    g.add("ok", lambda: 1, kind="cpu")
    g.add("locked", lambda: lock.locked(), kind="cpu")
    with pytest.raises(ag.PicklingError, match="locked"):
        await ag.run(g, backend=ag.DaskBackend(client))


# -- keys and retries ---------------------------------------------------------------------


def flaky(counter: str, fail_times: int) -> str:
    """Fails with ZeroDivisionError on its first ``fail_times`` calls (counted in a file,
    so it counts the same on any worker)."""
    path = Path(counter)
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + 1))
    if n < fail_times:
        return str(1 / 0)
    return f"ok after {n + 1}"


@pytest.mark.parametrize(("retries", "ok"), [(2, True), (1, False)])
@pytest.mark.asyncio(loop_scope="module")
async def test_retries_with_varying_failures(
    tmp_path: Path, client: Any, retries: int, ok: bool
) -> None:
    # test_map_retries with map_varying, and the same-key trap: every attempt has a key
    # of its own, so a retry runs again instead of returning the old error.
    counter = str(tmp_path / "n")
    g = ag.Graph()
    g.add(
        "f",
        functools.partial(flaky, counter, 2),
        kind="cpu",
        retries=retries,
        retry_delay=0.001,
    )
    events: list[ag.Event] = []
    done = await ag.run(g, backend=ag.DaskBackend(client), on_event=events.append)
    retrying = [e for e in events if e.kind is ag.EventKind.RETRYING]
    assert len(retrying) == min(retries, 2)
    if ok:
        assert done.results["f"] == "ok after 3"
        assert done.records["f"].attempts == 3
    else:
        assert isinstance(done.records["f"].error, ZeroDivisionError)
        assert done.records["f"].attempts == 2
    assert not client.futures  # no attempt's future is left behind
    assert await scheduler_keys(client) == []


@pytest.mark.asyncio(loop_scope="module")
async def test_every_submission_gets_a_key_of_its_own(client: Any) -> None:
    # test_map_keynames: two runs of one graph, and a retry: no two share a key, and
    # Dask groups each key under its task's name.
    keys: list[str] = []

    class Keys(distributed.diagnostics.plugin.SchedulerPlugin):  # type: ignore[misc]
        def transition(self, key: Any, start: str, finish: str, *args: Any, **kw: Any) -> None:
            if start == "released" and finish == "waiting":
                keys.append(str(key))

    client.cluster.scheduler.add_plugin(Keys(), name="asyncgraph-keys")  # in this process
    g = ag.Graph()
    g.add("a", lambda: 1, kind="cpu")
    g.add("b", fails, deps=["a"], kind="cpu", retries=1, retry_delay=0.001)
    try:
        await ag.run(g, backend=ag.DaskBackend(client))
        await ag.run(ag.reset_failed(g), backend=ag.DaskBackend(client))
    finally:
        client.cluster.scheduler.remove_plugin("asyncgraph-keys")
    assert len(keys) == 6 and len(set(keys)) == 6
    assert sorted(distributed.utils.key_split(k) for k in keys) == ["a", "a", "b", "b", "b", "b"]


@pytest.mark.asyncio(loop_scope="module")
async def test_retry_of_dependencies_after_a_fix(tmp_path: Path, client: Any) -> None:
    # test_retry_dependencies: a dependency fails, is fixed, reset_failed + rerun
    # reruns it and its dependent, and reuses nothing stale from the cluster.
    flag = tmp_path / "fixed"

    def dep() -> int:
        if not flag.exists():
            raise FileNotFoundError(str(flag))
        return 20

    g = ag.Graph()
    g.add("dep", dep, kind="cpu")
    g.add("top", lambda dep: dep + 1, deps=["dep"], kind="cpu")
    backend = ag.DaskBackend(client)
    first = await ag.run(g, backend=backend)
    assert first.status == {"dep": ag.State.FAILED, "top": ag.State.SKIPPED}
    flag.write_text("")
    second = await ag.run(ag.reset_failed(first), backend=backend)
    assert second.results == {"dep": 20, "top": 21}


# -- cancellation, deadline, fail_fast, timeouts -------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_cancel_leaves_no_future_on_the_scheduler(client: Any) -> None:
    # test_cancel: a run cancelled while a task runs and others wait

    g = ag.Graph()
    g.add("hold", hold, kind="cpu")
    for i in range(4):
        g.add(f"after{i}", square, deps=["hold"], kind="cpu")
    g.add("queued", functools.partial(square, 2), kind="cpu")
    try:
        async with ag.open_run(g, backend=ag.DaskBackend(client)) as r:
            await asyncio.to_thread(STARTED.wait, 30)
            r.cancel()
        done = r.graph
    finally:
        RELEASE.set()
    assert done.status["hold"] is ag.State.CANCELLED
    assert all(done.status[f"after{i}"] is ag.State.CANCELLED for i in range(4))
    assert not client.futures
    assert await scheduler_keys(client) == []


@pytest.mark.asyncio(loop_scope="module")
async def test_deadline_cancels_every_future(client: Any) -> None:

    g = ag.Graph()
    g.add("hold", hold, kind="cpu")
    g.add("next", square, deps=["hold"], kind="cpu")
    try:
        done = await ag.run(g, backend=ag.DaskBackend(client), deadline=0.2)
    finally:
        RELEASE.set()
    assert done.status == {"hold": ag.State.CANCELLED, "next": ag.State.CANCELLED}
    assert "deadline" in str(done.records["hold"].error)
    assert not client.futures
    assert await scheduler_keys(client) == []


@pytest.mark.asyncio(loop_scope="module")
async def test_fail_fast_cancels_the_rest(client: Any) -> None:

    g = ag.Graph()
    g.add("hold", hold, kind="cpu")
    g.add("bad", functools.partial(fails, 1), kind="cpu")
    try:
        with pytest.raises(ag.TaskFailures) as info:
            await ag.run(g, backend=ag.DaskBackend(client), fail_fast=True)
    finally:
        RELEASE.set()
    assert "bad" in str(info.value)
    assert not client.futures


@pytest.mark.asyncio(loop_scope="module")
async def test_a_timeout_is_recorded_truthfully(client: Any) -> None:

    g = ag.Graph()
    g.add("slow", hold, kind="cpu", timeout=0.2)
    g.add("quick", functools.partial(square, 3), kind="cpu")
    try:
        done = await ag.run(g, backend=ag.DaskBackend(client))
    finally:
        RELEASE.set()
    err = done.records["slow"].error
    assert isinstance(err, TimeoutError)
    assert "timeout=0.2s" in str(err) and "cannot stop a running thread" in str(err)
    assert done.results == {"quick": 9}
    assert not client.futures


@pytest.mark.asyncio(loop_scope="module")
async def test_as_completed_yields_each_once_and_break_cancel_leaves_nothing(client: Any) -> None:
    # test_as_completed_async_for / test_as_completed_async_for_cancel
    g = ag.Graph()
    for i in range(6):
        g.add(f"t{i}", functools.partial(square, i), kind="cpu")
    seen: dict[str, Any] = {}
    async with ag.open_run(g, backend=ag.DaskBackend(client)) as r:
        async for name, value in r.as_completed():
            seen[name] = value
    assert seen == {f"t{i}": i * i for i in range(6)}

    g2 = ag.Graph()
    g2.add("first", functools.partial(square, 2), kind="cpu")
    g2.add("hold", lambda first: hold(), deps=["first"], kind="cpu")
    try:
        async with ag.open_run(g2, backend=ag.DaskBackend(client)) as r:
            async for name, _ in r.as_completed():
                assert name == "first"
                break
            r.cancel()
    finally:
        RELEASE.set()
    assert r.graph.status["first"] is ag.State.DONE
    assert not client.futures
    assert await scheduler_keys(client) == []


@pytest.mark.asyncio(loop_scope="module")
async def test_a_blocking_async_task_does_not_stall_the_worker(client: Any) -> None:
    # test_failed_workers.py's block_evloop: a coroutine that blocks runs under
    # asyncio.run in the worker's thread, not on the worker's loop.
    import time

    async def blocks() -> str:
        time.sleep(0.3)  # noqa: ASYNC251 - blocking on purpose
        return "ok"

    g = ag.Graph()
    g.add("blocks", blocks, kind="cpu")
    done = await ag.run(g, backend=ag.DaskBackend(client))
    assert done.results == {"blocks": "ok"}


# -- events, progress, priority, futures passed on ---------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_events_per_task(client: Any) -> None:
    g = ag.Graph()
    g.add("a", lambda: 1, kind="cpu")
    g.add("b", fails, deps=["a"], kind="cpu")
    events: list[tuple[str, str]] = []
    await ag.run(
        g, backend=ag.DaskBackend(client), on_event=lambda e: events.append((e.kind.value, e.task))
    )
    assert (
        events.index(("started", "a"))
        < events.index(("done", "a"))
        < events.index(("started", "b"))
    )
    assert ("failed", "b") in events


@pytest.mark.asyncio(loop_scope="module")
async def test_priority_carries_the_critical_path_order(client: Any) -> None:
    # Four ready CPU tasks with downstream chains of different lengths: the longer a
    # task's path, the earlier the run dispatches it and the higher its Dask priority
    # (read from the scheduler, in this process, as each key arrives).
    g = ag.Graph()
    for i in range(4):
        g.add(f"t{i}", functools.partial(square, i), kind="cpu")
        prev = f"t{i}"
        for j in range(i):
            g.add(f"t{i}_{j}", lambda x: x, deps=[prev])
            prev = f"t{i}_{j}"
    seen: dict[str, Any] = {}
    sched = client.cluster.scheduler

    class Priorities(distributed.diagnostics.plugin.SchedulerPlugin):  # type: ignore[misc]
        def transition(self, key: Any, start: str, finish: str, *a: Any, **k: Any) -> None:
            if start == "released" and key in sched.tasks:
                seen.setdefault(distributed.utils.key_split(key), sched.tasks[key].priority)

    sched.add_plugin(Priorities(), name="asyncgraph-priorities")
    try:
        done = await ag.run(g, backend=ag.DaskBackend(client, capacity=8))
    finally:
        sched.remove_plugin("asyncgraph-priorities")
    order = sorted(seen, key=lambda n: seen[n])  # Dask runs the smallest tuple first
    assert order == ["t3", "t2", "t1", "t0"]
    assert done.status["t3_2"] is ag.State.DONE


@pytest.mark.asyncio(loop_scope="module")
async def test_a_result_on_the_cluster_goes_to_its_cpu_dependent_as_a_future(client: Any) -> None:
    def make() -> list[int]:
        return list(range(1000))

    def deps_of(dask_scheduler: Any) -> dict[str, list[str]]:
        return {
            str(k): [str(d.key) for d in ts.dependencies] for k, ts in dask_scheduler.tasks.items()
        }

    g = ag.Graph()
    g.add("make", make, kind="cpu")
    g.add("use", use, deps=["make"], kind="cpu")
    g.add("local", len, deps=["make"])  # an IO dependent gets the value
    try:
        async with ag.open_run(g, backend=ag.DaskBackend(client)) as r:
            await asyncio.to_thread(STARTED.wait, 30)
            deps = await client.run_on_scheduler(deps_of)
            RELEASE.set()
            await r.wait()
    finally:
        RELEASE.set()
    use_key = next(k for k in deps if k.startswith("use-"))
    assert [d.split("-")[0] for d in deps[use_key]] == ["make"]  # worker to worker
    assert r.graph.results == {"make": list(range(1000)), "use": sum(range(1000)), "local": 1000}
    assert not client.futures  # the kept future was released


# -- resources, clients, bad input ------------------------------------------------------


async def test_named_resource_maps_to_dask_worker_resources() -> None:
    g = ag.Graph()
    g.add("train", lambda: "trained", kind="cpu", resources=["gpu"])
    backend = ag.DaskBackend(
        processes=False,
        n_workers=1,
        resources={"gpu": {"GPU": 1}},
        cluster_kwargs={"resources": {"GPU": 1}},
    )
    done = await ag.run(g, backend=backend, limits={"gpu": 1})
    assert done.results == {"train": "trained"}
    # A cluster whose workers lack the resource: a clear error, not a task stuck forever.
    bare = ag.DaskBackend(processes=False, n_workers=1, resources={"gpu": {"GPU": 1}})
    done = await ag.run(g, backend=bare, limits={"gpu": 1})
    err = done.records["train"].error
    assert isinstance(err, ValueError) and "no worker of the cluster has" in str(err)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_users_client_is_never_closed(client: Any) -> None:
    g = ag.Graph()
    g.add("a", lambda: 1, kind="cpu")
    await ag.run(g, backend=ag.DaskBackend(client))
    assert client.status == "running"
    assert await client.submit(square, 4) == 16


async def test_a_cluster_object_gets_a_client_of_the_run() -> None:
    async with distributed.LocalCluster(
        n_workers=1, processes=False, asynchronous=True, dashboard_address=":0"
    ) as cluster:
        g = ag.Graph()
        g.add("a", lambda: 7, kind="cpu")
        done = await ag.run(g, backend=ag.DaskBackend(cluster))
        assert done.results == {"a": 7}
        assert cluster.status.name == "running"


async def test_an_address_is_connected_and_our_client_closed() -> None:
    async with distributed.LocalCluster(
        n_workers=1,
        processes=False,
        asynchronous=True,
        dashboard_address=":0",
        protocol="tcp",
    ) as cluster:
        g = ag.Graph()
        g.add("a", lambda: 7, kind="cpu")
        done = await ag.run(g, backend=ag.DaskBackend(cluster.scheduler_address, capacity=2))
        assert done.results == {"a": 7}
        info = cluster.scheduler.clients
        assert [c for c in info if not c.startswith("fire-and-forget")] == []


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
def test_a_client_on_another_loop_is_refused() -> None:
    async def made_elsewhere() -> Any:  # never connected: only its loop matters
        return distributed.Client("tcp://127.0.0.1:1", asynchronous=True, set_as_default=False)

    c = asyncio.run(made_elsewhere())
    g = ag.Graph()
    g.add("a", lambda: 1, kind="cpu")
    with pytest.raises(ValueError, match="another event loop.*pass the scheduler address"):
        ag.run_sync(g, backend=ag.DaskBackend(c))
    del c
    gc.collect()  # its close() warns now, inside this test's filter, not in a later test


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"cluster": 42}, TypeError, "cluster must be a scheduler address"),
        ({"cluster": "  "}, ValueError, "address is empty"),
        ({"n_workers": 0}, ValueError, "n_workers must be >= 1"),
        ({"capacity": "2"}, TypeError, "capacity must be an int"),
        ({"threads_per_worker": 0}, ValueError, "threads_per_worker must be >= 1"),
        ({"resources": {"gpu": 1}}, TypeError, r"resources\['gpu'\] must be a non-empty"),
        ({"resources": {"gpu": {"GPU": -1}}}, ValueError, "amount must be a number > 0"),
        ({"allowed_failures": -1}, ValueError, "allowed_failures must be"),
        ({"connect_timeout": 0}, ValueError, "connect_timeout"),
    ],
)
def test_bad_input_is_refused_naming_the_parameter(
    kwargs: dict[str, Any], error: type, text: str
) -> None:
    with pytest.raises(error, match=text):
        ag.DaskBackend(**kwargs)


def test_a_synchronous_client_is_refused() -> None:
    class Sync(distributed.Client):  # type: ignore[misc]
        def __init__(self) -> None:  # no connection: only what the check reads
            self._asynchronous = False

        @property
        def asynchronous(self) -> bool:
            return False

        def __del__(self) -> None:
            return None

    with pytest.raises(ValueError, match="Client is synchronous"):
        ag.DaskBackend(Sync())


def test_import_asyncgraph_does_not_import_distributed() -> None:
    code = "import sys, asyncgraph; print('distributed' in sys.modules, 'dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_backend_is_public_and_documented() -> None:
    assert ag.DaskBackend.__module__ == "asyncgraph"
    assert ag.DaskBackend is __import__("asyncgraph._executors.dask").DaskBackend
    assert ag.DaskBackend.__doc__ and "LocalCluster" in ag.DaskBackend.__doc__
    assert repr(ag.DaskBackend("tcp://h:1")) == "DaskBackend('tcp://h:1')"


def exits() -> None:
    sys.exit(3)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_tasks_system_exit_ends_the_run_as_on_the_pool(client: Any) -> None:
    # Raised in a Dask worker's thread it would break the worker; it reaches the driver
    # inside an Exception and the run ends with it, after its cleanup.
    g = ag.Graph()
    g.add("exits", exits, kind="cpu")
    with pytest.raises(SystemExit):
        await ag.run(g, backend=ag.DaskBackend(client))
    assert client.status == "running"
    assert not client.futures
    assert await client.submit(square, 3) == 9  # the workers still work
