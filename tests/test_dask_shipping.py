"""How a task's function travels inside a Dask task.

Dask pickles every task with plain pickle and, when the pickled bytes hold ``__main__``,
pickles it again with cloudpickle. A function defined in a script or a notebook is
pickled by value, and its bytes always hold ``__main__``: sent as they are, every
submission of such a task paid for a second, useless pickling (cloudpickle walking the
whole task), 14-16 % of the driver's CPU on a chain. The bytes now go in base64, whose
alphabet has no ``_``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import cloudpickle
import pytest

import asyncgraph as ag
from asyncgraph._executors import _dask_worker
from asyncgraph._executors import dask as _dask
from asyncgraph._executors.dask import _shippable

distributed = pytest.importorskip("distributed")

from distributed.protocol import pickle as dask_pickle  # noqa: E402


def _script_function():
    """A function as a script or notebook defines it: in ``__main__``, by value."""

    def triple(x, *, plus=0):
        return 3 * x + plus

    triple.__module__ = "__main__"
    triple.__qualname__ = "triple"
    return triple


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = dask_pickle.cloudpickle.dumps

    def dumps(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(dask_pickle.cloudpickle, "dumps", dumps)
    return calls


def test_the_premise_raw_bytes_make_dask_pickle_the_task_twice(monkeypatch):
    raw = cloudpickle.dumps(_script_function())
    assert b"__main__" in raw
    calls = _counting(monkeypatch)
    dask_pickle.dumps((_dask_worker.run_attempt, (raw, False, [2], {}, None)))
    assert calls[0] == 1


def test_a_task_with_a_script_function_is_pickled_once_and_runs(monkeypatch):
    fn = _script_function()
    shipped = _shippable(cloudpickle.dumps(fn))
    spec = (_dask_worker.run_attempt, (shipped, False, [2], {"plus": 1}, None))
    calls = _counting(monkeypatch)
    data = dask_pickle.dumps(spec)
    assert calls[0] == 0
    assert b"__main__" not in data
    run, args = dask_pickle.loads(data)
    assert run(*args) == 7  # what a worker does with it
    assert run(*args) == 7  # the second time from the worker's cache of functions


def test_a_coroutine_function_shipped_the_same_way_runs():
    async def later(x):
        await asyncio.sleep(0)
        return x + 1

    later.__module__ = "__main__"
    shipped = _shippable(cloudpickle.dumps(later))
    assert _dask_worker.run_attempt(shipped, True, [1], {}) == 2


async def test_what_a_run_submits_for_a_script_function_dask_pickles_once(monkeypatch):
    """Through the public API: every task spec the run hands to ``client.map`` pickles
    without cloudpickle, and the chain's results are right."""
    fn = _script_function()
    sent: list[Any] = []
    real_map = _dask.DaskExecutor._map

    def spy(self: Any, client: Any, items: list[Any]) -> list[Any]:
        sent.extend(item[1] for item in items)
        return real_map(self, client, items)

    monkeypatch.setattr(_dask.DaskExecutor, "_map", spy)
    g = ag.Graph()
    g.add("zero", lambda: 0, kind="cpu")
    g.add("one", fn, deps=["zero"], kind="cpu")
    g.add("two", fn, deps=["one"], kind="cpu")
    async with (
        distributed.LocalCluster(
            n_workers=1, processes=False, asynchronous=True, dashboard_address=":0",
            silence_logs=50,
        ) as cluster,
        distributed.Client(cluster, asynchronous=True, set_as_default=False) as client,
    ):  # fmt: skip
        done = await ag.run(g, backend=ag.DaskBackend(client))
    assert done.results == {"zero": 0, "one": 0, "two": 0}
    assert len(sent) == 3
    calls = _counting(monkeypatch)
    for spec in sent:
        dask_pickle.dumps(spec)
    assert calls[0] == 0
