"""A graph's digests kept by its store, taken by the next load (issue 15, session 17).

A run on an SQLite store keeps its graph's digests in the store (``meta``: the graph
digest, each function's code digest, each task's fingerprint). A load in a new process
takes them instead of hashing every task when the graph digest it computes is the one
kept: the digest covers everything a fingerprint is a function of (each task's name,
dependencies, binding, options that bind; each distinct function's digest, taken again
every time; the fingerprint version; Python's), so the answer is the hashing pass's.

What must hold: the digests a load takes are always those the hashing pass gives for
the graph as it is now, whatever changed since the store's run (a function's body, a
value bound in a partial, a global a helper reads, a dependency, how it binds,
``skip_none``, ``after``, a task's name, a task added or removed): a changed graph is
never taken for the unchanged one. And an unchanged graph takes the kept digests.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncgraph as ag
from asyncgraph import _fingerprint
from asyncgraph._fingerprint import digests
from asyncgraph._store import SQLiteStore
from asyncgraph._store.resume import _known

OFFSET = 1


def add(*xs: int) -> int:
    return sum(xs)


def mul(*xs: int) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def shifted(*xs: int) -> int:
    return sum(xs) + OFFSET  # reads a global: an edit of OFFSET changes its digest


def scale(k: int, *xs: int) -> int:
    return k * sum(xs)


FUNCTIONS: list[Any] = [add, mul, shifted, functools.partial(scale, 2), functools.partial(scale, 3)]


# A graph as data: per task (function index, deps as positions of earlier tasks, by
# keyword or not, skip_none, after); built into a Graph by _build.
Spec = list[tuple[int, list[int], bool, bool, list[int]]]


def _build(spec: Spec, names: list[str] | None = None) -> ag.Graph:
    names = names or [f"t{i}" for i in range(len(spec))]
    g = ag.Graph()
    for i, (fn, deps, by_kw, skip_none, after) in enumerate(spec):
        dep_names = [names[d] for d in deps]
        binding: Any = {f"p{k}": d for k, d in enumerate(dep_names)} if by_kw else dep_names
        f = FUNCTIONS[fn]
        if by_kw and dep_names:
            f = _keywords(f)
        task = g.add(names[i], f, deps=binding, after=[names[a] for a in after] or None)
        if skip_none:
            object.__setattr__(task, "skip_none", True)  # as ag.Graph.add(skip_none=) would
    return g


@functools.cache
def _keywords(f: Any) -> Any:
    def by_keyword(**kw: int) -> int:
        return f(*kw.values())

    return by_keyword


@st.composite
def specs(draw: Any) -> Spec:
    n = draw(st.integers(1, 7))
    out: Spec = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        rest = [j for j in range(i) if j not in deps]
        after = draw(st.lists(st.sampled_from(rest), unique=True, max_size=1)) if rest else []
        out.append(
            (
                draw(st.integers(0, len(FUNCTIONS) - 1)),
                deps,
                draw(st.booleans()),
                draw(st.booleans()) if deps else False,
                after,
            )
        )
    return out


CHANGES = ["nothing", "function", "deps", "order", "keyword", "skip_none", "after", "name"]
CHANGES += ["global", "add", "drop"]


@st.composite
def changed(draw: Any, spec: Spec, what: str) -> tuple[Spec, list[str] | None, int]:
    """``spec`` with ``what`` changed (if it can be), the names, and OFFSET to use."""
    spec = [(f, list(d), k, s, list(a)) for f, d, k, s, a in spec]
    names = None
    offset = OFFSET
    i = draw(st.integers(0, len(spec) - 1))
    fn, deps, by_kw, skip_none, after = spec[i]
    if what == "function":
        spec[i] = ((fn + draw(st.integers(1, len(FUNCTIONS) - 1))) % len(FUNCTIONS), *spec[i][1:])
    elif what == "deps" and i:
        new = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3))
        spec[i] = (fn, new, by_kw, False, [a for a in after if a not in new])
    elif what == "order" and len(deps) > 1:
        spec[i] = (fn, deps[::-1], by_kw, skip_none, after)
    elif what == "keyword" and deps:
        spec[i] = (fn, deps, not by_kw, skip_none, after)
    elif what == "skip_none" and deps:
        spec[i] = (fn, deps, by_kw, not skip_none, after)
    elif what == "after" and i:
        others = [j for j in range(i) if j not in deps][:1]
        spec[i] = (fn, deps, by_kw, skip_none, [] if after else others)
    elif what == "name":
        names = [f"t{j}" for j in range(len(spec))]
        names[i] = f"renamed{i}"
    elif what == "global":
        offset = OFFSET + 1
    elif what == "add":
        spec.append((0, [len(spec) - 1], False, False, []))
    elif what == "drop" and len(spec) > 1:
        spec.pop()
    return spec, names, offset


def _kept(db: Path) -> Any:
    return _known(SQLiteStore(db))


@pytest.mark.parametrize("what", CHANGES)
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_load_takes_exactly_what_hashing_gives(
    tmp_path_factory: Any, data: Any, what: str
) -> None:
    global OFFSET
    spec = data.draw(specs())
    db = tmp_path_factory.mktemp("digests") / "s.db"
    ag.run_sync(_build(spec), store=db)
    new_spec, names, offset = data.draw(changed(spec, what))
    OFFSET, before = offset, OFFSET
    try:
        taken = digests(_build(new_spec, names), _kept(db))  # a new graph: a new Dag
        hashed = digests(_build(new_spec, names))
    finally:
        OFFSET = before
    assert list(taken.items()) == list(hashed.items())


def test_an_unchanged_graph_takes_the_kept_digests(tmp_path: Path, monkeypatch: Any) -> None:
    spec: Spec = [(0, [], False, False, []), (1, [0], True, False, [])]
    spec.append((2, [0, 1], False, True, []))
    db = tmp_path / "s.db"
    ag.run_sync(_build(spec), store=db)
    taken: list[bool] = []
    real = _fingerprint._from_known

    def spy(*args: Any) -> Any:
        out = real(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(_fingerprint, "_from_known", spy)
    g = _build(spec)
    loaded = ag.load(g, db)
    assert taken == [True]
    assert digests(loaded) == digests(_build(spec))
    assert all(s == "done" for s in ag.plan(g, db)["last_status"])


@pytest.mark.parametrize("edit", ["global", "partial"])
def test_a_changed_function_is_not_taken(tmp_path: Path, monkeypatch: Any, edit: str) -> None:
    """The graph digest is taken with every function digested again: a global a task
    reads, or a value a partial binds, edited between the run and the load."""
    global OFFSET
    spec: Spec = [(0, [], False, False, []), (2 if edit == "global" else 3, [0], False, False, [])]
    db = tmp_path / "s.db"
    ag.run_sync(_build(spec), store=db)
    taken: list[bool] = []
    real = _fingerprint._from_known
    monkeypatch.setattr(
        _fingerprint, "_from_known", lambda *a: taken.append(True) or real(*a)
    )
    before, saved = OFFSET, FUNCTIONS[3]
    if edit == "global":
        OFFSET = 5
    else:
        FUNCTIONS[3] = functools.partial(scale, 7)
    try:
        g = _build(spec)
        loaded = ag.load(g, db)
        assert ag.plan(g, db).set_index("name")["action"].to_dict() == {"t0": "reuse", "t1": "run"}
        assert loaded.status["t1"] is ag.State.PENDING
        assert digests(loaded) == digests(_build(spec))
    finally:
        OFFSET, FUNCTIONS[3] = before, saved
    assert taken


def test_the_store_keeps_one_graphs_digests_and_reads_them_safely(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    spec: Spec = [(0, [], False, False, []), (1, [0], False, False, [])]
    ag.run_sync(_build(spec), store=db)
    kept = SQLiteStore(db).known_digests()
    assert kept is not None
    graph, codes, uses, fps = kept
    assert len(fps) == 16 * 2 and len(graph) == 64 and len(codes) == 2 and len(uses) == 2 * 4
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT value FROM meta WHERE key = 'graph'").fetchone() == (graph,)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'digests'", (b"not a pickle",))
        conn.commit()
    finally:
        conn.close()
    assert SQLiteStore(db).known_digests() is None  # unreadable: none, so hash every task
    assert ag.load(_build(spec), db).status["t1"] is ag.State.DONE
