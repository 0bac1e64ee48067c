"""``reset=`` on a durable stream: done source batches sent back to be computed again.

The recovery unit is the source batch, and every source batch goes through every stage,
so naming a stage (or a plain task the stages use, which then runs again too) sends every
done batch back; source batch ids send only those. Each is computed again exactly once
(call counters per stage and batch), its files are replaced (each row once in ``out/``),
and the reset is durable before anything is computed: a stream that stops first leaves
them to the next one, which computes them even without ``reset=``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import asyncgraph as ag
from asyncgraph._stream.store import read_batches

N = 10


def source(start: int = 0):
    for i in range(start, N):
        yield pd.DataFrame({"id": [i, i], "row": [0, 1]})


class Calls:
    """The calls the stages and the plain task made, logged to a side file: a counter
    in a closure would be part of the stages' fingerprint, and change it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def clear(self) -> None:
        self.path.write_text("")

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def __getitem__(self, name: str) -> int:
        return self.lines().count(name)

    def __bool__(self) -> bool:
        return bool(self.lines())


def graph(calls: Calls) -> ag.Graph:
    log = str(calls.path)
    g = ag.Graph()

    def note(what: str) -> None:
        with open(log, "a") as f:
            f.write(what + "\n")

    @g.task
    def model() -> int:
        note("model")
        return 2

    @g.stream
    async def fetch(source):
        note(f"fetch {int(source['id'].iloc[0])}")
        return source

    @g.stream
    async def score(fetch, model):
        note(f"score {int(fetch['id'].iloc[0])}")
        return fetch.assign(score=fetch["id"] * model)

    @g.stream
    async def publish(score):
        note(f"publish {int(score['id'].iloc[0])}")
        return score

    return g


def computed(calls: Calls, stage: str = "publish") -> list[int]:
    return sorted(int(line.split()[1]) for line in calls.lines() if line.startswith(stage + " "))


def rows_in(out: Path) -> pd.DataFrame:
    data = pd.concat([pd.read_parquet(f) for f in sorted(out.rglob("*.parquet"))])
    assert not data.duplicated(["id", "row"]).any()  # each row once
    return data


@pytest.fixture
def done_stream(tmp_path):
    calls = Calls(tmp_path / "calls.log")
    out, store = tmp_path / "out", tmp_path / "s.db"
    r = ag.run_stream_sync(graph(calls), source=source, out=out, store=store)
    assert (r.done, r.skipped) == (N, 0)
    return calls, out, store


def test_naming_a_stage_computes_every_done_batch_again_exactly_once(done_stream):
    calls, out, store = done_stream
    files = sorted(out.rglob("*.parquet"))
    calls.clear()
    g = graph(calls)
    assert ag.plan_stream(g, store=store, reset="score") == (0, 0, 0, 0, N)
    assert "reset: 10 done batches will be recomputed" in str(
        ag.plan_stream(g, store=store, reset="score")
    )
    r = ag.run_stream_sync(g, source=source, out=out, store=store, reset="score")
    assert (r.done, r.skipped, r.failed) == (N, 0, 0)
    for stage in ("fetch", "score", "publish"):  # upstream too: batches are not stored
        assert computed(calls, stage) == list(range(N))  # each once
    assert calls["model"] == 0  # a plain task not named is reused from the store
    assert sorted(out.rglob("*.parquet")) == files  # the same names: replaced
    assert sorted(rows_in(out)["id"].unique()) == list(range(N))
    # and then it is done again: the next stream skips everything
    calls.clear()
    r = ag.run_stream_sync(graph(calls), source=source, out=out, store=store)
    assert (r.done, r.skipped) == (0, N) and not calls


def test_naming_source_batch_ids_computes_only_those(done_stream):
    calls, out, store = done_stream
    calls.clear()
    g = graph(calls)
    assert ag.plan_stream(g, store=store, reset=[3, 7]) == (N - 2, 0, 0, 0, 2)
    r = ag.run_stream_sync(g, source=source, out=out, store=store, reset=[3, 7])
    assert (r.done, r.skipped) == (2, N - 2)
    assert computed(calls) == computed(calls, "fetch") == [3, 7]
    assert sorted(rows_in(out)["id"].unique()) == list(range(N))
    assert {sid for sid, (st, *_) in read_batches(store).items() if st == "done"} == set(range(N))


def test_a_single_id_a_task_and_ids_not_done_are_taken(done_stream):
    calls, out, store = done_stream
    calls.clear()
    g = graph(calls)
    r = ag.run_stream_sync(g, source=source, out=out, store=store, reset=[5, 99])
    assert computed(calls) == [5] and r.done == 1  # 99 was never a batch: nothing to do
    calls.clear()
    r = ag.run_stream_sync(g, source=source, out=out, store=store, reset=g.tasks["publish"])
    assert computed(calls) == list(range(N))


