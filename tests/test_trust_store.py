"""The SQLite store file, trusted (issue 10, items 4, 5, 15, 16, 17, 19 and 26).

* the lock follows the file, not the spelling of its path (symlink, hard link, ``..``,
  relative, bind mount), across processes; one SQLiteStore object shared by two runs;
* a store in a read-only directory, or a read-only store file: reading works, a run says
  "read-only" (the directory is made read-only by a read-only bind mount in a private
  mount namespace, since the tests run as root, which ignores permission bits);
* a full disk (SQLite's ``max_page_count``) names the file and keeps what was committed;
* small bad stores: a schema version that is not a number, a FIFO, a socket, /dev/null,
  a ``-lock`` directory, a process the run forked that outlives it;
* the mode of a store file the user created beforehand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_store import HOLDER

import asyncgraph as ag

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
GUARD = 60  # seconds: a watchdog against a hang, not a bound on anything


async def one() -> int:
    return 1


async def plus_one(a: int) -> int:
    return a + 1


def small() -> ag.Graph:
    g = ag.Graph()
    g.add("a", one)
    g.add("b", plus_one, deps=["a"])
    return g


SMALL = """
import asyncgraph as ag

async def one():
    return 1

async def plus_one(a):
    return a + 1

def small():
    g = ag.Graph()
    g.add("a", one)
    g.add("b", plus_one, deps=["a"])
    return g
"""


@contextlib.contextmanager
def holding(tmp_path: Path, spelling: Path | str) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the store through ``spelling`` until the block ends."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(spelling)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "started"
        yield proc
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "finished"
        assert proc.wait(GUARD) == 0
    finally:
        proc.kill()
        proc.communicate()


def digest(path: Path) -> bytes:
    return path.read_bytes()


# -- item 4: the lock follows the file -------------------------------------------------


def _can_bind_mount(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        ok = (
            subprocess.run(
                ["unshare", "-m", "mount", "--bind", str(probe), str(probe)],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
    except FileNotFoundError:
        ok = False
    probe.rmdir()
    return ok


def test_any_spelling_of_a_held_store_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second process holds ``data/s.db``; every other name of that file is refused."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    db = data / "s.db"
    (tmp_path / "link.db").symlink_to(db)  # created before the file exists: dangling
    (tmp_path / "linked_dir").symlink_to(data, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    with holding(tmp_path, "data/s.db") as proc:  # a relative path, in the other process
        os.link(db, tmp_path / "hard.db")
        os.link(db, data / "sub" / "hard.db")  # a hard link in another directory
        spellings = [
            db,  # absolute here, relative there
            Path("data/s.db"),
            Path("data/sub/../s.db"),
            tmp_path / "link.db",
            tmp_path / "linked_dir" / "s.db",
            tmp_path / "hard.db",
            data / "sub" / "hard.db",
        ]
        before = digest(db)
        for spelling in spellings:
            with pytest.raises(ag.StoreLockedError, match=rf"run 1 \(pid {proc.pid} "):
                ag.run_sync(small(), store=spelling)
        assert digest(db) == before  # the refused runs wrote nothing
        assert sorted(os.listdir(data)) == ["s.db", "s.db-shm", "s.db-wal", "sub"]


def test_a_bind_mounted_spelling_is_refused(tmp_path: Path) -> None:
    """The store's directory mounted a second time (a container's volume) is one store."""
    if not _can_bind_mount(tmp_path):
        pytest.skip("cannot bind-mount here (no unshare, or no CAP_SYS_ADMIN)")
    data, other = tmp_path / "data", tmp_path / "mnt"
    data.mkdir()
    other.mkdir()
    script = tmp_path / "try.py"
    script.write_text(
        SMALL
        + """
import sys
try:
    ag.run_sync(small(), store=sys.argv[1])
except ag.StoreLockedError as exc:
    print("locked:", exc)
