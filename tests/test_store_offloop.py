"""A run never waits on the store on its loop (issue 13): reads go to a thread.

The store's results a run reads after it started (a family's parent, the elements a
family reuses from the store when it is collected, the counterparts element-wise
elements take) are read in a thread. The proof is a store whose every read blocks until
a coroutine on the run's loop lets it go: if the loop were the one reading, nothing on
it could let the read go, and the read would give up and say so.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import asyncgraph as ag
from asyncgraph import State

#: Only so that a regression fails instead of hanging: a read let go by the loop is
#: let go at once.
_GIVE_UP_S = 20.0


class GatedStore(ag.SQLiteStore):
    """A store whose result reads wait until the loop lets each go (``serve``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.asked: asyncio.Queue[None] | None = None
        self.gate = threading.Semaphore(0)
        self.reads: list[tuple[str, list[str]]] = []  # (thread kind, task names)
        self.stuck: list[list[str]] = []  # reads the loop never let go

    def _wait(self, names: list[str]) -> None:
        assert self.loop is not None and self.asked is not None
        on_loop = threading.get_ident() == self.loop_thread
        self.reads.append(("loop" if on_loop else "thread", sorted(names)))
        self.loop.call_soon_threadsafe(self.asked.put_nowait, None)
        if not self.gate.acquire(timeout=_GIVE_UP_S):
            self.stuck.append(sorted(names))

    def load_result(self, result_id: int, task: str) -> Any:
        if self.loop is not None:
            self._wait([task])
        return super().load_result(result_id, task)

    def load_results(self, wanted: Any) -> dict[str, Any]:
        if self.loop is not None:
            self._wait(list(wanted))
        return super().load_results(wanted)

    async def serve(self) -> None:
        """On the run's loop: let every read go as it asks."""
        assert self.asked is not None
        while True:
            await self.asked.get()
            self.gate.release()


async def gated_run(graph: ag.Graph, store: GatedStore, **options: Any) -> ag.Graph:
    store.loop = asyncio.get_running_loop()
    store.loop_thread = threading.get_ident()
    store.asked = asyncio.Queue()
    server = asyncio.create_task(store.serve())
    try:
        return await ag.run(graph, store=store, **options)
    finally:
        server.cancel()
        store.loop = None


def graph(flag: Path) -> ag.Graph:
    """xs -> up (mapped; fails on 'b' while ``flag`` exists) -> tag (element-wise);
    total (a reducer of up)."""

    def up(x: str) -> str:
        if x == "b" and flag.exists():
            raise ValueError("b fails while the flag is there")
        return x.upper()

    g = ag.Graph()
    g.add("xs", lambda: ["a", "b", "c"], deps=[])
    g.add("up", up, deps=["xs"], over="xs", key=lambda x: x)
    g.add("tag", lambda u: u + "!", deps=["up"], over="up")
    g.add("total", lambda up: "".join(up), deps=["up"])
    return g


def first_run(tmp_path: Path) -> tuple[Path, Path]:
    db, flag = tmp_path / "s.db", tmp_path / "flag"
    flag.write_text("")
    out = ag.run_sync(graph(flag), store=db)
    assert out.status["up[b]"] is State.FAILED
    flag.unlink()
    return db, flag


def test_collecting_a_family_reused_from_the_store_reads_in_a_thread(tmp_path):
    db, flag = first_run(tmp_path)
    store = GatedStore(db)
    out = asyncio.run(gated_run(graph(flag), store))
    assert out.results["total"] == "ABC"
    assert out.results["tag"] == ["A!", "B!", "C!"]
    assert store.stuck == []
    # The two reused elements of each family are read once each family is collected.
    assert ("thread", ["up[a]", "up[c]"]) in store.reads
    assert ("thread", ["tag[a]", "tag[c]"]) in store.reads
    assert [r for r in store.reads if r[0] == "loop"] == []


def test_an_element_wise_family_over_one_done_before_reads_in_a_thread(tmp_path):
    db, flag = first_run(tmp_path)
    ag.run_sync(graph(flag), store=db)  # all done now
    store = GatedStore(db)
    again = ag.reset(ag.load(graph(flag), store), "tag")
    out = asyncio.run(gated_run(again, store))
    assert out.results["tag"] == ["A!", "B!", "C!"]
    assert store.stuck == []
    # The keys come from the root parent's result; each element's input is read too.
    read = {n for _, names in store.reads for n in names}
    assert {"xs", "up[a]", "up[b]", "up[c]"} <= read
    assert [r for r in store.reads if r[0] == "loop"] == []


def test_a_read_that_fails_in_its_thread_fails_as_it_did_on_the_loop(tmp_path):
    db, flag = first_run(tmp_path)

    class Broken(ag.SQLiteStore):
        def load_results(self, wanted: Any) -> dict[str, Any]:
            if "up[a]" in wanted:
                raise ag.StoreError("the disk is gone")
            return super().load_results(wanted)

    store = Broken(db)
    try:
        ag.run_sync(graph(flag), store=store)
    except ag.StoreError as exc:
        assert "the disk is gone" in str(exc)
    else:
        raise AssertionError("the failed read was not reported")


def test_a_family_reused_from_the_store_counts_its_elements_once(tmp_path):
    db, flag = first_run(tmp_path)
    ag.run_sync(graph(flag), store=db)  # the families expand again: b reruns
    last = ag.history(db).iloc[-1]
    # Reused: xs, up[a], up[c], tag[a], tag[c]; done: up[b], tag[b], up, tag, total.
    assert (last["tasks"], last["reused"], last["done"]) == (10, 5, 5)
    ag.run_sync(graph(flag), store=db)  # all reused, nothing expands
    last = ag.history(db).iloc[-1]
    assert (last["tasks"], last["reused"], last["done"]) == (10, 10, 0)
