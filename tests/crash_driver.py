r"""The graph that tests/test_crash.py kills part-way: ``python crash_driver.py STORE``.

A deterministic mixed graph of 73 tasks, four layers deep::

    src_00 .. src_11            12 IO coroutines (no inputs)
    l1_00 .. l1_19              each reads 2-3 tasks of the layer above; some run in a
    l2_00 .. l2_19              thread (a plain function), some in a worker process
    l3_00 .. l3_19              (kind="cpu"), the rest on the loop
          \  |  /
           total

Each task appends its name to the side-effect log named by ``$ASYNCGRAPH_CRASH_LOG`` when
it starts (one ``os.write`` on an ``O_APPEND`` descriptor: a line is never torn, even
from several processes), and its result is an integer computed from its name and its
inputs only, so any two complete runs give the same results.

The run uses ``on_event`` to print ``done NAME`` (flushed) for each ``done`` event, which
is sent only once the result is committed to the store: each such line means "reported
done", and the test holds the store to it after a SIGKILL.

The log's path is read from the environment when a task runs, not captured: a task's
globals and closure are part of its fingerprint, and the crashed run and the resumed run
must have the same fingerprints while writing to different logs.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncgraph as ag

LOG_ENV = "ASYNCGRAPH_CRASH_LOG"
SOURCES = 12
LAYERS = 3
WIDTH = 20


def _mark(name: str) -> None:
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{name}\n".encode())
    finally:
        os.close(fd)


def _mix(name: str, inputs: tuple[int, ...]) -> int:
    return (sum(inputs) * 31 + sum(map(ord, name))) % 1_000_003


def _io(name: str, delay: float) -> Callable[..., Any]:
    async def io_task(*inputs: int) -> int:
        _mark(name)
        await asyncio.sleep(delay)
        return _mix(name, inputs)

    return io_task


def _thread(name: str, delay: float) -> Callable[..., Any]:
    def thread_task(*inputs: int) -> int:
        _mark(name)
        time.sleep(delay)
        return _mix(name, inputs)

    return thread_task


def _cpu(name: str) -> Callable[..., Any]:
    def cpu_task(*inputs: int) -> int:
        _mark(name)
        work = sum(i * i % 7 for i in range(200_000))
        return (_mix(name, inputs) + work) % 1_000_003

    return cpu_task


def build() -> ag.Graph:
    """The graph; the same on every call (its shape comes from a seeded generator)."""
    rng = random.Random(20261122)
    g = ag.Graph()
    above = [f"src_{i:02d}" for i in range(SOURCES)]
    for name in above:
        g.add(name, _io(name, rng.choice((0.005, 0.01, 0.02, 0.04))))
    for layer in range(1, LAYERS + 1):
        names = []
        for j in range(WIDTH):
            name = f"l{layer}_{j:02d}"
            deps = sorted(rng.sample(above, rng.choice((2, 3))))
            delay = rng.choice((0.005, 0.01, 0.02, 0.04))
            if j % 6 == 0:
                g.add(name, _cpu(name), deps=deps, kind="cpu")
            elif j % 6 == 1:
                g.add(name, _thread(name, delay), deps=deps)
            else:
                g.add(name, _io(name, delay), deps=deps)
            names.append(name)
        above = names
    g.add("total", _io("total", 0.005), deps=above)
    return g


def main(store: str) -> int:
    def on_event(event: ag.Event) -> None:
        if event.kind is ag.EventKind.DONE:
            print("done", event.task, flush=True)

    final = ag.run_sync(build(), store=store, cpu_workers=2, on_event=on_event)
    bad = {n: s.value for n, s in final.status.items() if s is not ag.State.DONE}
    print("finished", bad or "ok", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