"""
    )
    with holding(tmp_path, data / "s.db") as proc:
        out = subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                'mount --bind "$1" "$2" && shift 2 && exec "$@"',
                "sh",
                str(data),
                str(other),
                sys.executable,
                str(script),
                str(other / "s.db"),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=GUARD,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(
            f"locked: store '{other / 's.db'}' is in use by run 1 (pid {proc.pid} "
        ), out.stdout


def test_a_store_that_does_not_exist_yet_is_locked_by_its_file(tmp_path: Path) -> None:
    """Two runs creating one store at once, through two names: the second is refused."""
    (tmp_path / "link.db").symlink_to(tmp_path / "s.db")  # dangling: s.db is not there
    first = ag.SQLiteStore(tmp_path / "link.db")
    first.acquire()
    try:
        assert (tmp_path / "s.db").is_file()  # the lock is on the file, created for it
        second = ag.SQLiteStore(tmp_path / "s.db")
        with pytest.raises(ag.StoreLockedError, match="another run that is starting"):
            second.acquire()
        second.release()  # harmless: it holds nothing
    finally:
        first.release()
    again = ag.SQLiteStore(tmp_path / "s.db")
    again.acquire()  # let go: the next one goes ahead
    again.release()


async def test_no_lock_file_beside_the_store(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    await ag.run(small(), store=db)
    assert os.listdir(tmp_path) == ["s.db"]


def test_an_older_asyncgraphs_lock_file_is_honoured(tmp_path: Path) -> None:
    """An older asyncgraph locks ``STORE-lock``: while that file exists, a run takes it too."""
    import fcntl

    db = tmp_path / "s.db"
    ag.run_sync(small(), store=db)
    fd = os.open(f"{db}-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what an older version does
        with pytest.raises(ag.StoreLockedError, match="s.db-lock"):
            ag.run_sync(small(), store=db)
    finally:
        os.close(fd)
    assert ag.run_sync(small(), store=db).results["b"] == 2


def _posix_locks_of_this_process(path: Path) -> list[str]:
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return [
            line
            for line in f
            if " POSIX " in line and f" {os.getpid()} " in line and f":{ino} " in line
        ]


def test_letting_go_of_the_lock_keeps_sqlites_own_locks(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops every POSIX lock the process has on it, and
    SQLite holds one for each open connection: the lock's descriptor waits for them."""
    db = tmp_path / "s.db"
    ag.run_sync(small(), store=db)
    reader = ag.SQLiteStore(db)
    with reader._reading() as conn:  # an open connection, as a load in another thread has
        assert conn is not None
        conn.execute("SELECT count(*) FROM state").fetchone()
        assert _posix_locks_of_this_process(db)  # SQLite's read lock (WAL mode)
        ag.run_sync(ag.load(small(), db), store=db)  # takes and lets go of the store
        other = ag.SQLiteStore(db)
        other.acquire()
        third = ag.SQLiteStore(db)
        with pytest.raises(ag.StoreLockedError):
            third.acquire()  # a refused descriptor is closed later too
        other.release()
        assert _posix_locks_of_this_process(db), "the reader's lock was dropped"
    assert not _posix_locks_of_this_process(db)
    assert ag.run_sync(ag.load(small(), db), store=db).results["b"] == 2


# -- item 5: one SQLiteStore object, two runs ------------------------------------------


async def test_two_runs_sharing_one_store_object(tmp_path: Path) -> None:
    store = ag.SQLiteStore(tmp_path / "s.db")
    entered, release = asyncio.Event(), asyncio.Event()
    g = ag.Graph()

    @g.task
    async def slow() -> int:
        entered.set()
        await release.wait()
        return 1

    first = asyncio.create_task(ag.run(g, store=store))
    await entered.wait()
    with pytest.raises(ag.StoreLockedError, match=rf"in use by run 1 \(pid {os.getpid()} "):
        await ag.run(small(), store=store)
    release.set()
    assert (await first).results["slow"] == 1
    assert list(ag.history(store)["status"]) == ["done"]  # not marked crashed
    out = await ag.run(ag.load(g, store), store=store)  # and the object is free again
    assert out.results["slow"] == 1
    store.close()


