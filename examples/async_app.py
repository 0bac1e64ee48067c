"""Using asyncgraph inside an asyncio application.

1. ``await ag.run(g)`` runs the graph on the application's own loop (here started by
   ``asyncio.run``), so the graph's coroutines and the application's other coroutines
   share that loop: a graph task below waits for an event the application sets.
2. ``ag.run_sync(g)`` called where a loop is already running (a notebook cell, a sync
   helper called from async code) does not fail: it runs the graph on a fresh loop in a
   helper thread and blocks until it is done.
3. ``fail_fast=True`` turns the first failure into an exception: the rest is cancelled
   and ``TaskFailures.graph`` is the graph as it ended.
"""

import asyncio
import threading

import asyncgraph as ag


def build(app_ready: asyncio.Event) -> ag.Graph:
    g = ag.Graph()

    @g.task
    async def wait_for_app() -> str:
        # Finishes only because the application, on the same loop, sets the event.
        await app_ready.wait()
        return "the app said go"

    @g.task(kind="cpu")
    def checksum() -> int:  # runs in a worker process meanwhile
        return sum(i * i for i in range(300_000)) % 9973

    @g.task
    async def combine(wait_for_app: str, checksum: int) -> str:
        return f"{wait_for_app}; checksum {checksum}"

    return g


def build_where() -> ag.Graph:
    g = ag.Graph()

    @g.task
    async def where() -> tuple[int, str]:
        return id(asyncio.get_running_loop()), threading.current_thread().name

    return g


def build_failing() -> ag.Graph:
    g = ag.Graph()

    @g.task
    async def slow() -> None:
        await asyncio.sleep(10)  # cancelled when broken fails

    @g.task
    async def broken() -> None:
        await asyncio.sleep(0.05)
        raise ValueError("bad input")

    return g


async def main() -> None:
    # 1. await on the application's loop, next to the application's own work
    app_ready = asyncio.Event()

    async def application() -> None:
        await asyncio.sleep(0.1)  # e.g. waiting for a connection pool to come up
        app_ready.set()

    async with asyncio.TaskGroup() as tg:  # unlike gather, a failure cancels the sibling
        running = tg.create_task(ag.run(build(app_ready), cpu_workers=1))
        tg.create_task(application())
    done = running.result()
    print("await ag.run:", done.results["combine"])
    assert done.status["combine"] is ag.State.DONE, done.errors

    # 2. run_sync while this loop is running: a helper thread with its own loop
    here = id(asyncio.get_running_loop())
    other = ag.run_sync(build_where())
    loop_id, thread_name = other.results["where"]
    print(f"run_sync inside a running loop ran on thread {thread_name!r}")
    assert loop_id != here
    assert thread_name != threading.current_thread().name

    # 3. fail_fast: the first failure raises, the rest is cancelled
    try:
        await ag.run(build_failing(), fail_fast=True)
    except ag.TaskFailures as exc:
        failures = exc
    else:
        raise AssertionError("fail_fast=True should have raised")
    ended = failures.graph  # the graph as the run left it
    print("fail_fast:", failures, {n: str(s) for n, s in ended.status.items()})
    assert ended.status == {"slow": ag.State.CANCELLED, "broken": ag.State.FAILED}
    assert isinstance(failures.exceptions[0], ValueError)


if __name__ == "__main__":
    asyncio.run(main())
