"""The bad-input matrix: every public function, every parameter, every kind of bad input.

Each row: what is wrong, who raises, the call, the exact error class, and a piece of the
message that names the offending thing (task, parameter, file). The same rows, in the
same order, make the table in docs/reliability.md (kept in sync by hand). Nothing may
run or be written before the error: rows on stores check that the file is unchanged.

The command line's bad inputs are in tests/test_cli.py (a file that is not a store, a
truncated store, another graph's store, unknown task names, a target that is not a
graph, an import that fails, usage errors, a held store).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from store_rows import rewrite

import asyncgraph as ag

RAN: list[str] = []  # what any task of these graphs ran: must stay empty


def one(x: int) -> int:
    RAN.append("one")
    return x


def two(a: int, b: int) -> int:
    RAN.append("two")
    return a + b


async def leaf() -> int:
    RAN.append("leaf")
    return 1


def graph() -> ag.Graph:
    """leaf -> one"""
    g = ag.Graph()
    g.add("leaf", leaf)
    g.add("one", one, deps=["leaf"])
    return g


def cycle() -> ag.Graph:
    g = ag.Graph()
    g.add("a", one, deps=["b"])
    g.add("b", one, deps=["a"])
    return g


def missing() -> ag.Graph:
    g = ag.Graph()
    g.add("a", one, deps=["ghost"])
    return g


def needs_a_limit() -> ag.Graph:
    g = ag.Graph()
    g.add("a", leaf, resources=["db"])
    return g


def unpicklable_cpu() -> ag.Graph:
    lock = threading.Lock()
    g = ag.Graph()
    g.add("holds_lock", lambda: lock.locked(), kind="cpu")
    return g


def add(**options: Any) -> Callable[[Path], Any]:
    """``Graph.add("x", ...)`` on a graph holding ``leaf``; ``fn`` defaults to ``one``."""
    fn = options.pop("fn", one)
    name = options.pop("name", "x")
    return lambda tmp: graph().add(name, fn, **options)


def decorate(**options: Any) -> Callable[[Path], Any]:
    def call(tmp: Path) -> Any:
        def x(leaf: int) -> int:
            return leaf

        return graph().task(**options)(x)

    return call


def run(g: Callable[[], Any] = graph, **options: Any) -> Callable[[Path], Any]:
    return lambda tmp: asyncio.run(ag.run(g(), **options))


def run_sync(g: Callable[[], Any] = graph, **options: Any) -> Callable[[Path], Any]:
    return lambda tmp: ag.run_sync(g(), **options)


def open_run(g: Callable[[], Any] = graph, **options: Any) -> Callable[[Path], Any]:
    async def enter() -> None:
        async with ag.open_run(g(), **options) as r:
            await r.wait()

    return lambda tmp: asyncio.run(enter())


# -- stores ------------------------------------------------------------------------------


def a_store(tmp: Path) -> Path:
    db = tmp / "good.db"
    if not db.exists():
        ag.run_sync(graph(), store=db)
        RAN.clear()
    return db


def not_a_store(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("not a database\n" * 100)
    return path


def other_sqlite(tmp: Path) -> Path:
    path = tmp / "users.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER)")
    conn.close()
    return path


def truncated(tmp: Path) -> Path:
    db = tmp / "truncated.db"
    g = ag.Graph()
    for i in range(200):
        g.add(f"t{i}", lambda i=i: "x" * 500 + str(i))
    ag.run_sync(g, store=db)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    return db


def corrupted(tmp: Path) -> Path:
    """A store whose first page (the SQLite header and the schema) is overwritten."""
    db = a_store(tmp)
    data = bytearray(db.read_bytes())
    data[16:116] = b"\xff" * 100
    bad = tmp / "corrupted.db"
    bad.write_bytes(bytes(data))
    return bad


def bad_status(tmp: Path) -> Path:
    """A store whose state table holds a status no asyncgraph writes."""
    db = a_store(tmp)
    bad = tmp / "bad-status.db"
    bad.write_bytes(db.read_bytes())
    rewrite(bad, "one", status="bogus")  # schema 2: the record inside its batch's row
    return bad


def another_graphs(tmp: Path) -> Path:
    db = tmp / "other.db"
    g = ag.Graph()
    g.add("alpha", lambda: 1)
    ag.run_sync(g, store=db)
    return db


def a_directory(tmp: Path) -> Path:
    return tmp


def on_store(make: Callable[[Path], Path], call: Callable[[Path], Any]) -> Callable[[Path], Any]:
    """Call ``call(store)`` and check that the store file was not changed."""

    def checked(tmp: Path) -> Any:
        path = make(tmp)
        before = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        try:
            return call(path)
        finally:
            after = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            assert before == after, f"{path} was changed"

    return checked


# -- the matrix ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    bad: str  # what is wrong, in words (the docs table's first column)
    by: str  # the function that raises
    call: Callable[[Path], Any]
    error: type[BaseException]
    names: str  # must be in the message: the offending task, parameter or file


ROWS = [
    # Graph definitions
    Row("a cycle", "run", run(cycle), ag.CycleError, "a -> b -> a"),
    Row("a cycle", "validate", lambda t: cycle().validate(), ag.CycleError, "a -> b -> a"),
    Row("a cycle", "create_graph", lambda t: ag.create_graph(
        {"a": one, "b": one}, {"a": ["b"], "b": ["a"]}), ag.CycleError, "a -> b -> a"),
    Row("a self-loop", "add", add(deps=["x"]), ag.CycleError, "x -> x"),
    Row("a missing dependency", "run", run(missing), ag.MissingDependencyError, "'ghost'"),
    Row("a missing dependency", "validate", lambda t: missing().validate(),
        ag.MissingDependencyError, "task 'a' depends on 'ghost'"),
    Row("a missing dependency", "create_graph", lambda t: ag.create_graph(
        {"a": one}, {"a": ["ghost"]}), ag.MissingDependencyError, "'ghost'"),
    Row("a duplicate name", "add", add(name="leaf", fn=leaf), ag.DuplicateTaskError, "'leaf'"),
    Row("a duplicate name", "@task", lambda t: graph().task(name="leaf")(leaf),
        ag.DuplicateTaskError, "'leaf'"),
    Row("a non-callable", "add", add(fn=3), ag.InvalidTaskError, "task 'x'"),
    Row("a non-callable", "create_graph", lambda t: ag.create_graph({"a": 3}, {"a": []}),
        ag.InvalidTaskError, "task 'a'"),
    Row("a non-callable", "@task", lambda t: graph().task(3), TypeError, "cannot name a task"),
    Row("a signature mismatch", "add", add(fn=two, deps=["leaf"]), ag.SignatureError,
        "task 'x'"),
    Row("a signature mismatch (keyword)", "add", add(deps={"y": "leaf"}), ag.SignatureError,
        "task 'x'"),
    Row("an unknown kind", "add", add(kind="gpu"), ag.InvalidTaskError, "unknown kind 'gpu'"),
    Row("an unknown kind", "@task", decorate(kind="gpu"), ag.InvalidTaskError, "task 'x'"),
    Row("negative retries", "add", add(retries=-1), ag.InvalidTaskError, "retries"),
    Row("retries not an int", "add", add(retries="2"), ag.InvalidTaskError, "retries"),
    Row("a negative timeout", "add", add(timeout=-1), ag.InvalidTaskError, "timeout"),
    Row("a NaN timeout", "add", add(timeout=float("nan")), ag.InvalidTaskError, "timeout"),
    Row("a negative retry_delay", "add", add(retry_delay=-1), ag.InvalidTaskError,
        "retry_delay"),
    Row("priority not an int", "add", add(priority=1.5), ag.InvalidTaskError, "priority"),
    Row("an empty name", "add", add(name=""), ag.InvalidTaskError, "task ''"),
    Row("a name that is not a string", "add", add(name=3), ag.InvalidTaskError, "task '3'"),
    Row("deps a string", "add", add(deps="leaf"), ag.InvalidTaskError, "deps"),
    Row("deps holding a non-string", "add", add(deps=[1]), ag.InvalidTaskError, "deps"),
    Row("a dependency twice in deps", "add", add(fn=two, deps=["leaf", "leaf"]),
        ag.InvalidTaskError, "deps lists ['leaf']"),
    Row("resources a string", "add", add(resources="db"), ag.InvalidTaskError, "resources"),
    Row("a resource twice", "add", add(resources=["db", "db"]), ag.InvalidTaskError,
        "resources lists ['db']"),
    Row("a lambda without a name", "@task", lambda t: graph().task(lambda: 1), TypeError,
        "pass name="),
    Row("funcs not a dict", "create_graph", lambda t: ag.create_graph([one], {}), TypeError,
        "funcs"),
    Row("dependencies not a dict", "create_graph", lambda t: ag.create_graph({"a": one}, []),
        TypeError, "dependencies"),
    Row("a dependencies value that is a string", "create_graph", lambda t: ag.create_graph(
        {"a": leaf, "b": one}, {"b": "a"}), ag.InvalidTaskError, "dependencies['b']"),
    Row("io_bound a single string", "create_graph", lambda t: ag.create_graph(
        {"a": leaf}, {}, io_bound="a"), TypeError, "io_bound"),
    Row("unknown names in io_bound", "create_graph", lambda t: ag.create_graph(
        {"a": leaf}, {}, io_bound=["ghost"]), ag.UnknownTaskError, "'ghost'"),
    Row("unknown names in done", "create_graph", lambda t: ag.create_graph(
        {"a": leaf}, {}, done=["ghost"]), ag.UnknownTaskError, "'ghost'"),
    Row("results not a dict", "create_graph", lambda t: ag.create_graph(
        {"a": leaf}, {}, done=["a"], results=[1]), TypeError, "results"),
    # Run options
    Row("not a Graph", "run", lambda t: asyncio.run(ag.run({})), TypeError, "run() needs"),
    Row("not a Graph", "run_sync", lambda t: ag.run_sync({}), TypeError, "run() needs"),
    Row("not a Graph", "open_run", open_run(dict), TypeError, "run() needs"),
    Row("max_io < 1", "run", run(max_io=0), ValueError, "max_io"),
    Row("max_io negative", "run_sync", run_sync(max_io=-1), ValueError, "max_io"),
    Row("max_io not an int", "run", run(max_io="4"), TypeError, "max_io"),
    Row("max_io < 1", "open_run", open_run(max_io=0), ValueError, "max_io"),
    Row("cpu_workers < 1", "run", run(cpu_workers=0), ValueError, "cpu_workers"),
    Row("cpu_workers not an int", "run_sync", run_sync(cpu_workers=1.5), TypeError,
        "cpu_workers"),
    Row("a negative limit", "run", run(limits={"db": -1}), ValueError, "limits['db']"),
    Row("a limit not an int", "run", run(limits={"db": "2"}), TypeError, "limits['db']"),
    Row("a limit key not a string", "run", run(limits={1: 2}), TypeError, "limits keys"),
    Row("limits not a mapping", "run", run(limits=[("db", 1)]), TypeError, "limits"),
    Row("a resource without a limit", "run", run(needs_a_limit), ag.GraphError,
        "task 'a' declares resource 'db'"),
    Row("fail_fast not a bool", "run", run(fail_fast=1), TypeError, "fail_fast"),
    Row("deadline 0", "run", run(deadline=0), ValueError, "deadline"),
    Row("deadline negative", "run_sync", run_sync(deadline=-1), ValueError, "deadline"),
    Row("deadline infinite", "run", run(deadline=float("inf")), ValueError, "deadline"),
    Row("deadline not a number", "run", run(deadline="1"), TypeError, "deadline"),
    Row("progress a wrong string", "run", run(progress="yes"), ValueError, "progress"),
    Row("progress a wrong type", "run_sync", run_sync(progress=2), TypeError, "progress"),
    Row("on_event not callable", "run", run(on_event="print"), TypeError, "on_event"),
    Row("on_event not callable", "open_run", open_run(on_event="print"), TypeError,
        "on_event"),
    Row("store not a path or Store", "run", run(store=3), TypeError, "store"),
    Row("an unknown option", "run_sync", run_sync(bogus=1), TypeError, "'bogus'"),
    Row("a CPU function that cannot be pickled", "run", run(unpicklable_cpu, cpu_workers=1),
        ag.PicklingError, "task 'holds_lock'"),
    # Rewrites and queries
    *[
        Row("unknown names", rw, lambda t, rw=rw: getattr(ag, rw)(graph(), ["ghost"]),
            ag.UnknownTaskError, f"{rw}: unknown task name(s): 'ghost'")
        for rw in ("reset", "mark_done", "mark_done_except", "subgraph")
    ],
    *[
        Row("names not a name or a list", rw, lambda t, rw=rw: getattr(ag, rw)(graph(), 3),
            TypeError, f"{rw}: expected a task name")
        for rw in ("reset", "mark_done", "mark_done_except", "subgraph")
    ],
    *[
        Row("not a Graph", rw, lambda t, rw=rw: getattr(ag, rw)({}, ["a"]), TypeError,
            f"{rw}() needs an asyncgraph.Graph")
        for rw in ("reset", "mark_done", "mark_done_except", "subgraph")
    ],
    Row("not a Graph", "reset_failed", lambda t: ag.reset_failed({}), TypeError,
        "reset_failed() needs"),
    Row("unknown names in results", "mark_done", lambda t: ag.mark_done(
        graph(), ["leaf"], {"ghost": 1}), ag.UnknownTaskError, "'ghost'"),
    Row("results for names not marked", "mark_done", lambda t: ag.mark_done(
        graph(), ["leaf"], {"one": 1}), ValueError, "results given for ['one']"),
    Row("results not a dict", "mark_done", lambda t: ag.mark_done(graph(), ["leaf"], [1]),
        TypeError, "mark_done: results"),
    *[
        Row("an unknown name", q, lambda t, q=q: getattr(graph(), q)("ghost"),
            ag.UnknownTaskError, "'ghost'")
        for q in ("ancestors", "descendants", "dependencies", "children")
    ],
    Row("an unknown name", "tasks[...]", lambda t: graph().tasks["ghost"], ag.UnknownTaskError,
        "'ghost'"),
    # Stores
    *[
        Row(what, by, on_store(make, call), err, needle)
        for what, make, err, needle in [
            ("a file that is not a store", not_a_store, ag.StoreError, "notes.txt"),
            ("an SQLite file that is not a store", other_sqlite, ag.StoreError, "users.db"),
            ("a truncated store", truncated, ag.StoreError, "truncated.db"),
            ("a corrupted store (first page)", corrupted, ag.StoreError, "corrupted.db"),
            ("a store with an unknown status", bad_status, ag.StoreError, "bad-status.db"),
            ("a directory", a_directory, ag.StoreError, "is a directory"),
        ]
        for by, call in [
            ("load", lambda p: ag.load(graph(), p)),
            ("plan", lambda p: ag.plan(graph(), p)),
            ("run", lambda p: ag.run_sync(graph(), store=p)),
        ]
    ],
    *[
        Row(what, "history", on_store(make, ag.history), ag.StoreError, needle)
        for what, make, needle in [
            ("a file that is not a store", not_a_store, "notes.txt"),
            ("a truncated store", truncated, "truncated.db"),
            ("a corrupted store (first page)", corrupted, "corrupted.db"),
        ]
    ],
    *[
        Row("another graph's store", by, on_store(another_graphs, call), ag.StoreMismatchError,
            "only in the store: 'alpha'")
        for by, call in [
            ("load", lambda p: ag.load(graph(), p)),
            ("plan", lambda p: ag.plan(graph(), p)),
            ("run", lambda p: ag.run_sync(graph(), store=p)),
        ]
    ],
    Row("not a Graph", "load", lambda t: ag.load({}, a_store(t)), TypeError, "load() needs"),
    Row("not a Graph", "plan", lambda t: ag.plan({}, a_store(t)), TypeError, "plan() needs"),
    Row("store not a path or Store", "load", lambda t: ag.load(graph(), 3), TypeError, "store"),
    Row("store not a path or Store", "plan", lambda t: ag.plan(graph(), None), TypeError,
        "store"),
    Row("store not a path or Store", "history", lambda t: ag.history(3.5), TypeError, "store"),
    Row("force not a bool", "load", lambda t: ag.load(graph(), a_store(t), force="yes"),
        TypeError, "force"),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.by}: {r.bad}" for r in ROWS])
def test_bad_input(row: Row, tmp_path: Path) -> None:
    RAN.clear()
    with pytest.raises(BaseException) as caught:  # the exact class is checked below
        row.call(tmp_path)
    assert type(caught.value) is row.error, repr(caught.value)
    assert row.names in str(caught.value), str(caught.value)
    assert RAN == [], f"tasks ran before the error: {RAN}"
