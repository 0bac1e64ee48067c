"""Issue 10, checked again from outside: kin of the faults that the first fixes missed.

Each case was found by trying the fixed library as a new user would, with variants of the
issue's own items: an exception whose ``str()`` raises from an IO task (item 20 covered
CPU tasks only), error texts a store row cannot hold (item 3 covered results only), a task
name SQLite cannot store, ``deps`` given as a set (item 24's class: bad ``deps`` silently
misread), and a store file that was removed under a loaded graph (item 19's wording).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import asyncgraph as ag
from asyncgraph import SQLiteStore


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str is broken")


def _raise_bad_str() -> None:
    raise BadStr()


async def _araise_bad_str() -> None:
    raise BadStr()


@pytest.mark.parametrize("fn", [_raise_bad_str, _araise_bad_str], ids=["thread", "coroutine"])
@pytest.mark.parametrize("on_store", [False, True], ids=["no_store", "store"])
async def test_an_io_task_whose_exception_cannot_be_printed_fails_alone(
    tmp_path: Path, fn: object, on_store: bool
) -> None:
    g = ag.Graph()
    g.add("other", lambda: 7)
    g.add("bad", fn)  # type: ignore[arg-type]
    g.add("after_bad", lambda bad: bad)
    db = tmp_path / "s.db"
    out = await ag.run(g, store=db if on_store else None)
    assert {n: s.value for n, s in out.status.items()} == {
        "other": "done",
        "bad": "failed",
        "after_bad": "skipped",
    }
    error = out.errors["bad"]
    assert isinstance(error, ag.RemoteError)
    assert error.type_name.endswith("BadStr")
    assert error.message == "<str() raised RuntimeError>"
    assert isinstance(error.__cause__, BadStr)  # the task's own exception is kept
    frame = out.to_frame().set_index("name")
    assert frame.loc["bad", "error"].endswith("BadStr: <str() raised RuntimeError>")
    if on_store:
        stored = ag.load(g, db)
        assert stored.status["bad"] is ag.State.FAILED
        assert "<str() raised RuntimeError>" in str(stored.errors["bad"])
        assert ag.history(db)[["status", "done", "failed"]].values.tolist() == [["failed", 1, 1]]


NOT_UTF8 = os.fsdecode(b"/data/\xff.csv")  # '/data/\udcff.csv': what a non-UTF-8 name gives


def _open_bad_name() -> None:
    with open(NOT_UTF8):
        pass


async def _parse_bad_name() -> None:
    raise ValueError(f"cannot parse {NOT_UTF8}")


def _cpu_parse_bad_name() -> None:
    raise ValueError(f"cannot parse {NOT_UTF8}")


@pytest.mark.parametrize(
    ("fn", "kind"),
    [(_open_bad_name, "io"), (_parse_bad_name, "io"), (_cpu_parse_bad_name, "cpu")],
    ids=["thread", "coroutine", "cpu"],
)
async def test_an_error_text_sqlite_cannot_encode_fails_only_its_task(
    tmp_path: Path, fn: object, kind: str
) -> None:
    g = ag.Graph()
    g.add("ok", lambda: 1)
    g.add("bad", fn, kind=kind)  # type: ignore[arg-type]
    g.add("after_ok", lambda ok: ok + 1)
    db = tmp_path / "s.db"
    out = await ag.run(g, store=db, cpu_workers=1)
    assert out.status["bad"] is ag.State.FAILED and out.results["after_ok"] == 2
    stored = ag.load(g, db)
    assert {n: s.value for n, s in stored.status.items()} == {
        "ok": "done",
        "bad": "failed",
        "after_ok": "done",
    }
    assert "\\udcff.csv" in str(stored.errors["bad"])  # escaped, not lost


ROW_LIMIT = 1_000_000


class SmallRows(SQLiteStore):
    """Rows of at most ROW_LIMIT bytes: the stand-in for SQLite's default 10**9."""

    def begin_run(self) -> int:
        run_id = super().begin_run()
        assert self._conn is not None
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, ROW_LIMIT)
        return run_id

    def result_size_limit(self) -> int:
        return ROW_LIMIT


def _huge_error() -> None:
    raise ValueError("e" * (ROW_LIMIT + 10))


async def test_an_error_too_big_for_a_row_is_cut_and_fails_only_its_task(tmp_path: Path) -> None:
    from asyncgraph._runner import MAX_ERROR_TEXT

    g = ag.Graph()
    g.add("small", lambda: 1)
    g.add("huge_error", _huge_error)
    g.add("after_small", lambda small: small + 1)
    db = tmp_path / "s.db"
    out = await ag.run(g, store=SmallRows(db))
    assert out.status["huge_error"] is ag.State.FAILED and out.results["after_small"] == 2
    assert len(str(out.errors["huge_error"])) == ROW_LIMIT + 10  # in memory: whole
    stored = ag.load(g, db)
    assert stored.status["after_small"] is ag.State.DONE
    message = stored.errors["huge_error"].message
    assert message.startswith("e" * MAX_ERROR_TEXT)
    assert message.endswith(f"... [{ROW_LIMIT + 10 - MAX_ERROR_TEXT:,} more characters not stored]")
    assert ag.history(db)[["status", "done", "failed"]].values.tolist() == [["failed", 2, 1]]


def test_a_task_name_that_utf8_cannot_encode_is_refused_at_add() -> None:
    g = ag.Graph()
    name = "load_" + os.fsdecode(b"\xff")
    with pytest.raises(ag.InvalidTaskError, match="lone surrogate") as info:
        g.add(name, lambda: 1)
    assert "\\udcff" in str(info.value)  # named, escaped
    assert name not in g


def _minus(x: int, y: int) -> int:
    return x - y


@pytest.mark.parametrize("kind", [set, frozenset])
def test_positional_deps_given_as_a_set_are_refused(kind: type) -> None:
    g = ag.Graph()
    g.add("big", lambda: 10)
    g.add("small", lambda: 3)
    with pytest.raises(ag.InvalidTaskError, match="has no order") as info:
        g.add("diff", _minus, deps=kind({"big", "small"}))
    assert "'diff'" in str(info.value) and "pass a list" in str(info.value)
    assert "diff" not in g
    g.add("one", lambda x: x, deps={"big"})  # one element: its order is its own


def test_the_same_positional_deps_in_every_process() -> None:
    """What a set made vary: the same graph gives the same call under any hash seed."""
    code = (
        "import asyncgraph as ag\n"
        "g = ag.Graph(); g.add('big', lambda: 10); g.add('small', lambda: 3)\n"
        "g.add('diff', lambda x, y: x - y, deps=['big', 'small'])\n"
        "print(ag.run_sync(g).results['diff'])\n"
    )
    seen = set()
    for seed in range(3):
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        seen.add(proc.stdout.strip())
    assert seen == {"7"}


async def test_a_removed_store_is_named_as_removed_not_replaced(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    g = ag.Graph()
    g.add("a", lambda: 1)
    g.add("b", lambda a: a + 1)
    await ag.run(g, store=db)
    loaded = ag.reset(ag.load(g, db), ["b"])
    for f in tmp_path.iterdir():
        f.unlink()
    with pytest.raises(ag.StoreError, match="does not exist any more") as info:
        await ag.run(loaded)
    assert "replaced it" not in str(info.value) and "'a'" in str(info.value)
