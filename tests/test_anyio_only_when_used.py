"""A run loads anyio's asyncio backend only when it uses anyio (issue 15).

The run's cleanup waits "to the end" under an anyio shield, which loaded anyio's asyncio
backend (20-30 ms of imports) at the end of every process's first run, and a pool started
a thread to load it while its workers booted. Only an anyio cancel scope re-delivers a
cancellation into a shielded wait, and a process with one has loaded the backend, so
``_shield.shielded()`` is the anyio scope once the backend is loaded and nothing before.

Fresh interpreters (this test process has anyio loaded): a plain run, a CPU run, a
store run and its resume load no backend; a wait cancelled twice still runs its cleanup
to the end and re-raises; a run inside ``anyio.run`` whose ``move_on_after`` expires ends
cleanly (its worker gone). No test here measures time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from asyncgraph._shield import ANYIO_ON_ASYNCIO, shielded

GUARD = 120  # seconds: a guard against a hang, not a bound


def _run(tmp_path: Path, source: str) -> dict[str, object]:
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(source))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=GUARD
    )
    assert out.returncode == 0, out.stderr
    got: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return got


def test_a_plain_run_and_a_cpu_run_load_no_anyio_backend(tmp_path: Path) -> None:
    got = _run(
        tmp_path,
        """
        import asyncio, json, sys
        import asyncgraph as ag

        async def four():
            return 4

        def square(x):
            return x * x

        async def main():
            g = ag.Graph()
            g.add("a", four)
            g.add("b", square, deps=["a"], kind="cpu")
            done = await ag.run(g)
            return dict(done.results)

        results = asyncio.run(main())
        print(json.dumps({
            "results": results,
            "loaded": "anyio._backends._asyncio" in sys.modules,
        }))
        """,
    )
    assert got == {"results": {"a": 4, "b": 16}, "loaded": False}


def test_a_store_run_and_a_resume_load_no_anyio_backend(tmp_path: Path) -> None:
    # The command line's every run: a fresh process on a store (its thread hops are the
    # loop's executor's, waited for to their end, as anyio's were).
    got = _run(
        tmp_path,
        f"""
        import asyncio, json, sys
        import asyncgraph as ag

        async def four():
            return 4

        def square(x):
            return x * x

        async def main(path):
            g = ag.Graph()
            g.add("a", four)
            g.add("b", square, deps=["a"], kind="cpu")
            await ag.run(g, store=path)
            again = await ag.run(ag.reset(ag.load(g, path), ["b"]), store=path)
            return dict(again.results), again.records["a"].attempts

        results, attempts = asyncio.run(main({str(tmp_path / "s.db")!r}))
        print(json.dumps({{
            "results": results,
            "a_ran_once": attempts == 1,
            "loaded": "anyio._backends._asyncio" in sys.modules,
        }}))
        """,
    )
    assert got == {"results": {"a": 4, "b": 16}, "a_ran_once": True, "loaded": False}


def test_a_wait_cancelled_twice_without_anyio_still_ends_its_cleanup(tmp_path: Path) -> None:
    got = _run(
        tmp_path,
        """
        import asyncio, json, sys
        from asyncgraph._shield import wait_to_the_end

        async def main():
            began, go_on, ended = asyncio.Event(), asyncio.Event(), []

            async def cleanup():
                began.set()
                await go_on.wait()
                ended.append(True)

            waiter = asyncio.create_task(wait_to_the_end(cleanup()))
            await began.wait()
            waiter.cancel()
            await asyncio.sleep(0)
            waiter.cancel()  # the second lands in the wait, as a signal handler's would
            await asyncio.sleep(0)
            go_on.set()
            try:
                await waiter
            except asyncio.CancelledError:
                return {"cancelled": True, "ended": ended}
            return {"cancelled": False, "ended": ended}

        got = asyncio.run(main())
        got["loaded"] = "anyio._backends._asyncio" in sys.modules
        print(json.dumps(got))
        """,
    )
    assert got == {"cancelled": True, "ended": [True], "loaded": False}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_run_in_an_expiring_anyio_scope_stops_its_worker_and_ends(tmp_path: Path) -> None:
    got = _run(
        tmp_path,
        """
        import glob, json, sys, time
        import anyio
        import asyncgraph as ag

        def slow():
            time.sleep(600)

        def children():
            found = []
            for path in glob.glob("/proc/self/task/*/children"):
                found += open(path).read().split()
            return found

        async def main():
            g = ag.Graph()
            g.add("slow", slow, kind="cpu")
            with anyio.move_on_after(600) as scope:
                async with ag.open_run(g) as run:
                    async for event in run.events():
                        if event.kind is ag.EventKind.STARTED:
                            scope.cancel()  # the host's scope ends the run, from outside
            return {"cancelled": scope.cancelled_caught, "children": children()}

        print(json.dumps(anyio.run(main)))
        """,
    )
    assert got == {"cancelled": True, "children": []}


async def test_with_anyio_loaded_the_shield_is_anyios() -> None:
    assert ANYIO_ON_ASYNCIO in sys.modules  # this process: pytest's anyio plugin, anyio runs
    assert isinstance(shielded(), anyio.CancelScope)
