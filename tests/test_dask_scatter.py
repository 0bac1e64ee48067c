"""A value of the driver's above 8 MB goes to a Dask worker scattered, once, not
embedded in each task that takes it; smaller ones are embedded. Skipped without
``distributed``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from dask_fixtures import clean, shared_threads_client

import asyncgraph as ag

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared() -> AsyncIterator[Any]:
    async for c in shared_threads_client():  # one cluster per loop backend (dask_fixtures)
        yield c


@pytest_asyncio.fixture(loop_scope="module")
async def client(shared: Any) -> Any:
    return await clean(shared)


def size(data: bytes) -> int:
    return len(data)


class Seen(distributed.diagnostics.plugin.SchedulerPlugin):  # type: ignore[misc]
    """Each task's dependencies as the scheduler got them."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.deps: dict[str, list[str]] = {}

    def update_graph(self, scheduler: Any, *, keys: Any, **kwargs: Any) -> None:
        for k in keys:
            ts = scheduler.tasks.get(k)
            if ts is not None:
                self.deps[str(k)] = [str(d.key) for d in ts.dependencies]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("mb", [1, 9])
async def test_a_big_driver_value_is_scattered_once(client: Any, mb: int) -> None:
    async def load() -> bytes:  # an IO task: its result lives on the driver
        await asyncio.sleep(0)
        return b"x" * (mb << 20)

    g = ag.Graph()
    g.add("load", load)
    g.add("a", size, deps=["load"], kind="cpu")
    g.add("b", size, deps=["load"], kind="cpu")
    sched = client.cluster.scheduler
    seen = Seen(sched)
    sched.add_plugin(seen, name="asyncgraph-test-seen")
    try:
        done = await ag.run(g, backend=ag.DaskBackend(client))
    finally:
        sched.remove_plugin("asyncgraph-test-seen")
    assert done.results["a"] == done.results["b"] == mb << 20
    ours = {k: v for k, v in seen.deps.items() if k.startswith(("a-", "b-"))}
    assert len(ours) == 2
    if mb == 1:  # embedded
        assert all(not v for v in ours.values())
    else:  # one scattered key, the dependency of both
        [first, second] = ours.values()
        assert len(first) == 1 and first == second
    assert not client.futures  # the scattered value was released
