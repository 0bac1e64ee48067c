r"""Scale out: the same graph on the run's own process pool, on a shared pool, and on a
Dask cluster; only ``backend=`` changes, and the results are equal.

    chunk0 .. chunk7      kind="cpu": count the primes in a range (the backend runs them)
        \    |    /
      total   largest     total: a plain function on the driver (an IO thread);
                          largest: kind="cpu" again (on Dask, it gets the chunks'
                          results worker to worker, as Dask futures)

``ag.DaskBackend(n_workers=2)`` starts a Dask LocalCluster that the run owns and closes;
pass ``"tcp://scheduler:8786"`` for a cluster that runs already, or your own
``Client(asynchronous=True)``. A LocalCluster of processes needs the script's
``if __name__ == "__main__":`` guard, as below. ``pip install 'asyncgraph[dask]'``.
"""

from __future__ import annotations

import asyncio
import functools

import asyncgraph as ag

CHUNKS = 8
SIZE = 20_000


def count_primes(lo: int, hi: int) -> int:
    return sum(1 for n in range(max(lo, 2), hi) if all(n % d for d in range(2, int(n**0.5) + 1)))


def build() -> ag.Graph:
    g = ag.Graph()
    chunks = [f"chunk{i}" for i in range(CHUNKS)]
    for i, name in enumerate(chunks):
        g.add(name, functools.partial(count_primes, i * SIZE, (i + 1) * SIZE), kind="cpu")
    g.add("total", lambda *counts: sum(counts), deps=chunks)
    g.add("largest", lambda *counts: max(counts), deps=chunks, kind="cpu")
    return g


async def main() -> None:
    default = await ag.run(build(), cpu_workers=2)  # the run's own process pool
    results = {"own pool": default.results}
    # A pool started once and shared by many runs (an app, a notebook).
    async with ag.ProcessBackend(workers=2) as pool:
        for _ in range(2):
            results["shared pool"] = (await ag.run(build(), backend=pool)).results
    dask = await ag.run(build(), backend=ag.DaskBackend(n_workers=2))
    results["dask"] = dask.results
    for where, r in results.items():
        print(f"{where:>11}: total={r['total']} largest={r['largest']}")
    assert all(r == default.results for r in results.values()), results
    assert default.results["total"] == count_primes(0, CHUNKS * SIZE)


if __name__ == "__main__":
    asyncio.run(main())