def test_naming_a_plain_task_runs_it_again_and_every_batch_that_used_it(done_stream):
    calls, out, store = done_stream
    calls.clear()
    r = ag.run_stream_sync(graph(calls), source=source, out=out, store=store, reset="model")
    assert calls["model"] == 1
    assert computed(calls) == list(range(N))
    assert r.done == N


def test_the_reset_is_durable_before_anything_is_computed_again(done_stream):
    calls, out, store = done_stream
    calls.clear()
    g = graph(calls)
    # The stream stops before reading a batch (as after a crash): 3 and 7 stay reset,
    # and their old files are gone, so no reader mixes them with new ones.
    r = ag.run_stream_sync(g, source=source, out=out, store=store, reset=[3, 7], max_batches=0)
    assert r.done == 0 and not calls
    status = {sid: st for sid, (st, *_) in read_batches(store).items()}
    assert status[3] == status[7] == "reset"
    assert sorted(rows_in(out)["id"].unique()) == [i for i in range(N) if i not in (3, 7)]
    assert ag.plan_stream(g, store=store) == (N - 2, 0, 0, 0, 2)
    # the next stream computes them without being told again, once each
    r = ag.run_stream_sync(g, source=source, out=out, store=store)
    assert computed(calls) == [3, 7] and r.done == 2
    assert sorted(rows_in(out)["id"].unique()) == list(range(N))


def test_bad_reset_names_what_is_wrong_and_changes_nothing(done_stream, tmp_path):
    calls, out, store = done_stream
    calls.clear()
    before = read_batches(store)
    g = graph(calls)
    with pytest.raises(ag.UnknownTaskError, match=r"reset=: unknown task name\(s\): 'scor'"):
        ag.run_stream_sync(g, source=source, out=out, store=store, reset=["scor"])
    with pytest.raises(TypeError, match="reset= lists task names .* not float 1.5"):
        ag.run_stream_sync(g, source=source, out=out, store=store, reset=[1.5])
    with pytest.raises(TypeError, match="reset= takes a task name"):
        ag.run_stream_sync(g, source=source, out=out, store=store, reset={"score": [1]})
    with pytest.raises(TypeError, match="not bool True"):
        ag.run_stream_sync(g, source=source, out=out, store=store, reset=[True])
    with pytest.raises(ValueError, match=">= 0, not -1"):
        ag.run_stream_sync(g, source=source, out=out, store=store, reset=-1)
    with pytest.raises(ValueError, match="no store=.*pass store=, or drop reset="):
        ag.run_stream_sync(g, source=source, reset="score")
    with pytest.raises(ag.UnknownTaskError):
        ag.plan_stream(g, store=store, reset="nope")
    assert read_batches(store) == before and not calls


def merged_graph() -> ag.Graph:
    g = ag.Graph()

    @g.stream(batch_size=3)  # 2-row batches merged by two, then split: files shared
    async def pair(source):
        return source

    return g


def test_a_batch_merged_with_others_goes_back_with_them(tmp_path):
    # Batches 0 and 1 were merged ("0+1"), so their rows are in the same files: resetting
    # 1 alone would leave 0's files holding 1's rows beside the new ones.
    out, store = tmp_path / "out", tmp_path / "s.db"
    g = merged_graph()
    r = ag.run_stream_sync(g, source=source, out=out, store=store)
    assert r.done == N and any("0+1" in f for f in r.files)
    assert ag.plan_stream(g, store=store, reset=1) == (N - 2, 0, 0, 0, 2)
    r = ag.run_stream_sync(g, source=source, out=out, store=store, reset=1)
    assert (r.done, r.skipped) == (2, N - 2)
    data = rows_in(out)  # each row once
    assert len(data) == 2 * N and sorted(data["id"].unique()) == list(range(N))


def test_a_lost_file_of_a_merge_makes_every_batch_in_it_stale(tmp_path):
    out, store = tmp_path / "out", tmp_path / "s.db"
    g = merged_graph()
    ag.run_stream_sync(g, source=source, out=out, store=store)
    [lost] = [p for p in out.rglob("*.parquet") if p.name.startswith("part-2+3.0")]
    lost.unlink()
    assert ag.plan_stream(g, store=store) == (N - 2, 2, 0, 0, 0)
    r = ag.run_stream_sync(g, source=source, out=out, store=store)
    assert (r.done, r.skipped) == (2, N - 2)
    data = rows_in(out)
    assert len(data) == 2 * N and sorted(data["id"].unique()) == list(range(N))
