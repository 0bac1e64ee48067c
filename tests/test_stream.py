"""Streams in memory (issue 14, part 1): stages, re-batching, bounded queues, failures per
batch, stops, and the three entry points. No wall-clock bounds: overlap and order are
shown with events, counters and side files."""

from __future__ import annotations

import asyncio
import os

import pandas as pd
import pytest

import asyncgraph as ag
from asyncgraph._stream.engine import live_bound


def frames(n: int, rows: int = 1, start: int = 0):
    def source():
        for i in range(start, n):
            yield pd.DataFrame({"id": [i] * rows, "row": range(rows)})

    return source


def two_stage() -> ag.Graph:
    g = ag.Graph()

    @g.task
    def factor() -> int:
        return 10

    @g.stream
    async def task1(source, factor):
        return source.assign(step1=len(source) * factor)

    @g.stream
    def task2(task1):
        return task1.assign(step2=len(task1))

    return g


async def test_a_plain_task_feeds_every_batch_and_outputs_come_from_the_sink():
    async with ag.open_stream(two_stage(), source=frames(5)) as s:
        got = [b async for b in s.outputs()]
    assert sorted(int(b.id) for b in got) == [0, 1, 2, 3, 4]
    assert all(isinstance(b, ag.Batch) and b.task == "task2" and b.rows == 1 for b in got)
    assert all(b.sources == (int(b.id),) for b in got)
    assert all(set(b.data.columns) >= {"id", "step1", "step2"} for b in got)
    assert all((b.data["step1"] == 10).all() for b in got)
    r = s.result
    assert (r.done, r.failed, r.cancelled, r.rows) == (5, 0, 0, 5)
    assert {x.task: (x.calls, x.rows_in, x.rows_out) for x in r.summary()} == {
        "task1": (5, 5, 5),
        "task2": (5, 5, 5),
    }


async def test_run_stream_collects_without_out_and_max_batches_caps():
    r = await ag.run_stream(two_stage(), source=frames(100), max_batches=3)
    assert r.done == 3 and len(r.outputs) == 3
    r = await ag.run_stream(two_stage(), source=frames(3), collect=False)
    assert r.done == 3 and r.outputs == []
    assert list(r.to_frame().index) == ["task1", "task2"]


def test_run_stream_sync_outside_and_inside_a_loop():
    r = ag.run_stream_sync(two_stage(), source=frames(4))
    assert r.done == 4 and sorted(b.id for b in r.outputs) == ["0", "1", "2", "3"]

    async def inside():
        return ag.run_stream_sync(two_stage(), source=frames(2))

    assert asyncio.run(inside()).done == 2


async def test_an_async_source_and_a_source_of_no_batches():
    async def source():
        for i in range(3):
            await asyncio.sleep(0)
            yield pd.DataFrame({"id": [i]})

    r = await ag.run_stream(two_stage(), source=source)
    assert r.done == 3
    r = await ag.run_stream(two_stage(), source=frames(0))
    assert (r.done, r.failed, r.outputs) == (0, 0, [])


@pytest.mark.parametrize("queue_size", [1, 2, 8])
async def test_live_batches_never_exceed_the_bound_with_a_slow_sink(queue_size):
    g = ag.Graph()
    pulled = [0]
    sunk = [0]
    ahead = []

    def source():
        for i in range(40):
            pulled[0] += 1
            ahead.append(pulled[0] - sunk[0])
            yield pd.DataFrame({"id": [i]})

    @g.stream
    async def a(source):
        return source

    @g.stream
    async def b(a):
        return a

    @g.stream
    async def sink(b):
        for _ in range(30):  # slow: many loop turns per batch
            await asyncio.sleep(0)
        sunk[0] += 1
        return b

    bound = live_bound(g, queue_size)
    assert bound == queue_size * 4  # 3 edges + 1 sink
    async with ag.open_stream(g, source=source, queue_size=queue_size) as s:
        async for _ in s.outputs():
            for _ in range(5):
                await asyncio.sleep(0)  # a slow reader too
    assert s.result.done == 40
    assert queue_size <= s.peak <= bound
    assert max(ahead) <= bound + 1  # the batch being pulled counts too


