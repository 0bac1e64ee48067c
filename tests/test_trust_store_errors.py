"""Clear errors of the SQLite store file, from an outside review of issue 10 (items 15,
17 and 19): a full disk, a file system out of inodes, an older asyncgraph's lock file,
a store moved while a run held it.

The full disks are tiny tmpfs mounts in a private mount namespace (``unshare -m``), as
in tests/test_trust_store.py; they are skipped where mounting is not allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_trust_store import (
    ENV,
    GUARD,
    _can_bind_mount,
    _graph_module,
    holding,
    in_read_only,
    leave_a_wal,
    small,
)

import asyncgraph as ag

# -- a full disk, a file system out of inodes (items 15 and 17) ----------------------

ON_A_TINY_DISK = """
import json, os, subprocess, sys

disk, options, scenario, target = sys.argv[1:5]
subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", disk], check=True)
db = os.path.join(disk, "s.db")

def cli(*args):
    p = subprocess.run([sys.executable, "-m", "asyncgraph", *args], capture_output=True,
                       text=True)
    return [p.returncode, p.stderr]

def fill_bytes():
    fd = os.open(os.path.join(disk, "filler"), os.O_WRONLY | os.O_CREAT)
    for chunk in (65536, 4096, 1):
        try:
            while True:
                os.write(fd, b"0" * chunk)
        except OSError:
            pass
    os.close(fd)

def fill_inodes():
    i = 0
    try:
        while True:
            open(os.path.join(disk, f"f{i}"), "w").close()
            i += 1
    except OSError:
        pass

out = {}
if scenario == "new":
    out["run"] = cli("run", target, "--store", db)
else:
    module, _, name = target.rpartition(":")
    sys.path.insert(0, os.path.dirname(module))
    import asyncgraph as ag
    ag.run_sync(getattr(__import__("trust_small"), name)(), store=db)
    assert os.listdir(disk) == ["s.db"], os.listdir(disk)  # closed cleanly
    fill_bytes() if scenario == "bytes" else fill_inodes()
    for command in ("status", "history"):
        out[command] = cli(command, db)
    out["plan"] = cli("plan", target, "--store", db)
    out["run"] = cli("run", target, "--store", db)
out["files"] = sorted(f for f in os.listdir(disk) if f.startswith("s.db"))
print(json.dumps(out))
"""


def on_a_tiny_disk(tmp_path: Path, options: str, scenario: str) -> dict[str, list[object]]:
    """Run ``ON_A_TINY_DISK`` on a fresh tmpfs mounted with ``options``."""
    if not _can_bind_mount(tmp_path):
        pytest.skip("cannot mount a tmpfs here (no unshare, or no CAP_SYS_ADMIN)")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "tiny.py"
    script.write_text(ON_A_TINY_DISK)
    target = _graph_module(tmp_path)
    out = subprocess.run(
        ["unshare", "-m", sys.executable, str(script), str(disk), options, scenario, target],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=GUARD,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    got: dict[str, list[object]] = json.loads(out.stdout)
    return got


def _one_line_error(result: list[object], db: str) -> str:
    code, err = result
    assert isinstance(err, str)
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("asyncgraph run: error: store "), err
    assert f"'{db}'" in err, err
    return err


def test_a_sound_store_on_a_full_disk_can_be_read(tmp_path: Path) -> None:
    """A store closed cleanly (no -wal, no -shm), then its disk filled to the last byte:
    SQLite cannot create the -shm it reads through, so the file alone is read (it is the
    whole store); a run says the store is full; nothing is left beside it."""
    got = on_a_tiny_disk(tmp_path, "size=1m", "bytes")
    for command in ("status", "history", "plan"):
        assert got[command] == [0, ""], (command, got[command])
    err = _one_line_error(got["run"], str(tmp_path / "disk" / "s.db"))
    assert "is full" in err and "disk I/O error" not in err, err
    assert "cannot be read" not in err, err
    assert got["files"] == ["s.db"]  # no stray -wal, -shm


def test_a_sound_store_on_a_file_system_out_of_inodes(tmp_path: Path) -> None:
    """No inode left for the -wal and -shm: reading works, a run says no free inodes
    (not "read-only")."""
    got = on_a_tiny_disk(tmp_path, "size=4m,nr_inodes=64", "inodes")
    for command in ("status", "history", "plan"):
        assert got[command] == [0, ""], (command, got[command])
    err = _one_line_error(got["run"], str(tmp_path / "disk" / "s.db"))
    assert "is full" in err and "inodes" in err, err
    assert "read-only" not in err, err
    assert got["files"] == ["s.db"]


def test_a_new_store_with_no_inodes_for_its_wal(tmp_path: Path) -> None:
    """Room for the store file but not its -wal and -shm: refused before SQLite creates
    any of them, so no -wal is left to belong to nothing."""
    got = on_a_tiny_disk(tmp_path, "size=4m,nr_inodes=3", "new")
    err = _one_line_error(got["run"], str(tmp_path / "disk" / "s.db"))
    assert "is full" in err and "inodes" in err, err
    assert "read-only" not in err, err
    assert "s.db-wal" not in got["files"] and "s.db-shm" not in got["files"], got["files"]


def test_a_new_store_with_no_inode_at_all(tmp_path: Path) -> None:
    got = on_a_tiny_disk(tmp_path, "size=4m,nr_inodes=1", "new")
    err = _one_line_error(got["run"], str(tmp_path / "disk" / "s.db"))
    assert "cannot be created" in err and "inodes" in err, err
    assert got["files"] == []


# -- an older asyncgraph's lock file (item 19) ----------------------------------------

OLDER_RUN = """
import fcntl, os, sqlite3, sys, time

