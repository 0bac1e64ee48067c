r"""The driver that tests/test_trust_cancel.py signals: ``python trust_cancel_driver.py MODE DIR``.

Modes (``DIR`` holds the store ``store.db`` and the tasks' marker files):

* ``sigterm``: ``run_sync(stopping_graph(DIR), store=...)``; the test sends SIGTERM once
  it reads ``started``. Nothing catches what run_sync raises, so the exit status is
  the interpreter's own (143 expected).
* ``sigint-helper``: ``asyncio.run(main())`` where ``main`` calls ``run_sync`` on the
  same graph (helper-thread mode); the test sends SIGINT once it reads ``started``.
  Prints ``interrupted <type>`` if ``asyncio.run`` raises.
* ``abandon-plain``, ``abandon-helper``, ``abandon-await``: a thread task that sleeps an
  hour with ``timeout=0.1`` next to one that finishes normally, run by ``run_sync`` in a
  script, ``run_sync`` in a coroutine, and ``await ag.run``; prints the statuses and
  ``returned``, then the script ends.

The graph of ``stopping_graph``::

    warm (done at once)   io_block (awaits forever)   thread_block (sleeps 1 h)
                          cpu_block (sleeps 1 h in a worker; writes its pid first)
                          watcher: prints "started <worker pid>" once the others run
                          after (depends on io_block: never starts)

The CLI runs the same graph: ``asyncgraph run trust_cancel_driver.py:cli_graph``, with
``DIR`` taken from ``$TRUST_CANCEL_DIR`` when the graph is built (not by a task, so the
fingerprints do not depend on it).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import asyncgraph as ag

HOUR = 3600


def _touch(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stopping_graph(directory: str) -> ag.Graph:
    root = Path(directory)
    pid_file = str(root / "worker.pid")
    g = ag.Graph()
    g.add("warm", lambda: "warm")

    async def io_block() -> None:
        _touch(str(root / "io_block.started"))
        await asyncio.Event().wait()

    def thread_block() -> None:
        _touch(str(root / "thread_block.started"))
        time.sleep(HOUR)

    def cpu_block(path: str = pid_file) -> None:
        import os
        import time

        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
            f.flush()
            os.fsync(f.fileno())
        os.rename(path + ".tmp", path)
        time.sleep(3600)

    async def watcher() -> None:
        # The driver's own wait (no event crosses from a worker): not library code.
        wanted = [root / "io_block.started", root / "thread_block.started", Path(pid_file)]
        while not all(p.exists() for p in wanted):  # noqa: ASYNC110 - test-side wait
            await asyncio.sleep(0.01)
        print("started", Path(pid_file).read_text(), flush=True)
        await asyncio.Event().wait()

    g.add("io_block", io_block)
    g.add("thread_block", thread_block)
    g.add("cpu_block", cpu_block, kind="cpu")
    g.add("watcher", watcher)
    g.add("after", lambda x: x, deps=["io_block"])
    return g


def cli_graph() -> ag.Graph:
    return stopping_graph(os.environ["TRUST_CANCEL_DIR"])


def abandoning_graph(directory: str) -> ag.Graph:
    marker = str(Path(directory) / "normal.done")
    g = ag.Graph()
    g.add("abandoned", lambda: time.sleep(HOUR), timeout=0.1)

    def normal() -> str:
        time.sleep(0.05)
        _touch(marker)
        return "normal"

    g.add("normal", normal)
    return g


def _report(out: ag.Graph) -> None:
    print(json.dumps({n: s.value for n, s in out.status.items()}), flush=True)
    print("returned", flush=True)


def main(mode: str, directory: str) -> None:
    store = str(Path(directory) / "store.db")
    if mode == "sigterm":
        ag.run_sync(stopping_graph(directory), store=store, cpu_workers=1)
        print("the run ended by itself", flush=True)
    elif mode == "sigint-helper":

        async def run_in_helper() -> None:
            ag.run_sync(stopping_graph(directory), store=store, cpu_workers=1)
            print("the run ended by itself", flush=True)

        try:
            asyncio.run(run_in_helper())
        except BaseException as exc:  # noqa: BLE001 - reported: what the test checks
            print("interrupted", type(exc).__name__, flush=True)
    elif mode == "abandon-plain":
        _report(ag.run_sync(abandoning_graph(directory)))
    elif mode == "abandon-helper":

        async def helper() -> None:
            _report(ag.run_sync(abandoning_graph(directory)))

        asyncio.run(helper())
    elif mode == "abandon-await":

        async def awaiting() -> None:
            _report(await ag.run(abandoning_graph(directory)))

        asyncio.run(awaiting())
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
