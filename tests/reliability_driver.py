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
            say(f"done {event.task}")

    print("ready", flush=True)
    out = ag.run_sync(g, store=store, cpu_workers=2, max_io=64, on_event=on_event)
    bad = {k: v.value for k, v in out.status.items() if v is not ag.State.DONE}
    print("finished", len(out.results), bad or "", flush=True)


# ======================================================================================
# The scenario driver: a random graph, rewrites before the run, faults from outside
# ======================================================================================
#
#     python -c "import reliability_driver as d; d.scenario_main()" SPEC PHASE STORE LOG
#
# SPEC (JSON, the same in every phase: the graph) and PHASE (JSON: this phase's rewrites)
# come from tests/test_properties.py section 5, which kills, terminates and kills workers
# of this process at random points and checks the store after each. What the process
# prints on its stdout, one line each:
#
#     ready                      before the run starts
#     done NAME                  a done event: the result is committed
#     hold NAME PID              a gated task waits for the test: the holder of the named
#                                limit (released by "go NAME" on stdin), or the victim CPU
#                                task (never released: the test kills its worker or the
#                                driver)
#     finished JSON              {name: [status, error type or null]} of the run
#
# Every task's result encodes its inputs: the header ``name|stamp|digest`` where stamp is
# the phase the task ran in and digest hashes the name, the stamp and the dependencies'
# digests, in order (a hash chain). A task marked done carries the test's token instead.
# So a result reused after one of its inputs was recomputed (a stale descendant) no
# longer chains with its inputs, and the test sees it. Some results are a few MB of bytes
# (the header, a newline, then filler derived from the digest) or a DataFrame (one
# column named by the header, values derived from the digest).
#
# What changes between phases (the phase name, the victim, the log) is read from the
# environment at run time, so no fingerprint changes.

SLOT = "slot"  # the named limit (1) the holder task and its waiting descendant share


class Boom(Exception):
    """What a broken task raises, every time (only a mark makes it done)."""


def header_of(value: Any) -> str:
    """The ``name|stamp|digest`` header of a scenario result (or of a mark token)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value[: value.index(b"\n")].decode()
    columns = getattr(value, "columns", None)
    if columns is not None and len(columns) == 1:
        return str(columns[0])
    raise TypeError(f"not a scenario result: {type(value).__name__}")


def chain_digest(name: str, stamp: str, dep_digests: Sequence[str]) -> str:
    import hashlib

    text = "|".join([name, stamp, *dep_digests])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def make_value(header: str, big: int, rows: int) -> Any:
    """The result a task with this header returns: a str, ``big`` bytes or a frame."""
    if big:
        digest = header.rsplit("|", 1)[1].encode()
        head = header.encode() + b"\n"
        filler = digest * (big // len(digest) + 1)
        return head + filler[: max(big - len(head), 0)]
    if rows:
        import numpy as np
        import pandas as pd

        seed = int(header.rsplit("|", 1)[1][:8], 16)
        return pd.DataFrame({header: np.arange(rows, dtype=np.int64) ^ seed})
    return header


def say(line: str) -> None:
    """One line to the test, in one ``os.write`` to fd 1: the victim's worker writes
    there too, and a line that ``print`` writes in parts can be torn by it."""
    data = f"{line}\n".encode()
    while data:
        data = data[os.write(1, data) :]


def _note_start(name: str, kind: str) -> None:
    """``<phase> <name> <pid> <kind>`` to the side-effect log, written and fsynced."""
    phase = os.environ.get("RELIABILITY_PHASE", "?")
    fd = os.open(os.environ["RELIABILITY_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{phase} {name} {os.getpid()} {kind}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _hold_victim(name: str) -> None:
    """The victim CPU task, first attempt of the phase: announce the worker's pid and
    wait forever (the test kills the worker, or the driver)."""
    if os.environ.get("RELIABILITY_VICTIM") != name:
        return
    marker = os.path.join(os.environ["RELIABILITY_DIR"], f"held-{name}")
    try:
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return  # a retry after the kill: run normally
    say(f"hold {name} {os.getpid()}")  # fd 1: the driver's stdout
    import threading

    threading.Event().wait()


def _compute(name: str, stamp: str, args: Sequence[Any], big: int, rows: int) -> Any:
    digests = [header_of(a).rsplit("|", 1)[1] for a in args]
    header = f"{name}|{stamp}|{chain_digest(name, stamp, digests)}"
    return make_value(header, big, rows)


def _scenario_fn(name: str, kind: str, big: int, rows: int, broken: bool) -> Any:
    if kind == "thread":

        def thread_fn(*args: Any) -> Any:
            _note_start(name, kind)
            time.sleep(0.002)
            if broken:
                raise Boom(f"{name} is broken")
            return _compute(name, os.environ.get("RELIABILITY_PHASE", "?"), args, big, rows)

        return thread_fn
    if kind == "cpu":

        def cpu_fn(*args: Any) -> Any:
            _note_start(name, kind)
            _hold_victim(name)
            if broken:
                raise Boom(f"{name} is broken")
            return _compute(name, os.environ.get("RELIABILITY_PHASE", "?"), args, big, rows)

        return cpu_fn

    async def io_fn(*args: Any) -> Any:
        _note_start(name, kind)
        await asyncio.sleep(0)
        if broken:
            raise Boom(f"{name} is broken")
        return _compute(name, os.environ.get("RELIABILITY_PHASE", "?"), args, big, rows)

    return io_fn


def _holder_fn(name: str, after: str) -> Any:
    """The slow sibling: holds the named limit until ``after`` has ended in this run
    (its result committed), then waits for the test's ``go``."""

    async def holder_fn() -> Any:
        _note_start(name, "io")
        # By a string, not an attribute: a fingerprint digests every global a task's code
        # names, and the gates' state changes during the run.
        gates = getattr(sys.modules[__name__], "_GATES")  # noqa: B009
        await gates.wait_ended(after)
        await gates.hold(name)
        return _compute(name, os.environ.get("RELIABILITY_PHASE", "?"), (), 0, 0)

    return holder_fn


