"""The backend seam: ``backend=`` reaches the run, which asks it for its executors."""

from __future__ import annotations

import pytest

import asyncgraph as ag
from asyncgraph._executors import default_executors
from asyncgraph._executors.base import InlineExecutor


class Counting:
    """A backend that hands out the default executors and counts the runs it served."""

    def __init__(self) -> None:
        self.runs = 0

    def executors(self, *, max_io, cpu_workers, clock, pickled):
        self.runs += 1
        return default_executors(max_io, cpu_workers, clock, pickled)


class AllInline:
    def executors(self, *, max_io, cpu_workers, clock, pickled):
        return [InlineExecutor(clock=clock)]


def _graph() -> ag.Graph:
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a + 1, deps=["a"], kind="cpu")
    return g


async def test_run_asks_the_backend_for_its_executors() -> None:
    backend = Counting()
    done = await ag.run(_graph(), backend=backend)
    assert done.results == {"a": 1, "b": 2}
    assert backend.runs == 1
    done = await _graph().run(backend=backend)
    assert done.results["b"] == 2 and backend.runs == 2
    async with ag.open_run(_graph(), backend=backend) as r:
        pass
    assert r.graph.results["b"] == 2 and backend.runs == 3


def test_run_sync_takes_a_backend() -> None:
    done = ag.run_sync(_graph(), backend=AllInline())
    assert done.results == {"a": 1, "b": 2}
    done = _graph().run_sync(backend=AllInline())
    assert done.results["b"] == 2


@pytest.mark.parametrize("bad", [1, "dask", object()])
def test_a_wrong_backend_is_refused_naming_the_parameter(bad: object) -> None:
    with pytest.raises(TypeError, match="backend must be an asyncgraph backend"):
        ag.run_sync(_graph(), backend=bad)  # type: ignore[arg-type]
