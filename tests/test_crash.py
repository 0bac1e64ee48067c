"""SIGKILL a run with a store at a random moment, resume it, and nothing done runs again.

The issue's promise: a crash of the process that runs the graph never corrupts the store
and never loses a result that was reported done; tasks that were running are pending on
the next run. Each trial runs ``crash_driver.py`` (a 73-task IO/thread/CPU graph) in a
subprocess, reads its ``done NAME`` lines (printed from ``done`` events, which come only
after the commit), kills it after a seeded-random number of them, and then checks the
store, resumes, and compares with a clean run.

Half the trials kill the whole process group (the machine's OOM killer, a container
stop); the other half kill only the driver (``kill -9 PID``), and its worker processes
must then go away by themselves.

``ASYNCGRAPH_CRASH_TRIALS`` sets the number of trials (3 by default; a long run may ask
for hundreds).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import crash_driver
import psutil
import pytest
from conftest import wait_gone as _wait_gone

import asyncgraph as ag

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(crash_driver.__file__).resolve()
TOTAL = len(crash_driver.build().tasks)
TRIALS = int(os.environ.get("ASYNCGRAPH_CRASH_TRIALS", "3"))
#: An upper bound for waits on processes, not a measurement: only hit when stuck.
PATIENCE = 60.0


def _env(log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env[crash_driver.LOG_ENV] = str(log)
    return env


def _start(store: Path, log: Path, stderr: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(store)],
        env=_env(log),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,  # its own process group, workers included
    )


def _run_to_the_end(store: Path, log: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(store)],
        env=_env(log),
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc.stdout.splitlines()


def _ran(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def _group(pgid: int) -> list[int]:
    """The pids of the live (not zombie) processes of a driver: its process group, and
    its CPU workers, which run in sessions of their own (each a group, killed whole)
    and name the driver's pid on their command line (``python -c BOOT _worker.py
    OUT_FD PARENT_PID WATCH_FD``)."""
    alive = []
    for p in psutil.process_iter():
        try:
            argv = p.cmdline()
            worker = len(argv) > 5 and argv[3].endswith("_worker.py") and argv[5] == str(pgid)
            if (worker or os.getpgid(p.pid) == pgid) and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return alive


@pytest.fixture(scope="module")
def clean_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The results of one run that nobody killed."""
    root = tmp_path_factory.mktemp("clean")
    _run_to_the_end(root / "clean.db", root / "ran.log")
    assert sorted(_ran(root / "ran.log")) == sorted(crash_driver.build().tasks)
    final = ag.load(crash_driver.build(), root / "clean.db")
    assert set(final.status.values()) == {ag.State.DONE}
    return dict(final.results)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_sigkill_then_resume_reruns_nothing_done(
    trial: int, tmp_path: Path, clean_results: dict[str, Any]
) -> None:
    rng = random.Random(trial)
    kill_after = rng.randrange(1, TOTAL)  # `done` lines to read before the kill
    whole_group = trial % 2 == 0
    store = tmp_path / "crash.db"
    crash_log, resume_log = tmp_path / "crash.log", tmp_path / "resume.log"

    # 1. Run, and SIGKILL after `kill_after` tasks were reported done.
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = _start(store, crash_log, stderr)
    reported: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("done "):
                reported.append(line.split()[1])
                if len(reported) == kill_after:
                    break
        if whole_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None and len(reported) < kill_after:
            os.killpg(proc.pid, signal.SIGKILL)  # the loop broke on an error
        proc.wait(timeout=PATIENCE)
        assert proc.stdout is not None
        proc.stdout.close()
    assert len(reported) == kill_after, (
        f"the driver ended after {len(reported)} done lines:\n"
        + (tmp_path / "stderr.txt").read_text()
    )
    assert proc.returncode == -signal.SIGKILL

    # 2. No worker outlives the run: a killed group is gone at once; a driver killed
    # alone leaves workers whose pipes closed, and they must exit on their own.
    # The driver is dead, so its group cannot grow any more.
    left = _wait_gone(_group(proc.pid), PATIENCE)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left, f"worker processes left after the kill: {left}"

    # 3. The store opens, is intact, and holds every result reported done.
    runs = ag.history(store)
    assert list(runs["status"]) == ["running"]  # marked crashed when the next run starts
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    after_crash = ag.load(crash_driver.build(), store)
    done = {n for n, s in after_crash.status.items() if s is ag.State.DONE}
    assert set(reported) <= done, f"reported done, then lost: {set(reported) - done}"
    assert done <= set(_ran(crash_log))
    for name in done:
        assert after_crash.results[name] == clean_results[name], name
    not_done = {s for s in after_crash.status.values() if s is not ag.State.DONE}
    assert not_done <= {ag.State.PENDING}, not_done  # running ones are pending again

    # 4. Resume: exactly the tasks not done ran, once each; nothing done ran again.
    lines = _run_to_the_end(store, resume_log)
    resumed = _ran(resume_log)
    assert not done & set(resumed), f"done, yet ran again: {sorted(done & set(resumed))}"
    assert sorted(resumed) == sorted(set(clean_results) - done)
    reported_now = [line.split()[1] for line in lines if line.startswith("done ")]
    assert sorted(reported_now) == sorted(resumed)

    # 5. The end state is a clean run's.
    final = ag.load(crash_driver.build(), store)
    assert set(final.status.values()) == {ag.State.DONE}
    assert dict(final.results) == clean_results
    runs = ag.history(store)
    assert list(runs["status"]) == ["crashed", "done"]
    assert list(runs["reused"]) == [0, len(done)]
    # The crashed run counts what it committed (issue 10, item 21; it showed 0 before).
    assert list(runs["done"]) == [len(done), TOTAL - len(done)]


KILLED_WHILE_CREATING = """
import os, signal, sqlite3, sys
import asyncgraph as ag

real_connect = sqlite3.connect


def connect(*args, **kwargs):
    conn = real_connect(*args, **kwargs)

    def trace(statement):
        if statement.lstrip().startswith("CREATE TABLE"):  # inside the schema's transaction
            os.kill(os.getpid(), signal.SIGKILL)

    conn.set_trace_callback(trace)
    return conn


sqlite3.connect = connect
g = ag.Graph()
g.add("a", lambda: 1)
ag.run_sync(g, store=sys.argv[1])
"""


def test_a_run_killed_while_it_creates_its_store_leaves_one_that_opens(tmp_path: Path) -> None:
    """The first run on a store is killed after SQLite wrote the file's first page
    (``PRAGMA journal_mode=WAL`` does) and before the schema was committed: a file with
    no tables. It is a store that was never created, so the next run creates it."""
    script = tmp_path / "killed_while_creating.py"
    script.write_text(KILLED_WHILE_CREATING)
    store = tmp_path / "s.db"
    proc = subprocess.run(
        [sys.executable, str(script), str(store)],
        env=_env(tmp_path / "unused.log"),
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert store.stat().st_size > 0
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)

    assert ag.history(store).empty
    g = ag.Graph()
    g.add("a", lambda: 1)
    assert ag.load(g, store).status == {"a": ag.State.PENDING}
    done = ag.run_sync(g, store=store)
    assert done.results == {"a": 1}
    assert list(ag.history(store)["status"]) == ["done"]
    assert ag.load(g, store).status == {"a": ag.State.DONE}
