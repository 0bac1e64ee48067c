"""Results left on the Dask cluster: a CPU task whose every dependent is a plain CPU task of
the run is done once Dask has its result, without fetching it; its dependents get its
future; the run fetches every such result in one gather at its end (the result graph
holds values), or, with ``DaskBackend(client, keep_remote=True)``, leaves an
``ag.RemoteResult`` handle there.

"Not fetched" is proved with a probe on the client: every gather it sends (``gather``,
``await future``: both go through ``Client._gather``) is recorded with its keys, and a
listener notes how many had gone out when the last task's ``done`` event came.

One LocalCluster of threads (processes=False) for the module, on the module's loop.
Skipped without ``distributed``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import asyncgraph as ag

distributed = pytest.importorskip("distributed")

from test_dask import flaky, scheduler_keys, square  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.asyncio(loop_scope="module"),
]

STARTED = threading.Event()
RELEASE = threading.Event()


@pytest.fixture(autouse=True)
def gates() -> Iterator[None]:
    STARTED.clear()
    RELEASE.clear()
    yield
    RELEASE.set()  # whatever the test did, no worker thread stays blocked


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster_client() -> AsyncIterator[Any]:
    async with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            asynchronous=True,
            dashboard_address=":0",
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster, asynchronous=True, set_as_default=False) as c,
    ):
        yield c


class Gathers:
    """Every gather the client sends, as the list of its keys' task names."""

    def __init__(self, client: Any) -> None:
        self.calls: list[list[str]] = []
        self.client = client
        self.original = client._gather

        async def counting(futures: Any, *args: Any, **kwargs: Any) -> Any:
            keys = [f.key for f in futures] if isinstance(futures, list) else [futures]
            self.calls.append([str(k).split("-")[0] for k in keys])
            return await self.original(futures, *args, **kwargs)

        client._gather = counting

    def names(self) -> set[str]:
        return {n for call in self.calls for n in call}

    def undo(self) -> None:
        self.client._gather = self.original


@pytest_asyncio.fixture(loop_scope="module")
async def client(cluster_client: Any) -> AsyncIterator[Any]:
    assert await scheduler_keys(cluster_client) == []  # the last test left nothing
    yield cluster_client
    assert cluster_client.status == "running"  # a user's client is never closed


@pytest.fixture
def gathers(client: Any) -> Iterator[Gathers]:
    probe = Gathers(client)
    yield probe
    probe.undo()


def hold(x: Any = None) -> int:
    """Blocks its worker thread until the test releases it."""
    STARTED.set()
    RELEASE.wait(30)
    return 1


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def fails(x: int) -> int:
    raise ValueError(f"no good: {x}")


def chain(n: int) -> ag.Graph:
    g = ag.Graph()
    g.add("c0", functools.partial(square, 3), kind="cpu")
    for i in range(1, n):
        g.add(f"c{i}", inc, deps=[f"c{i - 1}"], kind="cpu")
    return g


def at_last_done(g: ag.Graph, last: str, probe: Gathers) -> tuple[list[int], Any]:
    """An on_event listener noting how many gathers had gone out when ``last`` was done."""
    seen: list[int] = []

    def listen(e: ag.Event) -> None:
        if e.kind is ag.EventKind.DONE and e.task == last:
            seen.append(len(probe.calls))

    return seen, listen


# -- the default: fetched once, at the end ------------------------------------------------


async def test_a_chain_is_fetched_in_one_gather_at_the_end(client: Any, gathers: Gathers) -> None:
    g = chain(5)
    seen, listen = at_last_done(g, "c4", gathers)
    done = await ag.run(g, backend=ag.DaskBackend(client), on_event=listen)
    assert seen == [0]  # every task done, nothing fetched yet
    assert len(gathers.calls) == 1
    assert sorted(gathers.calls[0]) == ["c0", "c1", "c2", "c3", "c4"]
    local = await ag.run(chain(5), backend=ag.InlineBackend())
    assert done.results == local.results == {f"c{i}": 9 + i for i in range(5)}
    assert not any(isinstance(v, ag.RemoteResult) for v in done.results.values())
    assert await scheduler_keys(client) == []


async def test_a_result_the_driver_takes_is_fetched_as_its_task_ends(
    client: Any, gathers: Gathers
) -> None:
    g = ag.Graph()
    g.add("a", functools.partial(square, 4), kind="cpu")
    g.add("b", inc, deps=["a"], kind="cpu")  # a CPU dependent: b stays remote
    g.add("here", lambda a: a * 10, deps=["a"])  # a driver dependent: a comes here
    g.add("last", inc, deps=["b"], kind="cpu")
    seen: dict[str, set[str]] = {}

    def listen(e: ag.Event) -> None:
        if e.kind is ag.EventKind.STARTED:
            seen[e.task] = gathers.names()

    done = await ag.run(g, backend=ag.DaskBackend(client), on_event=listen)
    assert done.results == {"a": 16, "b": 17, "here": 160, "last": 18}
    assert "a" in seen["here"]  # fetched before the driver task started
    assert gathers.calls[-1] == ["b", "last"]  # only the remote ones, at the end
    assert "b" not in gathers.names() - set(gathers.calls[-1])
    assert await scheduler_keys(client) == []


