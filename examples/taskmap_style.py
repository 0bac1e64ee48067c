"""taskmap's dict style: ``ag.create_graph(funcs, dependencies, ...)``.

* ``dependencies[name]`` lists the tasks whose results are passed positionally, in order;
* a ``None`` result is not passed at all (taskmap's rule);
* ``io_bound`` tasks are IO tasks (coroutines on the loop, plain functions in threads);
  every other task runs in the process pool (kind "cpu");
* ``done`` tasks do not run; ``results`` gives their results to their dependents.
"""

import asyncio

import asyncgraph as ag

calls: list[str] = []  # IO tasks run in this process, so we can record them here


def load_config() -> dict:
    raise RuntimeError("never called: the task is given as done, with a result")


async def fetch(config: dict) -> str:
    calls.append("fetch")
    await asyncio.sleep(0.1)  # stands in for downloading config["url"]
    return "3 1 4 1 5 9 2 6 5 3 5"


async def audit(config: dict) -> None:
    calls.append("audit")
    await asyncio.sleep(0.05)  # writes an audit record; returns None


def parse(text: str) -> list[int]:
    # Depends on ["fetch", "audit"], but audit returns None, so only fetch's text arrives.
    return [int(x) for x in text.split()]


def total(numbers: list[int], scale: int = 1) -> int:
    return sum(numbers) * scale


funcs = {
    "config": load_config,
    "fetch": fetch,
    "audit": audit,
    "parse": parse,
    "total": total,
}
dependencies = {
    "fetch": ["config"],
    "audit": ["config"],
    "parse": ["fetch", "audit"],
    "total": ["parse"],
}

g = ag.create_graph(
    funcs,
    dependencies,
    io_bound=["fetch", "audit"],
    done=["config"],
    results={"config": {"url": "https://example.org/numbers.txt"}},
)


if __name__ == "__main__":
    done = ag.run_sync(g, cpu_workers=1)
    print(done.to_frame()[["name", "kind", "status", "attempts"]].to_string(index=False))
    print("total:", done.results["total"])

    assert all(s is ag.State.DONE for s in done.status.values()), done.errors
    assert done.results["audit"] is None
    assert done.results["parse"] == [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]  # audit's None not passed
    assert done.results["total"] == 44
    assert done.records["config"].attempts == 0  # given as done: never ran
    assert sorted(calls) == ["audit", "fetch"]
    assert {n: str(t.kind) for n, t in done.tasks.items()} == {
        "config": "cpu",
        "fetch": "io",
        "audit": "io",
        "parse": "cpu",
        "total": "cpu",
    }
