"""The stream engine's rules, checked on their own: ranks (dplutils' test_graph_ranking,
from a linear pass instead of all simple paths), split sizes (its test_split_dataframe),
and the order among stages of equal rank (fewest calls, then priority)."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict

import pandas as pd
import pytest

import asyncgraph as ag
from asyncgraph._options import RunOptions
from asyncgraph._stream.engine import Engine
from asyncgraph._stream.frames import split_bounds, take_rows


def _graph(edges: list[tuple[str, str]]) -> ag.Graph:
    parents: dict[str, list[str]] = defaultdict(list)
    names: list[str] = []
    for a, b in edges:
        parents[b].append(a)
        for n in (a, b):
            if n not in names:
                names.append(n)
    g = ag.Graph()
    done: set[str] = set()
    while len(done) < len(names):  # definition order: parents first
        for n in names:
            if n not in done and all(p in done for p in parents[n]):
                g.add_stream(n, lambda batch: batch, inputs=parents[n] or ["source"])
                done.add(n)
    return g


def _ranks(g: ag.Graph) -> dict[str, int]:
    e = Engine(g, lambda: iter(()), RunOptions(), queue_size=2, max_batches=None, start=0,
               mode="drop", max_failed_batches=None)  # fmt: skip
    e._build({})
    return {n: st.rank for n, st in e.stages.items()}


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ([("a", "b"), ("b", "c"), ("c", "d")], {"a": 3, "b": 2, "c": 1, "d": 0}),
        (
            [("a", "b"), ("b", "c"), ("b", "d"), ("d", "e"), ("d", "f"), ("f", "g")],
            {"c": 0, "e": 0, "g": 0, "f": 1, "d": 2, "b": 3, "a": 4},
        ),
        (
            [("a", "c"), ("b", "c"), ("c", "d"), ("c", "e"), ("d", "f"), ("e", "g")],
            {"f": 0, "g": 0, "d": 1, "e": 1, "c": 2, "a": 3, "b": 3},
        ),
    ],
)
def test_rank_is_the_longest_path_to_a_sink(edges, expected):
    assert _ranks(_graph(edges)) == expected


@pytest.mark.parametrize(
    ("rows", "batch_size", "pieces"),
    [(100, 20, 5), (101, 20, 6), (101, 21, 5), (10, 1, 10), (10, 5, 2), (10, 10, 1)],
)
def test_splits_are_the_fewest_pieces_within_one_row(rows, batch_size, pieces):
    bounds = split_bounds(rows, batch_size)
    sizes = [b - a for a, b in itertools.pairwise(bounds)]
    assert len(sizes) == pieces and sum(sizes) == rows
    assert max(sizes) <= batch_size and max(sizes) - min(sizes) <= 1
    df = pd.DataFrame({"a": range(rows)})
    parts = [pd.concat(take_rows([df.iloc[:7], df.iloc[7:]], a, b)) for a, b in
             itertools.pairwise(bounds)]  # fmt: skip
    assert pd.concat(parts)["a"].tolist() == list(range(rows))


async def test_equal_ranks_take_turns_and_priority_breaks_ties():
    order: list[str] = []
    g = ag.Graph()

    @g.stream
    async def first(source):
        return source

    async def sink(batch, name):
        order.append(name)
        await asyncio.sleep(0)

    g.add_stream("low", lambda first: sink(first, "low"), inputs=["first"])
    g.add_stream("high", lambda first: sink(first, "high"), inputs=["first"], priority=5)

    def source():
        for i in range(6):
            yield pd.DataFrame({"id": [i]})

    await ag.run_stream(g, source=source, max_io=1, queue_size=1)
    # One IO slot: the sinks alternate (fewest calls first), the higher priority first.
    assert order[:2] == ["high", "low"]
    assert sorted(order) == ["high"] * 6 + ["low"] * 6
    for k in range(0, 12, 2):
        assert sorted(order[k : k + 2]) == ["high", "low"]
