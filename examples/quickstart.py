r"""Quickstart: define a graph with the decorator, run it, read the results.

    users   orders        coroutines: run concurrently on the event loop
        \   /
       scores             kind="cpu": runs in a worker process
         |
       publish            a coroutine again

Each parameter without a default names a dependency; its result is passed by keyword.
"""

import asyncio

import asyncgraph as ag

g = ag.Graph()


@g.task
async def users() -> list[dict]:
    await asyncio.sleep(0.2)  # stands in for an HTTP call
    return [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}]


@g.task
async def orders() -> list[dict]:
    await asyncio.sleep(0.2)
    return [{"user": 1, "total": 30.0}, {"user": 2, "total": 12.5}, {"user": 1, "total": 7.5}]


@g.task(kind="cpu")
def scores(users: list[dict], orders: list[dict]) -> dict[str, float]:
    totals = {u["id"]: 0.0 for u in users}
    for o in orders:
        totals[o["user"]] += o["total"]
    return {u["name"]: totals[u["id"]] for u in users}


@g.task(timeout=5)
async def publish(scores: dict[str, float]) -> str:
    await asyncio.sleep(0.05)
    return ", ".join(f"{name}={total:.1f}" for name, total in sorted(scores.items()))


if __name__ == "__main__":
    done = ag.run_sync(g, cpu_workers=1)  # returns a new Graph; `g` is unchanged

    print(done.to_frame()[["name", "kind", "status", "attempts", "duration_s"]].to_string())
    print("published:", done.results["publish"])

    assert all(s is ag.State.DONE for s in done.status.values()), done.status
    assert done.results["scores"] == {"ada": 37.5, "grace": 12.5}
    assert done.results["publish"] == "ada=37.5, grace=12.5"
    assert done.tasks["scores"].kind is ag.Kind.CPU
    # users and orders ran at the same time: each started before the other finished
    u, o = done.records["users"], done.records["orders"]
    assert u.started < o.finished
    assert o.started < u.finished
    assert all(s is ag.State.PENDING for s in g.status.values())  # the input is untouched