@pytest.mark.parametrize("queue_size", [1, 2, 8])
async def test_a_splitting_stage_adds_only_the_pieces_of_one_split(queue_size):
    g = ag.Graph()

    @g.stream
    async def read(source):
        return source

    @g.stream(batch_size=25)  # 100-row batches: 4 pieces each
    async def split(read):
        return read

    @g.stream
    async def sink(split):
        for _ in range(20):
            await asyncio.sleep(0)

    async with ag.open_stream(g, source=frames(12, rows=100), queue_size=queue_size) as s:
        pass
    assert s.result.done == 12
    assert s.peak <= live_bound(g, queue_size) + 3


async def test_a_merging_stage_holds_at_most_one_merge_beyond_its_queue():
    g = ag.Graph()

    @g.stream
    async def read(source):
        return source

    @g.stream(batch_size=10)  # 1-row batches: merges of 10
    async def gather(read):
        for _ in range(20):
            await asyncio.sleep(0)
        return read

    async with ag.open_stream(g, source=frames(60), queue_size=1) as s:
        rows = [b.rows async for b in s.outputs()]
    assert rows == [10] * 6
    assert s.peak <= live_bound(g, 1) + 10


async def test_many_io_batches_run_at_once_capped_by_max_io():
    g = ag.Graph()
    running = [0]
    peak = [0]

    @g.stream
    async def fetch(source):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        for _ in range(10):
            await asyncio.sleep(0)
        running[0] -= 1
        return source

    @g.stream
    async def sink(fetch):
        return fetch

    await ag.run_stream(g, source=frames(30), queue_size=8)
    assert peak[0] > 1
    peak[0] = 0
    await ag.run_stream(g, source=frames(30), queue_size=8, max_io=2)
    assert peak[0] <= 2


async def test_split_merge_and_the_flush_at_exhaustion():
    g = ag.Graph()

    @g.stream(batch_size=4)
    async def small(source):
        return source

    r = await ag.run_stream(g, source=frames(2, rows=10))
    assert sorted(b.rows for b in r.outputs) == [3, 3, 3, 3, 4, 4]
    assert {b.id for b in r.outputs} >= {"0.0", "0.1", "0.2", "1.2"}
    assert r.done == 2

    g = ag.Graph()

    @g.stream(batch_size=10)
    async def merged(source):
        return source

    r = await ag.run_stream(g, source=frames(4))  # 4 one-row frames: one flush of 4
    assert [b.rows for b in r.outputs] == [4]
    assert r.outputs[0].sources == (0, 1, 2, 3) and r.done == 4
    r = await ag.run_stream(g, source=frames(25))
    assert sorted(b.rows for b in r.outputs) == [5, 10, 10]
    assert sorted(s for b in r.outputs for s in b.sources) == list(range(25))


async def test_a_merge_is_sent_after_batch_timeout():
    g = ag.Graph()
    gate = asyncio.Event()

    async def source():
        yield pd.DataFrame({"id": [0]})
        await gate.wait()  # the source stalls until the merged batch came out
        yield pd.DataFrame({"id": [1]})

    @g.stream(batch_size=100, batch_timeout=0.01)
    async def gather(source):
        return source

    async with ag.open_stream(g, source=source) as s:
        seen = []
        async for b in s.outputs():
            seen.append(b.rows)
            gate.set()
    assert seen == [1, 1]


async def test_several_parents_are_a_union_and_several_sinks_each_output():
    g = ag.Graph()

    @g.stream
    async def t1(source):
        return source.assign(t1=1)

    @g.stream
    async def t2a(t1):
        return t1.assign(t2A=1)

    @g.stream
    async def t2b(t1):
        return t1.assign(t2B=1)

    @g.stream(inputs=["t2a", "t2b"])
    async def t3(batch):
        return batch.assign(t3=1)

    @g.stream
    async def side(t1):
        return t1

    r = await ag.run_stream(g, source=frames(4))
    by = {}
    for b in r.outputs:
        by.setdefault(b.task, []).append(b)
    assert len(by["t3"]) == 8 and len(by["side"]) == 4
    total = pd.concat([b.data for b in by["t3"]])
    assert set(total.columns) >= {"id", "t1", "t2A", "t2B", "t3"} and len(total) == 8
    assert r.done == 4


async def test_empty_outputs_are_dropped_and_none_passes_nothing(tmp_path):
    g = ag.Graph()
    flag = tmp_path / "called"

    @g.stream
    async def blackhole(source):
        return source.iloc[0:0]

    @g.stream
    def after(blackhole):
        flag.write_text("called")
        return blackhole

    r = await ag.run_stream(g, source=frames(5))
    assert r.done == 5 and r.outputs == [] and not flag.exists()

    g = ag.Graph()

    @g.stream
    async def writer(source):
        return None

    r = await ag.run_stream(g, source=frames(3))
    assert r.done == 3 and r.outputs == []