def test_two_threads_sharing_one_store_object(tmp_path: Path) -> None:
    store = ag.SQLiteStore(tmp_path / "s.db")
    entered, release = threading.Event(), threading.Event()
    g = ag.Graph()

    def slow() -> int:
        entered.set()
        assert release.wait(GUARD)
        return 1

    g.add("slow", slow)
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(ag.run_sync(g, store=store)))
    first.start()
    try:
        assert entered.wait(GUARD)
        errors: list[BaseException] = []

        def second() -> None:
            try:
                ag.run_sync(g, store=store)
            except BaseException as exc:  # noqa: BLE001 - looked at below
                errors.append(exc)

        other = threading.Thread(target=second)
        other.start()
        other.join(GUARD)
        assert len(errors) == 1 and isinstance(errors[0], ag.StoreLockedError), errors
        assert f"in use by run 1 (pid {os.getpid()} " in str(errors[0])
    finally:
        release.set()
        first.join(GUARD)
    assert results and results[0].results["slow"] == 1  # type: ignore[attr-defined]
    assert list(ag.history(store)["status"]) == ["done"]
    store.close()


# -- items 15 and 16: read-only directories and files ----------------------------------


READER = """
import json, subprocess, sys
import asyncgraph as ag
db, target = sys.argv[1], sys.argv[2]
sys.path.insert(0, target.rpartition("/")[0])
from trust_small import small

g = ag.load(small(), db)
out = {
    "status": {n: s.value for n, s in g.status.items()},
    "b": g.results["b"],
    "plan": list(ag.plan(small(), db)["action"]),
    "history": list(ag.history(db)["status"]),
    "tasks": sorted(ag.SQLiteStore(db).tasks()),
}
try:
    ag.run_sync(small(), store=db)
    out["run"] = "ran"
except ag.StoreError as exc:
    out["run"] = f"{type(exc).__name__}: {exc}"
cli = {}
for command in (["status", db], ["history", db], ["plan", target, "--store", db],
                ["run", target, "--store", db]):
    p = subprocess.run([sys.executable, "-m", "asyncgraph", *command],
                       capture_output=True, text=True)
    cli[command[0]] = [p.returncode, p.stderr]
out["cli"] = cli
print(json.dumps(out))
"""


