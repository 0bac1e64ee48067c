"""Watching a stream (issue 14, part 3): events per stage piece and per source batch,
the progress bar counting batches and rows/s, and the summary per stage."""

from __future__ import annotations

import io

import pandas as pd
import pytest

import asyncgraph as ag
from asyncgraph._observe import StreamProgress


def frames(n: int, rows: int = 3):
    def source():
        for i in range(n):
            yield pd.DataFrame({"id": [i] * rows})

    return source


def graph(fail_on: int | None = None) -> ag.Graph:
    g = ag.Graph()

    @g.stream
    async def fetch(source):
        return source

    @g.stream(batch_size=2, retries=1, retry_delay=0)
    async def score(fetch):
        if fail_on is not None and int(fetch["id"].iloc[0]) == fail_on:
            raise ValueError("bad")
        return fetch

    return g


async def test_events_name_each_piece_and_each_source_batch():
    events: list[ag.Event] = []
    r = await ag.run_stream(graph(fail_on=1), source=frames(3), on_event=events.append)
    names = [(e.kind.value, e.task) for e in events]
    for sid in range(3):
        assert ("queued", f"source#{sid}") in names
        assert ("started", f"fetch#{sid}") in names and ("done", f"fetch#{sid}") in names
    assert ("done", "source#0") in names and ("done", "source#2") in names
    assert ("failed", "source#1") in names
    assert ("started", "score#0.0") in names and ("done", "score#0.1") in names
    assert ("retrying", "score#1.0") in names and ("failed", "score#1.0") in names
    retry = next(e for e in events if e.kind is ag.EventKind.RETRYING)
    assert isinstance(retry.error, ValueError) and retry.attempt == 1
    assert r.failed == 1
    # A batch's own events come in order: queued, then done or failed, once.
    for sid in range(3):
        mine = [k for k, t in names if t == f"source#{sid}"]
        assert mine[0] == "queued" and len(mine) == 2


async def test_an_async_callback_sees_every_event_in_order():
    seen: list[str] = []

    async def callback(event):
        seen.append(f"{event.kind.value} {event.task}")

    await ag.run_stream(graph(), source=frames(2), on_event=callback)
    assert seen.index("queued source#0") < seen.index("started fetch#0")
    assert seen.index("done fetch#0") < seen.index("done source#0")


async def test_cancelled_batches_and_calls_are_told():
    import asyncio

    events: list[ag.Event] = []
    started = asyncio.Event()
    g = ag.Graph()

    @g.stream
    async def stuck(source):
        started.set()
        await asyncio.Event().wait()

    async with ag.open_stream(g, source=frames(4), on_event=events.append) as s:
        await started.wait()
        s.cancel()
    kinds = {(e.kind.value, e.task.split("#")[0]) for e in events}
    assert ("cancelled", "source") in kinds and ("cancelled", "stuck") in kinds


def test_the_progress_bar_counts_batches_and_rows(monkeypatch):
    pytest.importorskip("tqdm")
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    r = ag.run_stream_sync(graph(fail_on=2), source=frames(5), progress="force")
    assert r.done == 4
    text = out.getvalue()
    assert "batch" in text and "done 4" in text and "failed 1" in text and "rows/s" in text


def test_the_bar_is_quiet_unless_asked():
    assert StreamProgress.make(False, None) is None


async def test_the_summary_per_stage():
    r = await ag.run_stream(graph(fail_on=1), source=frames(3))
    rows = {s.task: s for s in r.summary()}
    assert rows["fetch"].calls == 3 and rows["fetch"].rows_in == 9 and rows["fetch"].done == 3
    assert rows["score"].failed in (1, 2)  # 1.0, and 1.1 unless it was dropped unstarted
    assert rows["score"].busy >= 0
    frame = r.to_frame()
    assert list(frame.columns) == ["calls", "done", "failed", "rows_in", "rows_out", "busy"]


async def test_with_a_store_a_batch_is_told_done_once_it_is_durable(tmp_path):
    from asyncgraph._stream.store import read_batches

    store = tmp_path / "s.db"
    seen: list[tuple[str, set[int]]] = []

    def watch(event):
        if event.task.startswith("source#") and event.kind is ag.EventKind.DONE:
            sid = int(event.task.split("#")[1])
            done = {s for s, (st, *_) in read_batches(store).items() if st == "done"}
            seen.append((sid, done))

    r = await ag.run_stream(graph(), source=frames(4), store=store, on_event=watch)
    assert r.done == 4 and len(seen) == 4
    for sid, done in seen:  # (a callback's own error would only be logged)
        assert sid in done, f"source#{sid} was told done before its commit"