async def test_a_failed_batch_fails_alone_after_its_retries():
    g = ag.Graph()
    calls: dict[str, list[str]] = {"t2": [], "t3": []}
    flaky_attempts = [0]

    @g.stream
    async def t1(source):
        return source

    @g.stream(retries=1, retry_delay=0)
    async def t2(t1):
        calls["t2"].append(str(t1["id"].iloc[0]))
        if t1["id"].iloc[0] == 3:
            raise ValueError("bad batch 3")
        if t1["id"].iloc[0] == 5 and flaky_attempts[0] == 0:
            flaky_attempts[0] += 1
            raise OSError("once")
        return t1

    @g.stream
    async def t3(t2):
        calls["t3"].append(str(t2["id"].iloc[0]))
        return t2

    r = await ag.run_stream(g, source=frames(8))
    assert (r.done, r.failed) == (7, 1)
    assert isinstance(r.errors[3], ValueError) and "bad batch 3" in str(r.errors[3])
    assert any("'t2'" in n for n in r.errors[3].__notes__)
    assert calls["t2"].count("3") == 2  # its retry
    assert calls["t2"].count("5") == 2  # failed once, then done
    assert "3" not in calls["t3"] and sorted(calls["t3"]) == ["0", "1", "2", "4", "5", "6", "7"]
    assert r.stages["t2"].failed == 1
    with pytest.raises(ag.StreamFailures) as info:
        r.raise_for_failures()
    assert info.value.result is r


async def test_max_failed_batches_stops_an_endless_failing_stream():
    g = ag.Graph()

    def endless():
        i = 0
        while True:
            yield pd.DataFrame({"id": [i]})
            i += 1

    @g.stream
    async def always(source):
        raise RuntimeError("no")

    with pytest.raises(ag.StreamFailures) as info:
        await ag.run_stream(g, source=endless, max_failed_batches=5)
    r = info.value.result
    assert r is not None and r.stopped == "max_failed_batches" and r.failed == 5
    assert all(isinstance(e, RuntimeError) for e in info.value.exceptions)

    with pytest.raises(ag.StreamFailures) as info:
        await ag.run_stream(g, source=endless, fail_fast=True)
    assert info.value.result is not None and info.value.result.failed == 1


async def test_deadline_stops_pulling_and_cancels_running_calls():
    g = ag.Graph()
    cancelled = []
    started = asyncio.Event()

    @g.stream
    async def stuck(source):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(source["id"].iloc[0])
            raise

    r = await ag.run_stream(g, source=frames(10), deadline=0.05)
    assert started.is_set()
    assert r.stopped == "deadline" and r.done == 0 and r.cancelled >= 1
    # every running call was cancelled (the queued batches never started)
    assert 1 <= len(cancelled) <= r.cancelled


async def test_cancel_and_cancelling_the_owner_leave_nothing_running():
    g = ag.Graph()
    running = set()
    started = asyncio.Event()

    @g.stream
    async def slow(source):
        i = int(source["id"].iloc[0])
        running.add(i)
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            running.discard(i)

    async with ag.open_stream(g, source=frames(100)) as s:
        await started.wait()
        s.cancel()
    assert s.result.stopped == "cancelled" and s.result.cancelled >= 1 and not running

    started.clear()

    async def owner():
        async with ag.open_stream(g, source=frames(100)) as s2:
            async for _ in s2.outputs():
                pass

    task = asyncio.ensure_future(owner())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not running


async def test_an_error_in_the_block_cancels_the_stream():
    g = ag.Graph()
    started = asyncio.Event()

    @g.stream
    async def slow(source):
        started.set()
        await asyncio.Event().wait()

    with pytest.raises(KeyError):
        async with ag.open_stream(g, source=frames(10)) as s:
            await started.wait()
            raise KeyError("mine")
    assert s.done


def _cpu_stage(batch):
    import os as _os

    return batch.assign(pid=_os.getpid(), is_frame=isinstance(batch, pd.DataFrame))


