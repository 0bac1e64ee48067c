"""A result left on the cluster and lost with its worker is recomputed by Dask: the run
holds its future (the lineage) until its end, so a dependent that starts after the loss
still gets the value. A scheduler and three one-thread workers of this process, placed by
worker resources so that the test knows where each task runs. Skipped without
``distributed``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import asyncgraph as ag

distributed = pytest.importorskip("distributed")

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.asyncio(loop_scope="module"),
]

RELEASE = threading.Event()
CALLS: list[str] = []  # every call of ``make``, in any worker thread


def gate() -> int:
    RELEASE.wait(30)
    return 1


def make(x: int) -> int:
    CALLS.append("make")
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def _holders(dask_scheduler: Any, key: str) -> list[str]:
    return [ws.address for ws in dask_scheduler.tasks[key].who_has]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def placed() -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    async with distributed.Scheduler(dashboard_address=":0", port=0) as s:
        workers = {
            "gate": distributed.Worker(s.address, nthreads=1, resources={"G": 1}),
            "a1": distributed.Worker(s.address, nthreads=1, resources={"A": 1}),
            "a2": distributed.Worker(s.address, nthreads=1, resources={"A": 1}),
        }
        for w in workers.values():
            await w
        async with distributed.Client(s.address, asynchronous=True, set_as_default=False) as c:
            yield c, workers
        for w in workers.values():
            await w.close()


async def test_a_lost_remote_input_is_recomputed_by_dask(
    placed: tuple[Any, dict[str, Any]],
) -> None:
    client, workers = placed
    RELEASE.clear()
    CALLS.clear()
    g = ag.Graph()
    g.add("gate", gate, kind="cpu", resources=("g",))
    g.add("a", functools.partial(make, 3), kind="cpu", resources=("a",))
    g.add("c", add, deps=["a", "gate"], kind="cpu", resources=("g",))
    a_done = asyncio.Event()

    def listen(e: ag.Event) -> None:
        if e.kind is ag.EventKind.DONE and e.task == "a":
            a_done.set()

    backend = ag.DaskBackend(client, resources={"g": {"G": 1}, "a": {"A": 1}})
    limits = {"g": 2, "a": 2}
    run = asyncio.ensure_future(ag.run(g, backend=backend, limits=limits, on_event=listen))
    try:
        waiting = asyncio.ensure_future(a_done.wait())  # done on the cluster, not fetched
        await asyncio.wait([run, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        assert not run.done(), run.result()
        key = next(k for k in client.futures if str(k).startswith("a-"))
        where = await client.run_on_scheduler(_holders, key=key)
        assert len(where) == 1, where
        holder = next(w for w in workers.values() if w.address == where[0])
        await holder.close()  # the only copy of a's result goes with it
    finally:
        RELEASE.set()
    done = await run
    assert done.results == {"gate": 1, "a": 9, "c": 10}
    assert CALLS == ["make", "make"]  # computed again by Dask, from the held future
    assert done.records["a"].attempts == 1  # not an asyncgraph retry
