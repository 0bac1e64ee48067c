r"""Recovering from a failure: reset what failed, fix the fault, rerun only that.

    extract ---> transform ---> load ---> notify
        \
         +-----> archive                  (independent of load)

The first run fails in ``load`` (the database is "down"), so ``notify`` is skipped while
``archive`` still finishes. ``ag.reset_failed`` puts the failed and skipped tasks back to
pending and keeps everything that is done, so after the fault is fixed the second run
calls only ``load`` and ``notify``: the call counter proves it.
"""

import asyncio
from collections import Counter

import asyncgraph as ag

calls: Counter[str] = Counter()
database_up = False  # the simulated fault


async def extract() -> list[int]:
    calls["extract"] += 1
    await asyncio.sleep(0.1)
    return list(range(10))


def transform(extract: list[int]) -> list[int]:  # a plain function: runs in a thread
    calls["transform"] += 1
    return [x * x for x in extract]


async def load(transform: list[int]) -> int:
    calls["load"] += 1
    await asyncio.sleep(0.02)
    if not database_up:
        raise ConnectionError("database refused the connection")
    return len(transform)


async def notify(load: int) -> str:
    calls["notify"] += 1
    return f"loaded {load} rows"


async def archive(extract: list[int]) -> str:
    calls["archive"] += 1
    await asyncio.sleep(0.05)
    return f"archived {len(extract)} rows"


g = ag.Graph()
g.add("extract", extract)
g.add("transform", transform)
g.add("load", load, retries=1, retry_delay=0.05)  # one retry: it fails twice
g.add("notify", notify)
g.add("archive", archive)


def show(title: str, graph: ag.Graph) -> None:
    frame = graph.to_frame()[["name", "status", "attempts", "error"]].fillna({"error": ""})
    print(f"-- {title}\n{frame.to_string(index=False)}\n")


if __name__ == "__main__":
    first = ag.run_sync(g)  # failures are data: nothing is raised
    show("first run: the database is down", first)
    assert first.status == {
        "extract": ag.State.DONE,
        "transform": ag.State.DONE,
        "load": ag.State.FAILED,
        "notify": ag.State.SKIPPED,
        "archive": ag.State.DONE,
    }
    assert isinstance(first.errors["load"], ConnectionError)
    assert first.records["load"].attempts == 2
    assert calls == {"extract": 1, "transform": 1, "load": 2, "archive": 1}

    try:  # raising is opt-in
        first.raise_for_failures()
    except ag.TaskFailures as failures:
        print("raise_for_failures():", failures, "->", repr(failures.exceptions[0]), "\n")
    else:
        raise AssertionError("raise_for_failures() should have raised")

    retry = ag.reset_failed(first)  # failed + skipped (+ descendants) -> pending
    assert retry.status["load"] is ag.State.PENDING
    assert retry.status["notify"] is ag.State.PENDING
    assert retry.status["extract"] is ag.State.DONE

    database_up = True  # the fault is fixed
    calls.clear()
    second = ag.run_sync(retry)
    show("second run: only load and notify ran", second)
    assert all(s is ag.State.DONE for s in second.status.values()), second.errors
    assert calls == {"load": 1, "notify": 1}, calls
    assert second.results["notify"] == "loaded 10 rows"
    assert second.results["extract"] == list(range(10))  # reused from the first run
    print("calls in the second run:", dict(calls))
