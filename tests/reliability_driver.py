"""The driver that tests/test_reliability_crash.py kills with SIGKILL and resumes.

    python -c "import reliability_driver as d; d.main()" STORE LOG N

runs a seeded mixed graph of ``N`` tasks (coroutines, plain functions in threads, a few
CPU tasks in two workers) on ``STORE``, printing ``ready`` once, then ``done <name>`` from
an ``on_event`` callback as each result is committed, then ``finished``. Every task
appends ``<phase> <name>`` to ``LOG`` when it starts (the side-effect log), with the phase
taken from the environment at run time, so that it is not part of any fingerprint.

Imported by name (never run as ``__main__``) so that the test process builds the same
functions and reads the store with the same fingerprints.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import asyncgraph as ag

SEED = 20240601  # the graph's shape; the crash points have their own seeds
MOD = 1_000_003


def value_of(index: int, dep_values: Sequence[int]) -> int:
    """A task's result: depends on its position and on every dependency's result."""
    return (sum(dep_values) * 31 + index * 7 + 1) % MOD


def note(log: str, name: str) -> None:
    """Append ``<phase> <name>`` to the side-effect log (one write: atomic with O_APPEND)."""
    phase = os.environ.get("RELIABILITY_PHASE", "?")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{phase} {name}\n".encode())
    finally:
        os.close(fd)


def io_task(log: str, name: str, index: int) -> Any:
    async def fn(*deps: int) -> int:
        note(log, name)
        await asyncio.sleep(0.001 * (index % 3))
        return value_of(index, deps)

    return fn


def thread_task(log: str, name: str, index: int) -> Any:
    def fn(*deps: int) -> int:
        note(log, name)
        time.sleep(0.002)
        return value_of(index, deps)

    return fn


def cpu_task(log: str, name: str, index: int) -> Any:
    def fn(*deps: int) -> int:
        note(log, name)
        total = 0
        for k in range(20_000):  # a little real work in the worker
            total += k % 7
        return value_of(index, deps) + 0 * total

    return fn


def shape(n: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, kind, dependency indices)`` of each task, from the fixed seed."""
    rng = random.Random(SEED + n)
    out = []
    for i in range(n):
        deps = tuple(sorted(rng.sample(range(i), min(i, rng.randint(0, 3))))) if i else ()
        if i % 97 == 5:
            kind = "cpu"
        elif i % 10 == 3:
            kind = "thread"
        else:
            kind = "io"
        out.append((f"t{i:05d}", kind, deps))
    return out


def build(log: str, n: int) -> ag.Graph:
    g = ag.Graph()
    makers = {"io": io_task, "thread": thread_task, "cpu": cpu_task}
    for i, (name, kind, deps) in enumerate(shape(n)):
        fn = makers[kind](log, name, i)
        g.add(
            name,
            fn,
            deps=[f"t{d:05d}" for d in deps],
            kind="cpu" if kind == "cpu" else "io",
        )
    return g


def expected(n: int) -> dict[str, int]:
    """What a clean run returns, computed without asyncgraph."""
    values: list[int] = []
    for i, (_, _, deps) in enumerate(shape(n)):
        values.append(value_of(i, [values[d] for d in deps]))
    return {f"t{i:05d}": v for i, v in enumerate(values)}


def main() -> None:
    store, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    g = build(log, n)

    def on_event(event: ag.Event) -> None:
        # A done event comes only after the result is committed to the store.
        if event.kind is ag.EventKind.DONE:
            print("done", event.task, flush=True)

    print("ready", flush=True)
    out = ag.run_sync(g, store=store, cpu_workers=2, max_io=64, on_event=on_event)
    bad = {k: v.value for k, v in out.status.items() if v is not ag.State.DONE}
    print("finished", len(out.results), bad or "", flush=True)
