"""Streams on disk (issue 14, part 2): Parquet out, and exactly once across crashes.

The crash trial SIGKILLs a durable 50-batch stream at random calls (chosen by a seeded
generator; the driver kills itself at its N-th call, so no timing is involved) and
resumes it until it ends: afterwards every source batch's rows are in ``out/`` exactly
once, no file is there that the store does not list, and no batch the store had
recorded done before a run was computed again by that run (a side file logs calls).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import asyncgraph as ag
from asyncgraph._stream.durable import MARKER
from asyncgraph._stream.store import StreamReplayError, read_batches

HERE = Path(__file__).parent
DRIVER = HERE / "stream_crash_driver.py"


def frames(n: int, rows: int = 2):
    def source(start: int = 0):
        for i in range(start, n):
            yield pd.DataFrame({"id": [i] * rows, "row": range(rows)})

    return source


def parquet_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.parquet"))


def done_ids(store: Path) -> set[int]:
    return {sid for sid, (status, *_) in read_batches(store).items() if status == "done"}


def test_sigkill_at_random_points_loses_nothing_and_duplicates_nothing(tmp_path):
    rng = random.Random(1414)
    log = tmp_path / "calls.log"
    store = tmp_path / "s.db"
    done_before: dict[int, set[int]] = {}
    killed = 0
    run = 0
    while True:
        run += 1
        assert run < 40, "the stream never finished"
        kill_at = rng.randint(1, 60) if run <= 8 else 0
        done_before[run] = done_ids(store) if store.exists() else set()
        proc = subprocess.run(
            [sys.executable, str(DRIVER), str(tmp_path), str(run), str(kill_at)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode == -9:
            killed += 1
            continue
        assert proc.returncode == 0, proc.stderr
        done, failed, cancelled, _skipped = map(int, proc.stdout.split())
        assert (failed, cancelled) == (0, 0)
        if len(done_before[run]) + done == 50:
            break
    assert killed >= 3  # the trial really crashed the stream, several times
    # No loss, no duplicate: each source batch's 4 rows, once.
    files = parquet_files(tmp_path / "out")
    data = pd.concat([pd.read_parquet(f) for f in files])
    assert sorted(data["id"].unique()) == list(range(50))
    assert len(data) == 200 and not data.duplicated(["id", "row"]).any()
    # Every file is committed in the store, and the store lists no missing file.
    listed = {f for _, (_, _, _, fs) in read_batches(store).items() for f in fs}
    assert {str(f) for f in files} == listed
    assert done_ids(store) == set(range(50))
    # No done batch computed again: a run never called a stage on a batch that was done
    # before it started.
    for line in log.read_text().splitlines():
        r, _stage, ids = line.split()
        again = {int(i) for i in ids.split(",")} & done_before[int(r)]
        assert not again, f"run {r} recomputed done batches {again}: {line}"


async def test_a_failed_batch_is_the_only_one_rerun(tmp_path):
    # Files, not closures: a changed closure would change the stage's fingerprint.
    log = tmp_path / "calls"
    broken = tmp_path / "broken"
    broken.write_text("3")

    def build() -> ag.Graph:
        g = ag.Graph()

        @g.stream
        async def fetch(source):
            i = int(source["id"].iloc[0])
            with open(log, "a") as f:
                f.write(f"{i}\n")
            if broken.exists() and str(i) == broken.read_text():
                raise OSError("flaky")
            return source

        return g

    kw = {"source": frames(6), "out": tmp_path / "out", "store": tmp_path / "s.db"}
    r = await ag.run_stream(build(), **kw)
    assert (r.done, r.failed) == (5, 1)
    assert len(parquet_files(tmp_path / "out")) == 5
    broken.unlink()
    log.unlink()
    r = await ag.run_stream(build(), **kw)
    assert log.read_text().split() == ["3"] and (r.done, r.skipped) == (1, 5)
    assert len(parquet_files(tmp_path / "out")) == 6


async def test_a_code_change_makes_done_batches_stale_and_replaces_their_files(tmp_path):
    kw = {"source": frames(4), "out": tmp_path / "out", "store": tmp_path / "s.db"}
    g = ag.Graph()

    @g.stream
    async def tag(source):
        return source.assign(version=1)

    r = await ag.run_stream(g, **kw)
    assert r.done == 4
    first = parquet_files(tmp_path / "out")
    plan = ag.plan_stream(g, store=tmp_path / "s.db")
    assert (plan.done, plan.stale) == (4, 0)

    g2 = ag.Graph()

    @g2.stream(name="tag")
    async def tag_v2(source):
        return source.assign(version=2)

    plan = ag.plan_stream(g2, store=tmp_path / "s.db")
    assert (plan.done, plan.stale) == (0, 4)
    assert "code changed: 4 done batches will be recomputed" in str(plan)
    r = await ag.run_stream(g2, **kw)
    assert (r.done, r.skipped) == (4, 0)
    files = parquet_files(tmp_path / "out")
    assert files == first  # the same names, replaced
    assert set(pd.concat(map(pd.read_parquet, files))["version"]) == {2}


async def test_a_source_that_does_not_replay_is_refused(tmp_path):
    g = ag.Graph()

    @g.stream
    async def keep(source):
        return source

    kw = {"out": tmp_path / "out", "store": tmp_path / "s.db"}
    await ag.run_stream(g, source=frames(3, rows=2), max_batches=2, **kw)

    def other():  # no start= parameter: read again from the first batch
        for i in range(3):
            yield pd.DataFrame({"id": [i] * 5})

    with pytest.raises(StreamReplayError, match="does not replay: batch 0 had 2 rows"):
        await ag.run_stream(g, source=other, **kw)
    assert done_ids(tmp_path / "s.db") == {0, 1}


async def test_a_resumed_source_is_asked_to_start_at_the_first_gap(tmp_path):
    starts: list[int] = []

    def source(start: int = 0):
        starts.append(start)
        yield from frames(8)(start)

    g = ag.Graph()

    @g.stream
    async def keep(source):
        return source

    kw = {"out": tmp_path / "out", "store": tmp_path / "s.db"}
    await ag.run_stream(g, source=source, max_batches=5, **kw)
    r = await ag.run_stream(g, source=source, **kw)
    assert starts == [0, 5] and (r.done, r.skipped) == (3, 5)


async def test_several_sinks_are_partitioned_by_task_and_one_is_not(tmp_path):
    g = ag.Graph()

    @g.stream
    async def first(source):
        return source

    @g.stream
    async def a(first):
        return first

    @g.stream
    async def b(first):
        return first

    r = await ag.run_stream(g, source=frames(3), out=tmp_path / "many")
    assert {p.parent.name for p in parquet_files(tmp_path / "many")} == {"task=a", "task=b"}
    assert len(r.files) == 0 or all(os.path.exists(f) for f in r.files)
    assert all(b.path is not None and os.path.exists(b.path) for b in r.outputs)

    one = ag.Graph()

    @one.stream
    async def only(source):
        return source

    await ag.run_stream(one, source=frames(3), out=tmp_path / "one")
    assert [p.parent for p in parquet_files(tmp_path / "one")] == [tmp_path / "one"] * 3
    assert (tmp_path / "one" / MARKER).exists()


async def test_a_durable_stream_refuses_a_directory_of_other_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.csv").write_text("x")
    g = ag.Graph()

    @g.stream
    async def keep(source):
        return source

    with pytest.raises(ag.StoreError, match="did not write"):
        await ag.run_stream(g, source=frames(1), out=out, store=tmp_path / "s.db")
    assert (out / "mine.csv").exists()


async def test_the_store_is_held_while_a_stream_runs(tmp_path):
    import asyncio

    started = asyncio.Event()
    g = ag.Graph()

    @g.stream
    async def slow(source):
        started.set()
        await asyncio.Event().wait()

    async with ag.open_stream(g, source=frames(5), store=tmp_path / "s.db") as s:
        await started.wait()
        with pytest.raises(ag.StoreLockedError):
            await ag.run_stream(g, source=frames(1), store=tmp_path / "s.db")
        s.cancel()
    assert s.result.cancelled >= 1
    states = {st for st, *_ in read_batches(tmp_path / "s.db").values()}
    assert states == {"cancelled"}