async def test_a_cpu_stage_gets_each_batch_concatenated_in_its_worker():
    g = ag.Graph()

    @g.stream
    async def fetch(source):
        return source

    g.add_stream("score", _cpu_stage, inputs=["fetch"], kind="cpu", batch_size=3)

    r = await ag.run_stream(g, source=frames(7), cpu_workers=2)
    assert r.done == 7
    data = pd.concat([b.data for b in r.outputs])
    assert sorted(data["id"]) == list(range(7))
    assert data["is_frame"].all() and (data["pid"] != os.getpid()).all()
    assert sorted(b.rows for b in r.outputs) == [1, 3, 3]


def _wait_for_flag(batch, flag):
    import time as _time
    from pathlib import Path as _Path

    if int(batch["id"].iloc[0]) == 0:
        while not _Path(flag).exists():  # a test probe, in the worker
            _time.sleep(0.005)
    return batch


async def test_io_runs_on_while_a_cpu_stage_computes(tmp_path):
    flag = tmp_path / "fetched-2"
    g = ag.Graph()

    @g.task
    def flag_path() -> str:
        return str(flag)

    @g.stream
    async def fetch(source):
        if int(source["id"].iloc[0]) == 2:
            flag.write_text("")  # batch 2 fetched while batch 0 computes
        return source

    g.add_stream("cpu", _wait_for_flag, inputs=["fetch"], kind="cpu", deps={"flag": "flag_path"})

    @g.stream
    async def publish(cpu):
        return cpu

    r = await ag.run_stream(g, source=frames(6), cpu_workers=1)
    assert r.done == 6


async def test_start_skips_ahead_with_or_without_the_sources_help():
    seen = []

    def skipping(start=0):
        seen.append(start)
        for i in range(start, 6):
            yield pd.DataFrame({"id": [i]})

    r = await ag.run_stream(two_stage(), source=skipping, start=4)
    assert seen == [4] and sorted(b.id for b in r.outputs) == ["4", "5"]
    r = await ag.run_stream(two_stage(), source=frames(6), start=4)
    assert sorted(b.id for b in r.outputs) == ["4", "5"]


# -- bad input -------------------------------------------------------------------------


def test_stage_definitions_are_checked_where_they_are_written():
    g = ag.Graph()
    with pytest.raises(ag.InvalidTaskError, match="first parameter"):
        g.add_stream("none", lambda: None)
    with pytest.raises(ag.InvalidTaskError, match="batch_size must be an int"):
        g.add_stream("bs", lambda source: source, batch_size=0)
    with pytest.raises(ag.InvalidTaskError, match="without batch_size"):
        g.add_stream("bt", lambda source: source, batch_timeout=1)
    with pytest.raises(ag.InvalidTaskError, match="names the stream's source"):
        g.add_stream("source", lambda source: source)
    with pytest.raises(ag.InvalidTaskError, match="inputs must be"):
        g.add_stream("i", lambda b: b, inputs="a")
    with pytest.raises(ag.InvalidTaskError, match="generator function: return a DataFrame"):

        @g.stream
        def gen(source):
            yield source

    with pytest.raises(ag.InvalidTaskError, match="unknown kind"):
        g.add_stream("k", lambda source: source, kind="gpu")
    assert "none" not in g and len(g) == 0


async def test_graph_shapes_that_cannot_stream_are_refused_before_anything_runs():
    g = ag.Graph()

    @g.task
    def model():
        return 1

    @g.stream
    async def score(model):  # its batch input is a plain task
        return model

    with pytest.raises(ag.InvalidTaskError, match="plain task, not a stream stage"):
        ag.open_stream(g, source=frames(1))

    g = two_stage()

    @g.task
    def after(task2):
        return task2

    with pytest.raises(ag.InvalidTaskError, match="downstream of stream stage"):
        await ag.run_stream(g, source=frames(1))
    with pytest.raises(TypeError, match="no stream stage"):
        ag.open_stream(ag.Graph(), source=frames(1))
    with pytest.raises(TypeError, match="cannot run stream stages"):
        await ag.run(two_stage())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"source": [pd.DataFrame()]}, TypeError, "iterable"),
        ({"source": iter([])}, TypeError, "pass the function"),
        ({"source": frames(1), "queue_size": 0}, ValueError, "queue_size"),
        ({"source": frames(1), "max_batches": "3"}, TypeError, "max_batches"),
        ({"source": frames(1), "max_failed_batches": 0}, ValueError, "max_failed_batches"),
        ({"source": frames(1), "deadline": -1}, ValueError, "deadline"),
    ],
)
def test_bad_options_are_refused_by_the_call(kwargs, error, match):
    with pytest.raises(error, match=match):
        ag.open_stream(two_stage(), **kwargs)


