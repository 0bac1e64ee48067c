"""A progress bar that is a run's only listener follows the run's counts (issue 15).

Such a run sends it no ``queued``, ``started`` or ``done`` events (three a task); the bar
redraws on a loop timer from the run's counts and takes the rare events (failed,
skipped, cancelled) as before. Its last draw is exact, its timer ends with the run, and
a run with any other listener still sends every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from typing import Any

import pytest
from conftest import DeadlineAtSignal

import asyncgraph as ag
from asyncgraph import _observe
from asyncgraph._lifetime import start
from asyncgraph._observe import Watch, _Progress
from asyncgraph._options import RunOptions


def last_counts(text: str) -> dict[str, int]:
    """The counts of the bar's last line (tqdm redraws with carriage returns)."""
    line = text.replace("\r", "\n").strip().splitlines()[-1]
    counts = {k: int(v) for k, v in re.findall(r"(done|failed|skipped|cancelled) (\d+)", line)}
    total = re.search(r"(\d+)/(\d+)", line)
    assert total is not None, line
    counts["shown"], counts["total"] = int(total.group(1)), int(total.group(2))
    return counts


async def with_bar(graph: ag.Graph, **options: Any) -> tuple[Any, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            out: Any = await ag.run(graph, progress="force", **options)
        except ag.TaskFailures as exc:
            out = exc
    return out, err.getvalue()


def mixed_graph() -> ag.Graph:
    async def ok(*a: Any) -> int:
        return 1

    async def bad(*a: Any) -> int:
        raise ValueError("no")

    g = ag.Graph()
    for i in range(30):
        g.add(f"a{i}", ok)
        g.add(f"b{i}", ok, deps=[f"a{i}"])
    g.add("bad", bad, deps=["a0"])
    g.add("below", ok, deps=["bad"])
    g.add("further", ok, deps=["below"])
    return g


@pytest.fixture
def followed(monkeypatch: pytest.MonkeyPatch) -> list[_Progress]:
    """The bars that followed a run (and saw how many events)."""
    bars: list[_Progress] = []
    real = _Progress.follow

    def follow(self: _Progress, *args: Any) -> None:
        bars.append(self)
        real(self, *args)

    monkeypatch.setattr(_Progress, "follow", follow)
    return bars


async def test_the_bar_alone_follows_the_counts_and_ends_exact(followed):
    out, text = await with_bar(mixed_graph())
    assert len(followed) == 1
    bar = followed[0]
    assert bar.timer is None  # cancelled with the run: nothing of the bar outlives it
    c = bar.counts
    assert c[ag.EventKind.STARTED] == 0  # no per-task events came
    assert (c[ag.EventKind.DONE], c[ag.EventKind.FAILED], c[ag.EventKind.SKIPPED]) == (60, 1, 2)
    shown = last_counts(text)
    assert shown["done"] == 60 and shown["failed"] == 1 and shown["skipped"] == 2
    assert shown["shown"] == shown["total"] == 63
    assert out.status["further"] is ag.State.SKIPPED


async def test_a_graph_skipped_in_part_from_before_counts_as_an_event_fed_bar(followed):
    async def ok(*a: Any) -> int:
        return 1

    first, _ = await with_bar(mixed_graph())
    first.add("late", ok, deps=["bad"])  # skipped before anything starts
    first.add("fresh", ok, deps=["a1"])
    _, alone = await with_bar(first)
    _, fed = await with_bar(first, on_event=lambda e: None)
    assert len(followed) == 2  # the first run's bar and the one alone
    assert last_counts(alone) == last_counts(fed)
    assert last_counts(alone)["skipped"] == 1 and last_counts(alone)["total"] == 2


async def test_a_bar_with_another_listener_takes_every_event(followed):
    seen: list[ag.Event] = []
    _, text = await with_bar(mixed_graph(), on_event=seen.append)
    assert followed == []
    assert sum(e.kind is ag.EventKind.STARTED for e in seen) == 61
    shown = last_counts(text)
    assert shown["done"] == 60 and shown["shown"] == shown["total"] == 63


async def test_a_deadline_is_counted_exactly_and_the_timer_ends(followed):
    clock = DeadlineAtSignal()  # the deadline passes when the four have started
    gate = asyncio.Event()
    began = 0

    async def waits(*a: Any) -> None:
        nonlocal began
        began += 1
        if began == 4:
            clock.passed.set()
        await gate.wait()

    async def quick(*a: Any) -> int:
        return 1

    g = ag.Graph()
    for i in range(4):
        g.add(f"q{i}", quick)
        g.add(f"w{i}", waits, deps=[f"q{i}"])
        g.add(f"x{i}", quick, deps=[f"w{i}"])
    err = io.StringIO()
    options = RunOptions(deadline=clock.DEADLINE, clock=clock, progress="force")
    try:
        with contextlib.redirect_stderr(err):
            out = await start(g, options)
    finally:
        for waiter in clock._waiters:
            waiter.cancel()
    assert {out.status[f"x{i}"] for i in range(4)} == {ag.State.CANCELLED}
    (bar,) = followed
    assert bar.timer is None
    c = bar.counts
    assert (c[ag.EventKind.DONE], c[ag.EventKind.CANCELLED]) == (4, 8)
    shown = last_counts(err.getvalue())
    assert shown["done"] == 4 and shown["cancelled"] == 8 and shown["shown"] == 12


async def test_the_followed_bar_on_a_cancelled_run(followed):
    started = asyncio.Event()

    async def forever(*a: Any) -> None:
        started.set()
        await asyncio.sleep(3600)

    async def quick(*a: Any) -> int:
        return 1

    g = ag.Graph()
    g.add("q", quick)
    g.add("f", forever, deps=["q"])
    g.add("after", quick, deps=["f"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        task = asyncio.get_running_loop().create_task(ag.run(g, progress="force"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    (bar,) = followed
    assert bar.timer is None
    c = bar.counts
    assert (c[ag.EventKind.DONE], c[ag.EventKind.CANCELLED]) == (1, 2)
    shown = last_counts(err.getvalue())
    assert shown["done"] == 1 and shown["cancelled"] == 2 and shown["shown"] == 3


async def test_the_timer_redraws_while_the_run_goes_on(monkeypatch, followed):
    monkeypatch.setattr(_observe, "REDRAW_EVERY", 0.0)  # every loop iteration
    draws: list[int] = []
    real = _Progress.draw

    def draw(self: _Progress, now: float) -> None:
        real(self, now)
        draws.append(self.counts[ag.EventKind.DONE])

    monkeypatch.setattr(_Progress, "draw", draw)
    gate = asyncio.Event()
    hops = 0

    async def slow() -> int:
        nonlocal hops
        while not draws or draws[-1] < 1:  # until a redraw has shown quick done
            hops += 1
            await asyncio.sleep(0)
        gate.set()
        return 1

    async def quick() -> int:
        return 1

    g = ag.Graph()
    g.add("quick", quick)
    g.add("slow", slow)
    out, _ = await with_bar(g)
    assert out.status == {"quick": ag.State.DONE, "slow": ag.State.DONE}
    assert 1 in draws and draws[-1] == 2  # a timer's draw during the run, then the last


def test_watch_offers_its_bar_only_when_it_is_the_only_listener():
    assert Watch("force", None).bar_alone is not None
    assert Watch("force", print).bar_alone is None
    assert Watch("force", None, extra=print).bar_alone is None
    assert Watch(False, None).bar_alone is None
