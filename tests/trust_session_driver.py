"""The driver that tests/test_trust_session.py kills with SIGKILL::

    python -c "import trust_session_driver as d; d.main()" STORE MODE

Three tasks::

    blocker   (resources=("slot",))   waits forever when $TRUST_SESSION_BLOCK is 1
    source                            returns int($TRUST_SESSION_VALUE)
    derived   (resources=("slot",))   source * 10; waits for the slot the blocker holds

``MODE`` is ``plain`` (run the fresh graph on STORE) or ``reset`` (load it from STORE,
reset ``source`` and ``blocker``, which resets ``derived`` too, and run that). The run
prints ``done NAME`` (flushed) from ``on_event`` for each ``done`` event, which comes only
once the result is committed, and ``result NAME VALUE`` for each result at the end.

Every task appends ``<phase> <name>`` to the side-effect log ``$TRUST_SESSION_LOG`` when
it starts (one ``os.write`` with ``O_APPEND``, then ``fsync``). The values, the switch and
the log are read from the environment when a task runs, so they are not part of any
fingerprint: every phase builds the same graph. Imported by name, never run as
``__main__``, so the test builds the same functions to read the store with.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncgraph as ag

LOG_ENV = "TRUST_SESSION_LOG"
VALUE_ENV = "TRUST_SESSION_VALUE"
BLOCK_ENV = "TRUST_SESSION_BLOCK"
PHASE_ENV = "TRUST_SESSION_PHASE"


def mark(name: str) -> None:
    line = f"{os.environ.get(PHASE_ENV, '?')} {name}\n".encode()
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


async def blocker() -> str:
    mark("blocker")
    if os.environ.get(BLOCK_ENV) == "1":
        await asyncio.Event().wait()  # holds the slot until the process is killed
    return "free"


async def source() -> int:
    mark("source")
    return int(os.environ[VALUE_ENV])


async def derived(source: int) -> int:
    mark("derived")
    return source * 10


def build() -> ag.Graph:
    g = ag.Graph()
    g.add("blocker", blocker, resources=("slot",))
    g.add("source", source)
    g.add("derived", derived, resources=("slot",))
    return g


def main() -> None:
    store, mode = sys.argv[1], sys.argv[2]
    graph = build()
    if mode == "reset":
        graph = ag.reset(ag.load(graph, store), ["source", "blocker"])

    def on_event(event: ag.Event) -> None:
        if event.kind is ag.EventKind.DONE:
            print("done", event.task, flush=True)

    out = ag.run_sync(graph, store=store, limits={"slot": 1}, on_event=on_event)
    for name, value in sorted(out.results.items()):
        print("result", name, value, flush=True)