async def test_what_takes_a_future_on_the_cluster() -> None:
    from asyncgraph._executors.dask import _takes_futures

    g = ag.Graph()
    g.add("a", lambda: 1, kind="cpu")
    g.add("b", inc, deps=["a"], kind="cpu")
    g.add("io", inc, deps=["a"])
    g.add("over", inc, deps=["a"], over="a", kind="cpu")
    tasks = g.tasks
    assert _takes_futures(tasks["b"])
    assert not _takes_futures(tasks["io"])
    assert not _takes_futures(tasks["over"])  # expanded on the driver
    assert not _takes_futures(dataclasses.replace(tasks["b"], skip_none=True))  # decided here


async def test_fan_out_over_a_cluster_result_gets_its_value(client: Any) -> None:
    g = ag.Graph()
    g.add("items", lambda: [1, 2, 3], kind="cpu")
    g.add("sq", square, deps=["items"], over="items", kind="cpu")
    g.add("total", sum, deps=["sq"], kind="cpu")
    done = await ag.run(g, backend=ag.DaskBackend(client))
    assert done.results["sq"] == [1, 4, 9]
    assert done.results["total"] == 14
    assert await scheduler_keys(client) == []


async def test_an_open_run_reads_values_as_they_come(client: Any, gathers: Gathers) -> None:
    seen: dict[str, Any] = {}
    async with ag.open_run(chain(3), backend=ag.DaskBackend(client)) as r:
        async for name, value in r.as_completed():
            seen[name] = value
    assert seen == {"c0": 9, "c1": 10, "c2": 11}
    assert len(gathers.calls) >= 1 and all(len(c) == 1 for c in gathers.calls)  # each as it ends
    assert await scheduler_keys(client) == []


async def test_a_store_run_commits_bytes_made_on_the_worker(
    client: Any, gathers: Gathers, tmp_path: Path
) -> None:
    store = ag.SQLiteStore(tmp_path / "s.db")
    done = await ag.run(chain(3), backend=ag.DaskBackend(client), store=store)
    assert done.results == {"c0": 9, "c1": 10, "c2": 11}
    loaded = ag.load(chain(3), store)
    assert dict(loaded.results) == {"c0": 9, "c1": 10, "c2": 11}
    assert gathers.names() == {"c0", "c1", "c2"}  # only the "-bytes" keys, per task
    assert await scheduler_keys(client) == []


async def test_failures_skips_and_retries_with_remote_inputs(
    client: Any, gathers: Gathers, tmp_path: Path
) -> None:
    counter = str(tmp_path / "n")
    g = ag.Graph()
    g.add("a", functools.partial(square, 5), kind="cpu")
    g.add("bad", fails, deps=["a"], kind="cpu")
    g.add("after_bad", inc, deps=["bad"], kind="cpu")
    g.add("retried", lambda a: f"{a}:{flaky(counter, 1)}", deps=["a"], kind="cpu", retries=1)
    done = await ag.run(g, backend=ag.DaskBackend(client))
    assert done.status == {
        "a": ag.State.DONE,
        "bad": ag.State.FAILED,
        "after_bad": ag.State.SKIPPED,
        "retried": ag.State.DONE,
    }
    assert isinstance(done.errors["bad"], ValueError)
    assert done.results == {"a": 25, "retried": "25:ok after 2"}  # the retry got a's future
    assert done.records["retried"].attempts == 2
    assert await scheduler_keys(client) == []


async def test_eager_and_remote_together(client: Any, gathers: Gathers) -> None:
    g = chain(6)
    seen, listen = at_last_done(g, "c5", gathers)
    done = await ag.run(g, backend=ag.DaskBackend(client, eager=True), on_event=listen)
    assert seen == [0]
    assert done.results == {f"c{i}": 9 + i for i in range(6)}
    assert await scheduler_keys(client) == []


# -- stopping a run ---------------------------------------------------------------------


async def test_a_cancelled_run_leaves_nothing_on_the_scheduler(client: Any) -> None:
    g = ag.Graph()
    g.add("a", functools.partial(square, 2), kind="cpu")
    g.add("b", inc, deps=["a"], kind="cpu")
    g.add("wait", hold, deps=["b"], kind="cpu")
    run = asyncio.ensure_future(ag.run(g, backend=ag.DaskBackend(client)))
    await asyncio.to_thread(STARTED.wait, 30)  # a and b done, on the cluster
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    RELEASE.set()
    assert await scheduler_keys(client) == []