def in_read_only(
    tmp_path: Path, directory: Path, script: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a private mount namespace where ``directory`` is read-only."""
    if not _can_bind_mount(tmp_path):
        pytest.skip("cannot make a read-only mount here (no unshare, or no CAP_SYS_ADMIN)")
    path = tmp_path / "script.py"
    path.write_text(script)
    return subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"',
            "sh",
            str(directory),
            sys.executable,
            str(path),
            *args,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=GUARD,
        check=False,
        cwd=tmp_path,
    )


def leave_a_wal(db: Path) -> None:
    """Mark the last run running in a commit that stays in the -wal (a process that dies
    with its connection open leaves the -wal and the -shm)."""
    code = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('PRAGMA wal_autocheckpoint=0')\n"
        "conn.execute(\"UPDATE runs SET status = 'running'\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db)], check=True)
    assert os.path.getsize(f"{db}-wal") > 0


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _graph_module(tmp_path: Path) -> str:
    (tmp_path / "mod").mkdir(exist_ok=True)
    module = tmp_path / "mod" / "trust_small.py"
    module.write_text(SMALL)
    return f"{module}:small"


@pytest.mark.parametrize("leftover", ["closed cleanly", "crashed with a WAL"])
def test_a_store_in_a_read_only_directory_can_be_read(tmp_path: Path, leftover: str) -> None:
    import json

    data = tmp_path / "data"
    data.mkdir()
    db = data / "s.db"
    target = _graph_module(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "asyncgraph", "run", target, "--store", str(db)],
        env=ENV,
        check=True,
        capture_output=True,
    )
    if leftover == "crashed with a WAL":
        leave_a_wal(db)  # what a SIGKILL leaves: the last commit in the -wal, and the -shm
    before = _files(data)
    out = in_read_only(tmp_path, data, READER, str(db), target)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["status"] == {"a": "done", "b": "done"}
    assert got["b"] == 2
    assert got["plan"] == ["reuse", "reuse"]
    assert got["history"] == (["running"] if leftover != "closed cleanly" else ["done"])
    assert got["tasks"] == ["a", "b"]
    assert got["run"].startswith(f"StoreError: store '{db}' is read-only"), got["run"]
    assert f"directory '{data}'" in got["run"]
    for command in ("status", "history", "plan"):
        assert got["cli"][command] == [0, ""], (command, got["cli"][command])
    code, err = got["cli"]["run"]
    assert code == 2 and err.startswith("asyncgraph run: error: store "), err
    assert "read-only" in err and "Traceback" not in err
    assert _files(data) == before  # nothing created or changed


def test_a_wal_that_cannot_be_read_in_a_read_only_directory(tmp_path: Path) -> None:
    """A -wal with commits but no -shm, read-only: said so, not called damaged."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "s.db"
    ag.run_sync(small(), store=db)
    leave_a_wal(db)
    os.unlink(f"{db}-shm")
    out = in_read_only(
        tmp_path,
        data,
        SMALL
        + """
import sys
try:
    ag.history(sys.argv[1])
except ag.StoreError as exc:
    print(exc)
""",
        str(db),
    )
    assert out.returncode == 0, out.stderr
    assert f"{db}-wal" in out.stdout and "read-only" in out.stdout, out.stdout
    assert "damaged" not in out.stdout


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: not even root may write the file."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_store_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from asyncgraph.__main__ import main

    db = tmp_path / "s.db"
    ag.run_sync(small(), store=db)
    target = _graph_module(tmp_path)
    with immutable(db):
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        assert ag.load(small(), db).results["b"] == 2
        assert list(ag.history(db)["status"]) == ["done"]
        with pytest.raises(ag.StoreError, match=rf"store '{db}' is read-only") as caught:
            ag.run_sync(small(), store=db)
        assert type(caught.value) is ag.StoreError
        sys.modules.pop("trust_small", None)
        code = main(["run", target, "--store", str(db)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith(f"asyncgraph run: error: store '{db}' is read-only"), err
        assert len(err.strip().splitlines()) == 1
        assert main(["status", str(db)]) == 0
        assert capsys.readouterr().err == ""
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


# -- item 17: a full disk --------------------------------------------------------------


class TinyStore(ag.SQLiteStore):
    """A store whose file may grow by a few pages only (the test hook for a full disk)."""

    room = 8  # pages of 4 KiB

    def _open_for_run(self) -> sqlite3.Connection:
        conn = super()._open_for_run()
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + self.room}")
        return conn


async def test_a_full_disk_names_the_file_and_keeps_what_was_committed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    first = await ag.run(small(), store=db)
    assert first.results["b"] == 2
    committed = asyncio.Event()

    def on_event(event: ag.Event) -> None:
        if event.kind is ag.EventKind.DONE and event.task == "early":
            committed.set()  # a done event comes only once its commit is back

    async def early() -> str:
        return "kept"

    async def huge(early: str) -> bytes:
        await committed.wait()
        return os.urandom(200_000)  # 49 pages: no room for it

    g = small()
    g.add("early", early)
    g.add("huge", huge, deps=["early"])
    store = TinyStore(db)
    try:
        with pytest.raises(ag.StoreError) as caught:
            out = await ag.run(g, store=store, on_event=on_event)
            out.raise_for_failures()
    finally:
        store.close()
    message = str(caught.value)
    assert "full" in message and str(db) in message, message
    assert "no transaction is active" not in message
    kept = ag.load(g, db, force=True)
    assert kept.results["b"] == 2 and kept.results["early"] == "kept"
    assert kept.status["huge"] is not ag.State.DONE


FILL_THE_DISK = """
import asyncio, json, os, sys
import asyncgraph as ag

db = sys.argv[1]

async def one():
    return 1

g = ag.Graph()
g.add("a", one)
ag.run_sync(g, store=db)
committed = asyncio.Event()

def on_event(event):
    if event.kind is ag.EventKind.DONE and event.task == "early":
        committed.set()  # a done event comes only once its commit is back

async def early():
    return "kept"

async def huge(early):
    await committed.wait()
    return os.urandom(12_000_000)  # more than SQLite's page cache: it spills to the -wal

g.add("early", early)
g.add("huge", huge, deps=["early"])
try:
    ag.run_sync(g, store=db, on_event=on_event)
    message = None
except ag.StoreError as exc:
    message = str(exc)
kept = ag.load(g, db)
print(json.dumps({"message": message, "status": {n: s.value for n, s in kept.status.items()},
                  "early": kept.results["early"]}))
"""


def test_a_full_disk_on_a_tiny_file_system(tmp_path: Path) -> None:
    """A real ENOSPC (a 4 MiB tmpfs): SQLite rolls the transaction back itself, and the
    cause is reported, not the failed ROLLBACK after it."""
    import json

    if not _can_bind_mount(tmp_path):
        pytest.skip("cannot mount a tmpfs here (no unshare, or no CAP_SYS_ADMIN)")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(FILL_THE_DISK)
    db = disk / "s.db"
    out = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount -t tmpfs -o size=4m tmpfs "$1" && shift && exec "$@"',
            "sh",
            str(disk),
            sys.executable,
            str(script),
            str(db),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=GUARD,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert "no transaction is active" not in got["message"], got["message"]
    assert f"store '{db}' is full" in got["message"], got["message"]
    assert got["status"] == {"a": "done", "early": "done", "huge": "pending"}
    assert got["early"] == "kept"


# -- item 19: small bad stores ---------------------------------------------------------


def test_a_schema_version_that_is_not_a_number(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    ag.run_sync(small(), store=db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE meta SET value = 'one' WHERE key = 'version'")
    conn.close()
    for call in (
        lambda: ag.SQLiteStore(db),
        lambda: ag.load(small(), db),
        lambda: ag.run_sync(small(), store=db),
    ):
        with pytest.raises(ag.StoreError, match=rf"'{db}' has schema version 'one'"):
            call()


async def test_a_lock_path_that_is_a_directory_does_not_matter(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    (tmp_path / "s.db-lock").mkdir()  # an older asyncgraph's lock file's name, taken
    assert (await ag.run(small(), store=db)).results["b"] == 2


def _not_regular(tmp_path: Path, kind: str) -> tuple[Path, contextlib.ExitStack]:
    stack = contextlib.ExitStack()
    path = tmp_path / "s.db"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        stack.callback(server.close)
        server.bind(str(path))
    else:
        path.symlink_to("/dev/null")
    return path, stack


def _returns_or_hangs(call: object) -> BaseException | None:
    """Call ``call`` in a thread and return what it raised; fail if it blocks."""
    caught: list[BaseException | None] = []

    def target() -> None:
        try:
            call()  # type: ignore[operator]
            caught.append(None)
        except BaseException as exc:  # noqa: BLE001 - returned
            caught.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD)
    assert caught, f"{call} blocked"
    return caught[0]


@pytest.mark.parametrize("kind", ["fifo", "socket", "dev_null"])
def test_a_store_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    path, stack = _not_regular(tmp_path, kind)
    with stack:
        calls = [
            lambda: ag.SQLiteStore(path),
            lambda: ag.load(small(), path),
            lambda: ag.plan(small(), path),
            lambda: ag.history(path),
            lambda: ag.run_sync(small(), store=path),
        ]
        for call in calls:
            exc = _returns_or_hangs(call)
            assert isinstance(exc, ag.StoreError), repr(exc)
            assert f"store '{path}' is not a regular file" in str(exc), str(exc)


FORKER = """
import os, sys, time
import asyncgraph as ag

g = ag.Graph()

def spawn():
    pid = os.fork()
    if pid == 0:
        time.sleep(600)  # a daemon the task left behind
        os._exit(0)
    with open(sys.argv[2], "w") as f:
        f.write(str(pid))
        f.flush()
        os.fsync(f.fileno())
    print("started", flush=True)
    time.sleep(600)  # killed here

g.add("spawn", spawn)
ag.run_sync(g, store=sys.argv[1])
"""


def test_a_child_the_run_forked_does_not_hold_the_store(tmp_path: Path) -> None:
    import psutil

    db, pid_file = tmp_path / "s.db", tmp_path / "child.pid"
    script = tmp_path / "forker.py"
    script.write_text(FORKER)
    driver = subprocess.Popen(
        [sys.executable, str(script), str(db), str(pid_file)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    child = None
    try:
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == "started"
        child = psutil.Process(int(pid_file.read_text()))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert child.is_running()
        # The run is recorded running, its pid is dead, and its fork lives on.
        again = ag.run_sync(ag.load(small(), db, force=True), store=db)
        assert again.results["b"] == 2
        assert list(ag.history(db)["status"]) == ["crashed", "done"]
    finally:
        if child is not None:  # first: it has the driver's stdout too
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
                child.wait(GUARD)
        driver.kill()
        driver.communicate()


def test_a_lock_held_by_another_process_after_the_run_died(tmp_path: Path) -> None:
    """The recorded run's process is gone, yet the file is locked: say who holds it."""
    db = tmp_path / "s.db"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    driver = subprocess.Popen(
        [sys.executable, str(script), str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    waiter = None
    try:
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == "started"
        # flock(1) waits for the lock, then holds it (as a process the run started could).
        waiter = subprocess.Popen(
            ["flock", "-x", str(db), "-c", "echo locked; exec sleep 600"],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert waiter.stdout is not None
        assert waiter.stdout.readline().strip() == "locked"
        with pytest.raises(ag.StoreLockedError) as caught:
            ag.run_sync(small(), store=db)
        message = str(caught.value)
        assert f"run 1 (pid {driver.pid} " in message
        assert "no longer exists" in message, message
        assert f"process {waiter.pid} (flock" in message, message
    finally:
        driver.kill()
        driver.communicate()
        if waiter is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(waiter.pid, signal.SIGKILL)  # flock and its sleep
            waiter.communicate()


def test_the_lock_is_not_inherited_by_a_started_program(tmp_path: Path) -> None:
    """``subprocess`` with ``close_fds=False``: the lock's descriptor is close-on-exec."""
    db = tmp_path / "s.db"
    g = ag.Graph()
    started: list[subprocess.Popen[bytes]] = []

    def spawn() -> int:
        started.append(subprocess.Popen(["sleep", "600"], close_fds=False))
        return 1

    g.add("spawn", spawn)
    try:
        store = ag.SQLiteStore(db)
        store.acquire()
        fds = [
            int(fd)
            for fd in os.listdir("/proc/self/fd")
            if os.path.realpath(f"/proc/self/fd/{fd}") == str(db)
        ]
        assert fds and not any(os.get_inheritable(fd) for fd in fds)
        store.release()
        ag.run_sync(g, store=db)
        theirs = [
            os.path.realpath(f"/proc/{started[0].pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{started[0].pid}/fd")
        ]
        assert str(db) not in theirs
    finally:
        for p in started:
            p.kill()
            p.wait()


# -- item 26: the mode of a store file the user created --------------------------------


def test_a_touched_store_file_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "nightly.db"
    db.touch()
    db.chmod(0o644)
    modes: dict[str, int] = {}
    g = small()

    def look(b: int) -> None:  # while the run holds the store: its -wal and -shm exist
        for suffix in ("-wal", "-shm"):
            modes[suffix] = stat.S_IMODE(os.stat(f"{db}{suffix}").st_mode)

    g.add("look", look, deps=["b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a store this run creates is not warned about
        ag.run_sync(g, store=db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert modes == {"-wal": 0o600, "-shm": 0o600}


def test_an_existing_store_readable_by_others_is_warned_about(tmp_path: Path) -> None:
    db = tmp_path / "nightly.db"
    ag.run_sync(small(), store=db)
    db.chmod(0o644)
    with pytest.warns(
        UserWarning,
        match=rf"store '{db}' is readable by other users "
        r"\(mode 0644\).*chmod 600",
    ):
        ag.run_sync(small(), store=db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o644  # the owner's choice is left alone
    db.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ag.run_sync(small(), store=db)
