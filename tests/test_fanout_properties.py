"""A property of fan-out: random graphs with random maps and random failing elements;
after ``reset_failed`` and a rerun, exactly the failed elements and what is below them
ran (every element that did not end done, and the ones a re-expansion creates), and the
results are those of a run where nothing failed."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncgraph as ag
from asyncgraph import State


@dataclass(frozen=True)
class Case:
    lengths: tuple[int, ...]  # each source's list length
    maps: tuple[tuple[str, int], ...]  # ("src", i) or ("map", j < own index)
    extras: tuple[int | None, ...]  # a mapped task's other dependency: a source, or none
    reducers: tuple[tuple[str, ...], ...]  # each reducer's dependencies (names)
    failing: frozenset[str]  # element (or source) names that fail in the first run


@st.composite
def cases(draw: Any) -> Case:
    n_src = draw(st.integers(1, 3))
    lengths = tuple(draw(st.integers(0, 4)) for _ in range(n_src))
    n_map = draw(st.integers(1, 4))
    maps: list[tuple[str, int]] = []
    for j in range(n_map):
        if j and draw(st.booleans()):
            maps.append(("map", draw(st.integers(0, j - 1))))
        else:
            maps.append(("src", draw(st.integers(0, n_src - 1))))
    extras = tuple(draw(st.one_of(st.none(), st.integers(0, n_src - 1))) for _ in maps)
    # Each mapped task's keys: its root source's positions.
    roots = []
    for what, i in maps:
        roots.append(i if what == "src" else roots[i])
    pool = [f"s{i}" for i in range(n_src)] + [f"m{j}" for j in range(n_map)]
    reducers = []
    for k in range(draw(st.integers(1, 3))):
        choices = pool + [f"r{i}" for i in range(k)]
        reducers.append(
            tuple(draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3, unique=True)))
        )
    elements = [f"m{j}[{p}]" for j, r in enumerate(roots) for p in range(lengths[r])]
    sources = [f"s{i}" for i in range(n_src)]
    failing = draw(st.sets(st.sampled_from(elements + sources), max_size=4))
    return Case(lengths, tuple(maps), extras, tuple(reducers), frozenset(failing))


def _mix(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


def build(case: Case, fail: set[str], ran: list[str]) -> ag.Graph:
    g = ag.Graph()
    for i, n in enumerate(case.lengths):

        def src(i: int = i, n: int = n) -> list[int]:
            ran.append(f"s{i}")
            if f"s{i}" in fail:
                raise RuntimeError(f"s{i} fails")
            return [_mix("s", i, p) for p in range(n)]

        g.add(f"s{i}", src, deps=[])
    keys: dict[str, list[str]] = {}
    for j, ((what, i), extra) in enumerate(zip(case.maps, case.extras, strict=True)):
        over = f"s{i}" if what == "src" else f"m{i}"
        deps = [over] + ([f"s{extra}"] if extra is not None and f"s{extra}" != over else [])

        def mapped(item: Any, *rest: Any, j: int = j) -> int:
            # Its element's name: found from the item, as each item is unique per family.
            name = f"m{j}[{ITEM_INDEX[(j, item)]}]"
            ran.append(name)
            if name in fail:
                raise ValueError(f"{name} fails")
            return _mix("m", j, item, rest)

        g.add(f"m{j}", mapped, deps=deps, over=over)
        keys[f"m{j}"] = []
    for k, deps in enumerate(case.reducers):

        def reduce(*inputs: Any, k: int = k) -> int:
            ran.append(f"r{k}")
            return _mix("r", k, inputs)

        g.add(f"r{k}", reduce, deps=list(deps))
    return g


#: (mapped task index, item) -> the item's position: the items of one family are unique
#: (crc32 of distinct tuples), which lets a mapped function name its element.
ITEM_INDEX: dict[tuple[int, Any], int] = {}


def _index_items(case: Case) -> None:
    ITEM_INDEX.clear()
    values: dict[str, list[Any]] = {}
    for i, n in enumerate(case.lengths):
        values[f"s{i}"] = [_mix("s", i, p) for p in range(n)]
    for j, ((what, i), extra) in enumerate(zip(case.maps, case.extras, strict=True)):
        over = f"s{i}" if what == "src" else f"m{i}"
        rest = (values[f"s{extra}"],) if extra is not None and f"s{extra}" != over else ()
        items = values[over]
        for p, item in enumerate(items):
            ITEM_INDEX[(j, item)] = p
        values[f"m{j}"] = [_mix("m", j, item, rest) for item in items]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_reset_failed_reruns_exactly_the_failed_elements_and_their_descendants(
    case: Case,
) -> None:
    _index_items(case)
    fail = set(case.failing)
    ran: list[str] = []
    first = ag.run_sync(build(case, fail, ran))
    templates = {n for n, t in first.tasks.items() if t.over is not None}
    not_done = {n for n, s in first.status.items() if s is not State.DONE and n not in templates}
    if not case.failing:
        assert not not_done
    fail.clear()
    ran.clear()
    second = ag.run_sync(ag.reset_failed(first))
    assert all(s is State.DONE for s in second.status.values()), second.status
    new = set(second.status) - set(first.status)  # elements of families that expand now
    assert len(ran) == len(set(ran))  # nothing ran twice
    assert set(ran) == not_done | new
    clean = ag.run_sync(build(case, set(), []))
    assert dict(second.results) == dict(clean.results)