class _Gates:
    """The driver's side of the holds: events on the run's loop, set from ``on_event``
    (a task ended) and from a thread reading ``go NAME`` lines on stdin."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ended: dict[str, asyncio.Event] = {}
        self.go: dict[str, asyncio.Event] = {}
        self.ended_early: set[str] = set()

    def _event(self, table: dict[str, asyncio.Event], name: str) -> asyncio.Event:
        if name not in table:
            table[name] = asyncio.Event()
        return table[name]

    def task_ended(self, name: str) -> None:
        self._event(self.ended, name).set()

    async def wait_ended(self, name: str) -> None:
        if name in self.ended_early:
            return
        await self._event(self.ended, name).wait()

    async def hold(self, name: str) -> None:
        self.loop = asyncio.get_running_loop()
        event = self._event(self.go, name)
        say(f"hold {name} {os.getpid()}")
        await event.wait()

    def read_stdin(self) -> None:
        for line in sys.stdin:
            word, _, name = line.strip().partition(" ")
            if word == "go" and self.loop is not None:
                self.loop.call_soon_threadsafe(self._event(self.go, name).set)


_GATES = _Gates()


def build_scenario(spec: dict[str, Any]) -> ag.Graph:
    """The graph of a scenario; the same on every call with the same spec."""
    g = ag.Graph()
    holder = spec.get("holder")
    for i in spec["add_order"]:
        name = spec["names"][i]
        deps = [spec["names"][d] for d in spec["deps"][i]]
        kind = spec["kinds"][name]
        fn = _scenario_fn(
            name,
            kind,
            spec["big"].get(name, 0),
            spec["rows"].get(name, 0),
            name in spec["broken"],
        )
        resources = [SLOT] if holder and name == holder["waiter"] else []
        g.add(
            name,
            fn,
            deps=deps,
            kind="cpu" if kind == "cpu" else "io",
            retries=spec["retries"].get(name, 0),
            resources=resources,
        )
    if holder:
        g.add(holder["name"], _holder_fn(holder["name"], holder["after"]), resources=[SLOT])
    return g


def rewrite(g: ag.Graph, store: str, ops: dict[str, Any]) -> ag.Graph:
    """What a recovery script does before it runs: load, reset, reset_failed, mark_done,
    subgraph (each only if the phase asks for it)."""
    if not ops.get("load"):
        return g  # a plain run: reset_failed(load(g, store)) inside the run
    g = ag.load(g, store)
    if ops.get("reset"):
        g = ag.reset(g, ops["reset"])
    # reset_failed before the marks: after them it would send a task marked below a
    # failed one back to pending.
    g = ag.reset_failed(g)
    if ops.get("mark"):
        g = ag.mark_done(g, list(ops["mark"]), ops["mark"])
    if ops.get("subgraph"):
        g = ag.subgraph(g, ops["subgraph"])
    return g


def scenario_main() -> None:
    import faulthandler
    import json
    import signal
    import threading

    # The test's watchdog sends SIGUSR1 before it kills a hung driver: every thread's
    # stack goes to stderr, to say where it hung.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    spec_path, phase_path, store, log = sys.argv[1:5]
    with open(spec_path) as f:
        spec = json.load(f)
    with open(phase_path) as f:
        ops = json.load(f)
    os.environ["RELIABILITY_LOG"] = log
    g = rewrite(build_scenario(spec), store, ops)
    gates = _GATES
    holder = spec.get("holder")
    if holder:
        after = holder["after"]
        # What the run will do: a plain run starts from reset_failed(load(g, store)).
        will = (
            g if ops.get("load") or not os.path.exists(store) else rewrite(g, store, {"load": True})
        )
        if after not in will or will.status[after] is not ag.State.PENDING:
            gates.ended_early.add(after)  # it will not run: nothing to wait for
    threading.Thread(target=gates.read_stdin, daemon=True).start()

    def on_event(event: ag.Event) -> None:
        if event.kind is ag.EventKind.DONE:
            say(f"done {event.task}")
        if event.kind in (
            ag.EventKind.DONE,
            ag.EventKind.FAILED,
            ag.EventKind.SKIPPED,
            ag.EventKind.CANCELLED,
        ):
            gates.task_ended(event.task)

    say("ready")
    out = ag.run_sync(
        g, store=store, cpu_workers=2, limits={SLOT: 1}, on_event=on_event, deadline=300
    )
    ends = {
        n: [s.value, None if n not in out.errors else type(out.errors[n]).__name__]
        for n, s in out.status.items()
    }
    say(f"finished {json.dumps(ends)}")