async def test_a_source_of_other_things_and_a_stage_returning_other_things():
    def bad():
        yield pd.DataFrame({"id": [0]})
        yield [1, 2]

    with pytest.raises(TypeError, match="gave list as batch 1"):
        await ag.run_stream(two_stage(), source=bad)

    g = ag.Graph()

    @g.stream
    async def wrong(source):
        return [1]

    r = await ag.run_stream(g, source=frames(2))
    assert r.failed == 2 and "not a pandas DataFrame" in str(r.errors[0])

    g = ag.Graph()

    @g.stream
    async def forgot(source):
        source.assign(x=1)  # no return

    @g.stream
    async def after(forgot):
        return forgot

    r = await ag.run_stream(g, source=frames(2))
    assert r.failed == 2 and "a missing return?" in str(r.errors[0])


async def test_a_typo_in_the_batch_parameter_is_named():
    g = ag.Graph()

    @g.stream
    async def fetch(source):
        return source

    @g.stream
    async def typo(fech):
        return fech

    with pytest.raises(ag.InvalidTaskError, match="'fech' is not a stage of this graph"):
        await ag.run_stream(g, source=frames(1))


async def test_a_source_that_raises_ends_the_stream_with_its_error():
    def broken():
        yield pd.DataFrame({"id": [0]})
        raise OSError("disk")

    with pytest.raises(ag.TaskError, match="source raised OSError reading batch 1") as info:
        await ag.run_stream(two_stage(), source=broken)
    assert isinstance(info.value.__cause__, OSError)


def test_stream_names_are_public_and_say_so():
    names = ["Batch", "OpenStream", "StageSummary", "StreamFailures", "StreamPlan",
             "StreamReplayError", "StreamResult", "open_stream", "plan_stream", "run_stream",
             "run_stream_sync"]
    assert set(names) <= set(ag.__all__)
    for name in names:
        assert getattr(ag, name).__module__ == "asyncgraph"
        assert getattr(ag, name).__doc__


class _AllInline:
    """A backend running everything on the loop's thread (as tests/test_backend_seam.py)."""

    def __init__(self) -> None:
        self.asked = 0

    def executors(self, *, max_io, cpu_workers, clock, pickled):
        from asyncgraph._executors.base import InlineExecutor

        self.asked += 1
        return [InlineExecutor(clock=clock)]


async def test_a_backend_gets_the_stages():
    backend = _AllInline()
    g = ag.Graph()

    @g.stream
    async def fetch(source):
        return source

    g.add_stream("score", _cpu_stage, inputs=["fetch"], kind="cpu", batch_size=2)
    r = await ag.run_stream(g, source=frames(5), backend=backend)
    assert r.done == 5 and backend.asked == 1
    assert (pd.concat([b.data for b in r.outputs])["pid"] == os.getpid()).all()


_CTRL_C = """
import asyncio, sys, pathlib, pandas as pd, asyncgraph as ag
where = pathlib.Path(sys.argv[1])
g = ag.Graph()

@g.stream
async def stuck(source):
    (where / "started").write_text("")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        (where / "cancelled").write_text("")
        raise

def source():
    while True:
        yield pd.DataFrame({"id": [0]})

try:
    ag.run_stream_sync(g, source=source)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_stops_run_stream_sync_and_cleans_up(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(6000):  # wait for the stage to start (a probe, not a bound)
            if (tmp_path / "started").exists() or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert (tmp_path / "started").exists()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted" in out and (tmp_path / "cancelled").exists()


def test_a_plain_run_scans_for_stages_only_once_one_exists():
    import pickle
    import subprocess
    import sys

    code = (
        "import asyncgraph as ag\n"
        "from asyncgraph._stream import spec\n"
        "g = ag.Graph(); g.add('a', lambda: 1)\n"
        "assert ag.run_sync(g).results['a'] == 1 and spec.DEFINED == [False]\n"
        "import pickle, sys\n"
        "g2 = pickle.loads(sys.stdin.buffer.read())\n"
        "assert spec.DEFINED == [True]\n"
        "try:\n"
        "    ag.run_sync(g2)\n"
        "except TypeError as e:\n"
        "    print(e)\n"
    )
    g = ag.Graph()
    g.add_stream("stage", pd.DataFrame.copy, inputs=["source"])  # pickled by reference
    proc = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(g), capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"cannot run stream stages ('stage')" in proc.stdout