async def test_a_cancelled_open_run_keeps_the_done_values(client: Any) -> None:
    g = ag.Graph()
    g.add("a", functools.partial(square, 2), kind="cpu")
    g.add("b", inc, deps=["a"], kind="cpu")
    g.add("wait", hold, deps=["b"], kind="cpu")
    g.add("after", inc, deps=["wait"], kind="cpu")
    async with ag.open_run(g, backend=ag.DaskBackend(client)) as r:
        await asyncio.to_thread(STARTED.wait, 30)
        r.cancel()
    RELEASE.set()
    assert r.graph.results == {"a": 4, "b": 5}
    assert r.graph.status["wait"] is ag.State.CANCELLED
    assert await scheduler_keys(client) == []

    done = await ag.run(chain(2), backend=ag.DaskBackend(client), deadline=30)
    assert done.results == {"c0": 9, "c1": 10}  # the deadline's scope, not reached


async def test_fail_fast_fetches_what_was_done(client: Any, gathers: Gathers) -> None:
    g = ag.Graph()
    g.add("a", functools.partial(square, 3), kind="cpu")
    g.add("b", inc, deps=["a"], kind="cpu")
    g.add("bad", fails, deps=["b"], kind="cpu")
    g.add("wait", hold, deps=["a"], kind="cpu")
    g.add("after", inc, deps=["wait"], kind="cpu")
    try:
        with pytest.raises(ag.TaskFailures) as caught:
            await ag.run(g, backend=ag.DaskBackend(client), fail_fast=True)
    finally:
        RELEASE.set()
    graph = caught.value.graph
    assert isinstance(graph.errors["bad"], ValueError)
    assert graph.status["wait"] is ag.State.CANCELLED
    assert graph.results == {"a": 9, "b": 10}  # b stayed remote, fetched at the end
    assert await scheduler_keys(client) == []


# -- keep_remote ----------------------------------------------------------------------------


async def test_keep_remote_leaves_handles_held_by_the_users_client(
    client: Any, gathers: Gathers
) -> None:
    g = chain(3)
    g.add("here", lambda c1: c1 * 2, deps=["c1"])  # the driver takes c1: a value
    done = await ag.run(g, backend=ag.DaskBackend(client, keep_remote=True))
    assert gathers.names() == {"c1"}
    handle = done.results["c2"]
    assert isinstance(handle, ag.RemoteResult)
    assert handle.task == "c2"
    assert repr(handle).startswith("<RemoteResult of task 'c2': int on the Dask cluster")
    assert done.results["c1"] == 10
    assert done.results["here"] == 20
    assert isinstance(handle.future, distributed.Future)
    assert await handle.fetch() == 11
    assert await done.results["c0"].fetch() == 9
    held = {str(k).split("-")[0] for k in client.futures}
    assert held == {"c0", "c2"}  # the run released the rest, and keeps nothing of its own
    later = client.submit(inc, handle.future)  # worker to worker
    assert await later == 12
    later.release()
    for name in ("c0", "c2"):
        done.results[name].release()
    assert await scheduler_keys(client) == []


async def test_keep_remote_without_a_users_client_is_refused() -> None:
    for given, what in (((), "no cluster"), (("tcp://127.0.0.1:8786",), "scheduler address")):
        with pytest.raises(ValueError, match=what) as caught:
            ag.DaskBackend(*given, keep_remote=True)
        assert "DaskBackend(client, keep_remote=True)" in str(caught.value)
    with pytest.raises(TypeError, match="keep_remote must be True or False"):
        ag.DaskBackend(keep_remote=1)  # type: ignore[arg-type]


async def test_keep_remote_cancelled_run_leaves_nothing(client: Any) -> None:
    g = ag.Graph()
    g.add("a", functools.partial(square, 2), kind="cpu")
    g.add("wait", hold, deps=["a"], kind="cpu")
    run = asyncio.ensure_future(ag.run(g, backend=ag.DaskBackend(client, keep_remote=True)))
    await asyncio.to_thread(STARTED.wait, 30)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    RELEASE.set()
    assert await scheduler_keys(client) == []


async def test_the_runs_own_cluster_is_fetched_before_it_closes() -> None:
    # DaskBackend() of threads: the last gather runs before the cluster goes.
    g = chain(4)
    g.add("far", inc, deps=["c1"], kind="cpu")
    done = await ag.run(g, backend=ag.DaskBackend(processes=False, n_workers=2))
    assert done.results == {"c0": 9, "c1": 10, "c2": 11, "c3": 12, "far": 11}
    assert not any(isinstance(v, ag.RemoteResult) for v in done.results.values())
