"""``OpenRun.cancel("x[k]")`` on an element held for its stored inputs (issue 13).

An element whose element-wise parent was reused from the store waits, outside the
scheduler, while a thread reads that parent's result (``_Run._held``). It is still a
task that has not started: cancelling it by name cancels it (True), it never starts,
and its family and reducers end as below any cancelled element. The proof holds the
read in its thread until the test has cancelled, so the element is held for certain.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import asyncgraph as ag
from asyncgraph import State

#: Only so that a regression fails instead of hanging.
_GIVE_UP_S = 20.0


class HeldStore(ag.SQLiteStore):
    """A store whose reads of ``held`` results wait for ``gate`` (in their thread)."""

    def __init__(self, path: Path, held: str) -> None:
        super().__init__(path)
        self.held = held
        self.gate = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.asked: asyncio.Event | None = None
        self.stuck = False

    def _maybe_wait(self, names: Any) -> None:
        if self.loop is None or self.asked is None or self.held not in names:
            return
        self.loop.call_soon_threadsafe(self.asked.set)
        if not self.gate.wait(_GIVE_UP_S):
            self.stuck = True

    def load_result(self, result_id: int, task: str) -> Any:
        self._maybe_wait([task])
        return super().load_result(result_id, task)

    def load_results(self, wanted: Any) -> dict[str, Any]:
        self._maybe_wait(list(wanted))
        return super().load_results(wanted)


def graph(calls: list[str]) -> ag.Graph:
    """xs -> up (mapped by key) -> tag (element-wise); total reduces tag."""

    def tag(u: str) -> str:
        calls.append(u)
        return u + "!"

    g = ag.Graph()
    g.add("xs", lambda: ["a", "b", "c"], deps=[])
    g.add("up", lambda x: x.upper(), deps=["xs"], over="xs", key=lambda x: x)
    g.add("tag", tag, deps=["up"], over="up")
    g.add("total", lambda tag: "".join(tag), deps=["tag"])
    return g


async def cancel_while_held(db: Path, calls: list[str]) -> tuple[ag.Graph, list[bool]]:
    store = HeldStore(db, "up[a]")
    store.loop = asyncio.get_running_loop()
    store.asked = asyncio.Event()
    again = ag.reset(ag.load(graph(calls), store), "tag[a]")
    said = []
    async with ag.open_run(again, store=store) as r:
        await store.asked.wait()  # up[a] is being read: tag[a] is held for it
        said.append(r.cancel("tag[a]"))
        said.append(r.cancel("tag[a]"))  # once cancelled, a second cancel is a no-op
        store.gate.set()
    assert not store.stuck
    return r.graph, said


def test_cancelling_a_held_element_cancels_it_and_it_never_starts(tmp_path):
    db = tmp_path / "s.db"
    calls: list[str] = []
    first = ag.run_sync(graph(calls), store=db)
    assert first.results["total"] == "A!B!C!"
    calls.clear()

    out, said = asyncio.run(cancel_while_held(db, calls))

    assert said == [True, False]
    assert calls == []  # tag[a] never ran; its siblings were reused, not run
    assert out.status["tag[a]"] is State.CANCELLED
    error = out.errors["tag[a]"]
    assert isinstance(error, ag.TaskCancelled)
    assert "did not start" in str(error) and "r.cancel('tag[a]')" in str(error)
    assert out.status["tag[b]"] is State.DONE and out.status["tag[c]"] is State.DONE
    assert out.status["tag"] is State.CANCELLED  # the family: as its elements say
    assert out.status["total"] is State.SKIPPED
    assert out.status["up[a]"] is State.DONE


def test_the_next_run_reruns_only_the_cancelled_element(tmp_path):
    db = tmp_path / "s.db"
    calls: list[str] = []
    ag.run_sync(graph(calls), store=db)
    calls.clear()
    asyncio.run(cancel_while_held(db, calls))

    # The store says what happened, and a plain next run reruns tag[a] alone.
    stored = ag.load(graph(calls), db)
    assert stored.status["tag[a]"] is State.CANCELLED
    out = ag.run_sync(graph(calls), store=db)
    assert calls == ["A"]
    assert out.results["total"] == "A!B!C!"