db = sys.argv[1]
fd = os.open(db + "-lock", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what an older asyncgraph's run does
conn = sqlite3.connect(db, isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute(
    "INSERT INTO runs (started, status, pid, host) VALUES (?, 'running', ?, ?)",
    (time.time(), os.getpid(), os.uname().nodename),
)
print("running", flush=True)
sys.stdin.readline()
"""


def test_an_older_asyncgraphs_run_is_named_as_the_holder(tmp_path: Path) -> None:
    """The refused process takes the lock on the store file before it finds the older
    version's lock file held: the older run is the holder, not the refused process."""
    db = tmp_path / "s.db"
    ag.run_sync(small(), store=db)
    script = tmp_path / "older.py"
    script.write_text(OLDER_RUN)
    older = subprocess.Popen(
        [sys.executable, str(script), str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert older.stdout is not None and older.stdin is not None
        assert older.stdout.readline().strip() == "running"
        with pytest.raises(ag.StoreLockedError) as caught:
            ag.run_sync(small(), store=db)
        message = str(caught.value)
        assert "this process" not in message, message
        assert str(os.getpid()) not in message, message
        assert caught.value.holder.startswith(f"run 2 (pid {older.pid} "), message
        assert f"through '{db}-lock', the lock file of an older asyncgraph" in message
        assert "wait for that run to end" in message, message
    finally:
        older.kill()
        older.communicate()
    assert ag.run_sync(small(), store=db).results["b"] == 2  # its lock is gone with it


# -- a store moved or removed while a run held it (item 19) ----------------------------


@pytest.mark.parametrize("spelling", ["s.db", "link.db"])
def test_a_new_store_beside_a_moved_stores_wal(tmp_path: Path, spelling: str) -> None:
    """``mv s.db old.db`` while run A holds it; its -wal and -shm stay named s.db-wal,
    s.db-shm (SQLite opened them by name). A run B on s.db must not take them as its own:
    refused, naming them, the process that has them open, and the name it moved to.
    Through a symlink link.db -> s.db, they are beside the file it names (as SQLite
    puts them)."""
    db, moved = tmp_path / "s.db", tmp_path / "old.db"
    (tmp_path / "link.db").symlink_to(db)
    with holding(tmp_path, tmp_path / spelling) as proc:
        wal = Path(f"{db}-wal")
        assert wal.exists() and Path(f"{db}-shm").exists()
        os.rename(db, moved)
        before = wal.read_bytes()
        with pytest.raises(ag.StoreLockedError) as caught:
            ag.run_sync(small(), store=tmp_path / spelling)
        message = str(caught.value)
        assert f"'{db}-wal'" in message and f"'{db}-shm'" in message, message
        assert f"process {proc.pid} " in message, message
        assert f"'{moved}'" in message, message
        assert "moved" in message and "disk I/O" not in message, message
        assert wal.read_bytes() == before  # not touched
        assert caught.value.holder.startswith(f"process {proc.pid} ")


def test_a_new_store_beside_a_wal_left_by_a_moved_store(tmp_path: Path) -> None:
    """A crashed run's -wal (with commits) and -shm, its store file moved or removed and
    nobody using them: a new store there would read those commits as its own."""
    import sqlite3

    db, moved = tmp_path / "s.db", tmp_path / "old.db"
    ag.run_sync(small(), store=db)
    leave_a_wal(db)
    os.rename(db, moved)
    with pytest.raises(ag.StoreError) as caught:
        ag.run_sync(small(), store=db)
    assert not isinstance(caught.value, ag.StoreLockedError)
    message = str(caught.value)
    assert f"'{db}-wal'" in message and "moved or removed" in message, message
    assert "disk I/O" not in message, message
    # put them back together: the moved store is whole, with its last commit
    os.rename(moved, db)
    assert list(ag.history(db)["status"]) == ["running"]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


async def test_leftover_empty_wal_and_shm_of_a_removed_store_do_not_matter(
    tmp_path: Path,
) -> None:
    """What reads leave beside a store (an empty -wal, a -shm), the store then removed to
    start afresh: nothing uses them, no commit is in them, so a new store starts there."""
    db = tmp_path / "s.db"
    await ag.run(small(), store=db)
    assert list(ag.history(db)["status"]) == ["done"]
    # Since issue 16 asyncgraph's reads leave nothing beside the store; a read-only
    # SQLite connection (another tool's) still leaves an empty -wal and a -shm.
    import sqlite3

    conn = sqlite3.connect(f"{Path(db).as_uri()}?mode=ro", uri=True)
    conn.execute("SELECT count(*) FROM runs").fetchone()
    conn.close()
    assert os.path.exists(f"{db}-shm") and os.path.getsize(f"{db}-wal") == 0
    os.unlink(db)
    out = await ag.run(small(), store=db)
    assert out.results["b"] == 2
    assert list(ag.history(db)["status"]) == ["done"]


def test_a_symlinked_stores_wal_is_found_beside_the_file_it_names(tmp_path: Path) -> None:
    """A store read through link.db -> data/s.db in a read-only directory, its last
    commit in data/s.db-wal: read with that -wal (not immutable, which would skip it)."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "s.db"
    ag.run_sync(small(), store=db)
    leave_a_wal(db)  # the last run marked running, in a commit that stays in the -wal
    link = tmp_path / "link.db"
    link.symlink_to(db)
    script = "import sys, asyncgraph as ag; print(list(ag.history(sys.argv[1])['status']))"
    out = in_read_only(tmp_path, data, script, str(link))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['running']"
