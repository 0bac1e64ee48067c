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
import threading
from pathlib import Path

import pytest
import test_trust_session

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


class SmallRows(test_trust_session.SmallRows):
    """Rows of at most ROW_LIMIT bytes: room for the error texts a row keeps."""

    limit = ROW_LIMIT


def _huge_error() -> None:
    raise ValueError("e" * (ROW_LIMIT + 10))


async def test_an_error_too_big_for_a_row_is_cut_and_fails_only_its_task(tmp_path: Path) -> None:
    from asyncgraph._store.session import MAX_ERROR_TEXT

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


# -- the store file, tried from outside (items 4, 5, 19, 26) ----------------------------


@pytest.mark.parametrize("spelling", ["file:nightly.db", ":memory:", "a\0b.db"])
def test_a_path_that_sqlite_would_read_otherwise_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    """``file:nightly.db`` was locked as a file of that name while SQLite (built to take
    URIs) opened nightly.db: two runs on one store at once. ``:memory:`` kept nothing."""
    monkeypatch.chdir(tmp_path)
    g = ag.Graph()
    g.add("a", lambda: 1)
    with pytest.raises(ag.StoreError, match="give its file path|give the store's file path"):
        ag.run_sync(g, store=spelling)
    with pytest.raises(ag.StoreError):
        ag.history(spelling)
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_the_runs_connection_opens_the_file_the_lock_is_on(tmp_path: Path) -> None:
    """A name SQLite could take for a URI or its options ('?', '#', 'file:' inside a
    directory name) is the file of that name, for the lock, the run and the readers."""
    odd = tmp_path / "file:odd?mode=ro#x"
    odd.mkdir()
    db = odd / "s.db"
    g = ag.Graph()
    g.add("a", lambda: 1)
    assert ag.run_sync(g, store=db).results["a"] == 1
    assert sorted(p.name for p in odd.iterdir()) == ["s.db"]
    assert [p.name for p in tmp_path.iterdir()] == [odd.name]
    assert ag.history(db)["status"].tolist() == ["done"]


async def test_closing_a_store_a_run_holds_is_refused(tmp_path: Path) -> None:
    """``store.close()`` under a running run dropped its lock: another process's run got
    in, and the first died on an internal AssertionError."""
    import asyncio

    store = SQLiteStore(tmp_path / "s.db")
    started, finish = asyncio.Event(), asyncio.Event()

    async def slow() -> int:
        started.set()
        await finish.wait()
        return 1

    g = ag.Graph()
    g.add("slow", slow)
    run = asyncio.ensure_future(ag.run(g, store=store))
    await started.wait()
    with pytest.raises(ag.StoreError, match="held by a run of this process"):
        store.close()
    with pytest.raises(ag.StoreLockedError):  # still held: nobody else gets in
        SQLiteStore(tmp_path / "s.db").acquire()
    finish.set()
    out = await run
    assert out.results["slow"] == 1
    assert ag.history(store)["status"].tolist() == ["done"]
    store.close()  # after the run: fine, and idempotent
    store.close()


_forking = threading.Event()  # set by the fork below, before asyncgraph's own handler
_armed = threading.Event()


def _before_fork() -> None:
    if _armed.is_set():
        _forking.set()


# Registered after asyncgraph's handler, so it runs before it ("before" handlers run in
# the reverse order of registration).
os.register_at_fork(before=_before_fork)


def test_a_fork_while_another_thread_takes_the_store_does_not_keep_its_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child forked between opening the store file and recording that it holds it kept
    the lock's descriptor, and held the store after its parent was killed. Here the
    store's flock waits until a fork has begun, so the child is forked in that window
    unless the fork waits for the store to be taken."""
    import fcntl

    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    in_window = threading.Event()
    real_flock = fcntl.flock

    def flock_once_forking(fd: int, op: int) -> None:
        if op & fcntl.LOCK_EX and not in_window.is_set():
            in_window.set()
            assert _forking.wait(30)
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_once_forking)
    taker = threading.Thread(target=store.acquire)
    taker.start()
    assert in_window.wait(30)
    r, w = os.pipe()
    _armed.set()
    try:
        pid = os.fork()
        if pid == 0:  # the child: has it a descriptor of the store file?
            real = os.path.realpath(db)
            held = any(
                os.path.realpath(f"/proc/self/fd/{fd}") == real
                for fd in os.listdir("/proc/self/fd")
            )
            os.write(w, b"held" if held else b"free")
            os._exit(0)
    finally:
        _armed.clear()
    os.close(w)
    answer = os.read(r, 16)
    os.close(r)
    os.waitpid(pid, 0)
    taker.join(30)
    _forking.clear()
    try:
        assert store._lock_fd is not None  # the taker got the store
        assert answer == b"free"
    finally:
        store.release()


def test_a_sqlite_file_with_no_store_in_it_is_made_private(tmp_path: Path) -> None:
    """An SQLite file made beforehand (``sqlite3 x.db VACUUM``, mode 0644) is a store not
    created yet: the run that creates the schema makes it and its -wal/-shm owner-only."""
    db = tmp_path / "x.db"
    sqlite3.connect(db).execute("VACUUM")
    os.chmod(db, 0o644)
    g = ag.Graph()
    g.add("a", lambda: 1)
    store = SQLiteStore(db)
    seen = {}

    def modes() -> None:
        for suffix in ("", "-wal", "-shm"):
            f = Path(f"{db}{suffix}")
            if f.exists():
                seen[suffix] = oct(f.stat().st_mode & 0o777)

    g.add("look", lambda a: modes())
    ag.run_sync(g, store=store)
    assert seen == {"": "0o600", "-wal": "0o600", "-shm": "0o600"}


def test_an_older_versions_lock_file_is_found_through_a_symlink(tmp_path: Path) -> None:
    """An older asyncgraph locked ``STORE-lock`` beside the name it was given; a run
    through a symlink looked for ``link.db-lock`` and went in beside it."""
    import fcntl

    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("a", lambda: 1)
    ag.run_sync(g, store=db)
    link = tmp_path / "link.db"
    link.symlink_to(db)
    old = os.open(f"{db}-lock", os.O_RDWR | os.O_CREAT, 0o600)  # an older run holds it
    try:
        fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ag.StoreLockedError, match="lock file of an older asyncgraph"):
            ag.run_sync(ag.reset(ag.load(g, link), ["a"]), store=link)
    finally:
        os.close(old)
    assert ag.history(db)["status"].tolist() == ["done"]  # nothing ran beside it
