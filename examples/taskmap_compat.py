"""A taskmap script moved over by changing one import (see docs/migrating-from-taskmap.md).

``fetch`` fails on the first run; taskmap's pattern of reset_failed_tasks and a rerun
then runs only fetch and its descendant, and reuses the rest.
"""

import asyncio

import asyncgraph.compat.taskmap as taskmap  # was: import taskmap

attempts: list[str] = []  # IO tasks run in this process, so we can record them here


def load_config() -> dict:
    return {"url": "https://example.org/numbers.txt"}


async def fetch(config: dict) -> str:
    attempts.append("fetch")
    await asyncio.sleep(0.05)  # stands in for downloading config["url"]
    if len(attempts) == 1:
        raise ConnectionError(f"{config['url']} unreachable")
    return "3 1 4 1 5"


def parse(text: str) -> list[int]:
    return [int(x) for x in text.split()]


if __name__ == "__main__":
    graph = taskmap.create_graph(
        funcs={"config": load_config, "fetch": fetch, "parse": parse},
        dependencies={"config": [], "fetch": ["config"], "parse": ["fetch"]},
        io_bound=["fetch"],
    )
    graph = taskmap.run_parallel_async(graph, nprocs=2)
    print("first run: ", graph.results)
    assert isinstance(graph.results["fetch"], ConnectionError)
    assert graph.results["parse"] == "Ancestor task fetch failed; task not run"

    graph = taskmap.reset_failed_tasks(graph)
    assert graph.done == ["config"]  # only fetch and parse will run again
    graph = taskmap.run_parallel_async(graph, nprocs=2)
    print("second run:", graph.results)
    assert graph.results["parse"] == [3, 1, 4, 1, 5]
    assert attempts == ["fetch", "fetch"]
