"""``resources=`` on stream stages and ``limits=`` on the stream: each running call of a
stage holds one unit of each of its resources, so a limit caps the calls running at once
(a high-water mark, counted by the stages themselves or from the events, never timed),
across the stages sharing it, IO and CPU alike; a resource without a limit is refused
before anything runs."""

from __future__ import annotations

import asyncio

import pandas as pd
import pytest

import asyncgraph as ag


def frames(n: int):
    def source():
        for i in range(n):
            yield pd.DataFrame({"id": [i]})

    return source


class Probe:
    """Counts the calls running at once (inside the calls themselves)."""

    def __init__(self) -> None:
        self.now = 0
        self.high = 0

    async def hold(self) -> None:
        self.now += 1
        self.high = max(self.high, self.now)
        for _ in range(5):  # let every other ready call start, if it may
            await asyncio.sleep(0)
        self.now -= 1


def io_graph(probe: Probe, resources: tuple[str, ...] = ("db",)) -> ag.Graph:
    g = ag.Graph()

    @g.stream(resources=resources)
    async def fetch(source):
        await probe.hold()
        return source

    @g.stream
    async def sink(fetch):
        return fetch

    return g


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_a_limit_caps_a_stages_running_calls_at_exactly_the_limit(limit):
    probe = Probe()
    r = await ag.run_stream(io_graph(probe), source=frames(30), queue_size=8, limits={"db": limit})
    assert r.done == 30 and r.failed == 0
    assert probe.high == limit  # reached, never passed


async def test_without_the_resource_the_queues_let_more_run_at_once():
    # The probe can fail: the same stream runs more than 3 calls at once without it.
    probe = Probe()
    r = await ag.run_stream(io_graph(probe, ()), source=frames(30), queue_size=8)
    assert r.done == 30
    assert probe.high > 3


async def test_stages_sharing_a_resource_share_its_units():
    probe = Probe()
    g = ag.Graph()

    @g.stream(resources=["db"])
    async def read(source):
        await probe.hold()
        return source

    @g.stream(resources=["db"])
    async def write(read):
        await probe.hold()
        return read

    r = await ag.run_stream(g, source=frames(30), queue_size=8, limits={"db": 2})
    assert r.done == 30
    assert probe.high == 2
    assert {s.task: s.done for s in r.summary()} == {"read": 30, "write": 30}


def shout(source: pd.DataFrame) -> pd.DataFrame:
    return source.assign(cpu=True)


async def test_a_cpu_stage_holds_its_unit_while_its_batch_is_in_a_worker():
    running, high = set(), [0]

    def watch(e: ag.Event) -> None:
        if not e.task.startswith("score#"):
            return
        if e.kind is ag.EventKind.STARTED:
            running.add(e.task)
        elif e.kind in (ag.EventKind.DONE, ag.EventKind.FAILED):
            running.discard(e.task)
        high[0] = max(high[0], len(running))

    g = ag.Graph()
    g.add_stream("score", shout, inputs=["source"], kind="cpu", resources=["gpu"])
    r = await ag.run_stream(
        g, source=frames(8), queue_size=4, cpu_workers=2, limits={"gpu": 1}, on_event=watch
    )
    assert r.done == 8
    assert all(b.data["cpu"].all() for b in r.outputs)
    assert high[0] == 1


async def test_a_retrying_call_keeps_its_unit_until_it_ends():
    probe = Probe()
    tries: dict[int, int] = {}
    g = ag.Graph()

    @g.stream(resources=["db"], retries=2, retry_delay=0.001)
    async def flaky(source):
        i = int(source["id"].iloc[0])
        tries[i] = tries.get(i, 0) + 1
        await probe.hold()
        if tries[i] < 2:
            raise ConnectionError(f"batch {i}: try again")
        return source

    r = await ag.run_stream(g, source=frames(6), queue_size=8, limits={"db": 1})
    assert r.done == 6 and r.failed == 0
    assert probe.high == 1
    assert tries == dict.fromkeys(range(6), 2)


async def test_a_resource_without_a_limit_is_refused_before_anything_runs():
    read = []

    def source():
        read.append(1)
        yield pd.DataFrame({"id": [0]})

    g = io_graph(Probe())
    with pytest.raises(
        ag.GraphError,
        match=r"stream stage 'fetch' declares resource 'db'.*"
        r"pass limits=\{'db': N\}",
    ):
        await ag.run_stream(g, source=source, limits={"gpu": 1})
    with pytest.raises(ag.GraphError, match="limits set: \\[\\]"):
        ag.open_stream(g, source=source)
    assert read == []


def test_bad_limits_name_the_parameter():
    g = io_graph(Probe())
    with pytest.raises(TypeError, match="limits must be a dict"):
        ag.run_stream_sync(g, source=frames(1), limits=["db"])  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError), match=r"limits\['db'\]"):
        ag.run_stream_sync(g, source=frames(1), limits={"db": 0})


def test_a_stage_declares_resources_by_name():
    g = ag.Graph()
    with pytest.raises(ag.InvalidTaskError, match="resources"):
        g.add_stream("bad", lambda source: source, resources="db")  # type: ignore[arg-type]
    g.add_stream("ok", lambda source: source, resources=["db", "net"])
    assert g.tasks["ok"].resources == ("db", "net")
    r = ag.run_stream_sync(g, source=frames(3), limits={"db": 1, "net": 1})
    assert r.done == 3
