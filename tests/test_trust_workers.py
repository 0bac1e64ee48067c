r"""Issue 10, the CPU worker pool: workers die with their driver, take what their task
started with them, are noticed at once when they die, report odd exceptions and results
for what they are, and are timed from when they begin a task.

At most two workers (the CI machines have two cores). Waits on processes use pidfds or
psutil with a generous limit: a guard against a hang, never a measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from conftest import statuses
from conftest import wait_gone as _wait_gone
from trust_workers_driver import busy_task, write_atomically

import asyncgraph as ag
from asyncgraph._executors import _worker
from asyncgraph._executors import process as _process

GUARD = 60  # seconds: a guard against a hang, not a bound
# The programs tasks start sleep far longer than any guard: one that is gone when a
# test looks was killed, it did not end on its own.
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def children_now() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: list[int], timeout: float = GUARD) -> list[int]:
    return _wait_gone(pids, timeout)


def kill_quietly(*pids: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def wait_for_file(path: Path) -> str:
    with anyio.fail_after(GUARD):
        while not path.exists():  # noqa: ASYNC110 - test-side wait for a task's marker
            await anyio.sleep(0.01)
    return path.read_text()


# -- 6: a worker dies with its driver --------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "sig"),
    [
        ("sleep", signal.SIGKILL),
        ("spin", signal.SIGKILL),
        ("sleep", signal.SIGTERM),
        ("fork", signal.SIGKILL),
    ],
)
def test_a_busy_worker_and_what_its_task_started_die_with_the_driver(
    tmp_path: Path, mode: str, sig: int
) -> None:
    r"""
    driver --(pool of 1)--> worker: busy() --> sleep 300
    Kill the driver alone (the OOM killer, docker stop): the worker and the program its
    task started go too, whatever the worker was doing; in ``fork`` mode a fork of the
    driver keeps the pool's pipes open, so only the kernel's parent-death signal tells.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    proc = subprocess.Popen(
        [sys.executable, "-c", "import trust_workers_driver as d; d.main()", mode, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    pids: list[int] = []
    fork = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            words = line.split()
            if words[0] == "worker":
                pids = [int(words[1]), int(words[2])]
            elif words[0] == "fork":
                fork = int(words[1])
            if pids and (mode != "fork" or fork is not None):
                break
        assert pids, "the driver ended before its worker started the task"
        assert all(not gone(p) for p in pids)
        proc.send_signal(sig)
        proc.wait(timeout=GUARD)
        left = wait_gone(pids)
        assert left == [], f"left running after the driver died: {left}"
        if fork is not None:
            assert not gone(fork)  # the premise: it held the pipes all along
    finally:
        kill_quietly(proc.pid, *pids, *([fork] if fork else []))
        proc.wait(timeout=GUARD)
        if proc.stdout is not None:
            proc.stdout.close()


async def call_on(pool: _process.ProcessPool, fn: Callable[[], Any]) -> Any:
    """``fn()`` on a worker of ``pool``: its value."""
    return pickle.loads(await pool.call("t", _process.cloudpickle.dumps(fn), ([], {})))


async def busy_worker_stops(
    pool: _process.ProcessPool, busy: Callable[[], None], marker: Path, tell: Callable[[int], None]
) -> int:
    """Run ``busy`` on ``pool``, ``tell`` its worker (by pid) that the driver is gone, and
    check that the worker killed its group: SIGKILL, ``sleep`` gone. Returns the pid."""
    call = asyncio.ensure_future(pool.call("busy", _process.cloudpickle.dumps(busy), ([], {})))
    worker, child = map(int, (await wait_for_file(marker)).split())
    tell(worker)
    with anyio.fail_after(GUARD):
        with pytest.raises(ag.WorkerDiedError) as info:
            await call
    assert info.value.exitcode == -signal.SIGKILL
    assert wait_gone([worker, child]) == []
    return worker


async def test_the_watchdog_alone_stops_a_worker_whose_driver_pipe_closes(tmp_path: Path):
    r"""
    The portable fallback, without the kernel's help: the pool's end of the watchdog pipe
    closes (as when the driver dies) while its own process, the worker's parent, lives.
    The worker stops its process group (its task's ``sleep`` too) by itself.
    """
    marker = tmp_path / "busy"
    pool = _process.ProcessPool(1)
    try:
        await busy_worker_stops(
            pool,
            busy_task(str(tmp_path)),
            marker,
            lambda _: pool._close_watchdog(),  # what the driver's death does to the pipe
        )
    finally:
        await pool.aclose()


def parent_died(pid: int) -> None:
    """What the kernel sends a worker when the driver's thread that started it exits."""
    os.kill(pid, _worker._PARENT_DIED)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_the_parent_death_signal_taken_by_another_thread_still_stops_the_worker(
    tmp_path: Path,
):
    r"""
    kernel --_PARENT_DIED--> worker: a thread other than the main one (main: time.sleep)
    The signal is the process's, and the kernel may give it to any thread: under load a
    killed driver's two reparentings sent it twice and the watchdog thread took both,
    so the Python handler (main thread only) never ran and the worker slept on. Here the
    task's main thread blocks the signal, so only another thread can take it; the
    worker must still stop, with its task's ``sleep``.
    """
    marker = tmp_path / "busy"
    pool = _process.ProcessPool(1)
    try:
        await busy_worker_stops(
            pool, busy_task(str(tmp_path), block=_worker._PARENT_DIED), marker, parent_died
        )
    finally:
        await pool.aclose()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_task_that_took_the_signals_wakeup_and_handler_does_not_disarm_the_next(
    tmp_path: Path,
):
    r"""
    call 1: set_wakeup_fd(-1), SIG_DFL for the parent-death signal (an asyncio loop with
            signal handlers leaves no wakeup fd behind when it closes)
    call 2: as above, the signal blocked in the main thread; the kernel's signal comes
    The worker puts its wakeup pipe and handler back after each call, so call 2's worker
    still stops, with its ``sleep``, instead of sleeping on (or dying of the default
    action without its group).
    """
    marker = tmp_path / "busy"
    died = _worker._PARENT_DIED

    def disarm(sig=died):
        signal.set_wakeup_fd(-1)
        signal.signal(sig, signal.SIG_DFL)
        return os.getpid()

    pool = _process.ProcessPool(1)
    try:
        first = await call_on(pool, disarm)
        worker = await busy_worker_stops(
            pool, busy_task(str(tmp_path), block=died), marker, parent_died
        )
        assert worker == first  # the same worker: what call 1 did was still in force
    finally:
        await pool.aclose()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_task_that_closes_the_signals_wakeup_pipe_still_gets_its_result_back():
    """The worker cannot put back a pipe the task closed: it goes on without it (the
    handler and the watchdog pipe remain), and the task's result still comes back."""

    def close_it():
        fd = signal.set_wakeup_fd(-1)
        os.close(fd)
        return fd

    pool = _process.ProcessPool(1)
    try:
        with anyio.fail_after(GUARD):
            assert await call_on(pool, close_it) > 2
            assert await call_on(pool, lambda: 1) == 1
    finally:
        await pool.aclose()


def test_a_worker_whose_driver_died_before_it_started_stops_at_once() -> None:
    r"""
    The race PR_SET_PDEATHSIG leaves open: the driver died before the worker asked for
    the signal. The worker compares its parent with the pid it was given, and stops.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _process._BOOT, _process._WORKER, "2", "1", "-1"],
        input=_process._worker_code(),  # its code, as the pool sends it first
        capture_output=True,
        timeout=GUARD,
        start_new_session=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


# -- 7: a timeout, a cancel and the pool's end stop what a task started -------------------


async def test_a_cpu_timeout_also_kills_the_program_the_task_started(tmp_path: Path):
    r"""
      warm (cpu) --> starts_sleep (cpu, timeout=1)
    ``warm`` starts the only worker, so the timeout runs on a warm worker; the task starts
    ``sleep 300``, notes its pid and blocks. The timeout must kill the sleep too.
    """
    marker = tmp_path / "child"

    def starts_sleep(_, path=str(marker)):
        child = subprocess.Popen(["sleep", "300"])
        write_atomically(Path(path), str(child.pid))
        time.sleep(3600)

    g = ag.Graph()
    g.add("warm", os.getpid, kind="cpu")
    g.add("starts_sleep", starts_sleep, deps=["warm"], kind="cpu", timeout=1)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    assert isinstance(out.errors["starts_sleep"], TimeoutError)
    assert marker.exists(), "the timeout came before the task started its program"
    assert wait_gone([int(marker.read_text())]) == []
    assert children_now() == []


@pytest.mark.parametrize("how", ["cancel", "fail_fast"])
async def test_stopping_a_run_kills_the_program_a_cpu_task_started(tmp_path: Path, how: str):
    r"""
      starts_sleep (cpu: starts `sleep 300`, notes it, blocks)    trips (io, fail_fast)
    The run is cancelled from outside, or ``trips`` fails once the sleep runs and
    ``fail_fast`` cancels the rest (the path a deadline takes too): the sleep goes.
    """
    marker = tmp_path / "child"

    def starts_sleep(path=str(marker)):
        child = subprocess.Popen(["sleep", "300"])
        write_atomically(Path(path), f"{os.getpid()} {child.pid}")
        time.sleep(3600)

    async def trips():
        await wait_for_file(marker)
        raise ValueError("tripped")

    g = ag.Graph()
    g.add("starts_sleep", starts_sleep, kind="cpu")
    if how == "fail_fast":
        g.add("trips", trips)
    run = asyncio.ensure_future(ag.run(g, cpu_workers=1, fail_fast=how == "fail_fast"))
    pids = [int(p) for p in (await wait_for_file(marker)).split()]
    if how == "cancel":
        run.cancel()
    with anyio.fail_after(GUARD), pytest.raises((asyncio.CancelledError, ag.TaskFailures)):
        await run
    assert wait_gone(pids) == []
    assert children_now() == []


async def test_a_program_left_running_by_a_cpu_task_ends_with_the_run(tmp_path: Path):
    r"""The task returns and leaves ``sleep 300`` running: it goes when the pool closes."""

    def leaves_sleep():
        return subprocess.Popen(["sleep", "300"]).pid

    g = ag.Graph()
    g.add("leaves_sleep", leaves_sleep, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    assert wait_gone([out.results["leaves_sleep"]]) == []


# -- 8: a worker that forks and dies is noticed at once -----------------------------------


async def test_a_worker_that_forks_and_dies_fails_its_task_at_once(tmp_path: Path):
    r"""
      forks_and_dies (cpu): fork a child that sleeps 300 s holding the worker's pipes,
      then os._exit(3)        fine (cpu) runs afterwards in a fresh worker
    The run must not wait for the fork (the guard is shorter than its sleep), and the
    fork goes with its worker's process group.
    """
    marker = tmp_path / "fork"

    def forks_and_dies(path=str(marker)):
        pid = os.fork()
        if pid == 0:
            time.sleep(300)
            os._exit(0)
        write_atomically(Path(path), str(pid))
        os._exit(3)

    g = ag.Graph()
    g.add("forks_and_dies", forks_and_dies, kind="cpu")
    g.add("fine", lambda: "served", kind="cpu")
    with anyio.fail_after(30):
        out = await ag.run(g, cpu_workers=1)
    err = out.errors["forks_and_dies"]
    assert isinstance(err, ag.WorkerDiedError), repr(err)
    assert err.exitcode == 3
    assert out.results["fine"] == "served"
    assert wait_gone([int(marker.read_text())]) == []
    assert children_now() == []


# -- 20: odd exceptions, results that cannot come back, idle workers that died --------------


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


async def test_an_exception_whose_str_raises_is_reported_by_its_type():
    def raises_bad_str():
        raise BadStr()

    g = ag.Graph()
    g.add("bad_str", raises_bad_str, kind="cpu")
    g.add("fine", lambda: 1, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    err = out.errors["bad_str"]
    assert isinstance(err, ag.RemoteError), repr(err)
    assert err.type_name.endswith("BadStr")
    assert "str() raised RuntimeError" in err.message
    assert "raises_bad_str" in err.traceback
    assert out.results == {"fine": 1}


def _only_in_worker() -> Any:
    """An object of a class from a module that exists only in the worker process."""
    import sys
    import types

    mod = types.ModuleType("made_in_the_worker")
    exec("class Thing:\n    pass\n", mod.__dict__)
    sys.modules["made_in_the_worker"] = mod
    return mod.Thing()


async def test_a_result_that_cannot_be_unpickled_here_is_reported_as_such_and_not_retried():
    g = ag.Graph()
    g.add("alien", _only_in_worker, kind="cpu", retries=2, retry_delay=0)
    g.add("after", lambda a: a, deps=["alien"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    assert statuses(out) == {"alien": "failed", "after": "skipped"}
    err = out.errors["alien"]
    assert isinstance(err, ag.UnpicklingError), repr(err)
    assert err.task == "alien"
    assert err.what == "result"
    text = str(err)
    assert "result of task 'alien'" in text
    assert "ModuleNotFoundError" in text and "made_in_the_worker" in text
    assert "kind='io'" in text
    assert out.records["alien"].attempts == 1  # it would fail again: not retried


async def test_an_idle_worker_killed_between_tasks_is_replaced_transparently():
    r"""
      first (cpu) -> kill_it (io: SIGKILL first's worker, wait until it is gone) -> second (cpu)
      first (cpu) -> kill_now (io: SIGKILL, no wait) -> third (cpu)
    In one pool of one worker: the next CPU task never started in the dead worker, so it
    gets a new one and runs once, with no retry allowed.
    """

    async def kill_it(pid):
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(GUARD):
            while not gone(pid):  # noqa: ASYNC110 - test-side wait for the pid to go
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)  # let the pool hear of it (either way must work)
        return pid

    def kill_now(pid):
        os.kill(pid, signal.SIGKILL)
        return pid

    g = ag.Graph()
    g.add("first", os.getpid, kind="cpu")
    g.add("kill_it", kill_it, deps=["first"])
    g.add("second", lambda _: os.getpid(), deps=["kill_it"], kind="cpu")
    g.add("kill_now", kill_now, deps=["second"])
    g.add("third", lambda _: os.getpid(), deps=["kill_now"], kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    assert statuses(out) == dict.fromkeys(g.tasks, "done"), out.errors
    pids = [out.results[n] for n in ("first", "second", "third")]
    assert len(set(pids)) == 3
    assert out.records["second"].attempts == 1
    assert out.records["third"].attempts == 1
    assert children_now() == []


async def test_a_worker_that_dies_before_every_start_is_respawned_once_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    spawns = tmp_path / "spawns"
    boot = f"import os; open({str(spawns)!r}, 'a').write('x'); os._exit(5)"
    monkeypatch.setattr(_process, "_BOOT", boot)
    g = ag.Graph()
    g.add("never", lambda: 1, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    err = out.errors["never"]
    assert isinstance(err, ag.WorkerDiedError), repr(err)
    assert err.exitcode == 5
    assert spawns.read_text() == "xx"  # the first worker, and one more: never a loop


# -- 22: a CPU task is timed from when its worker begins it ------------------------------


async def test_a_cpu_task_is_timed_from_when_its_worker_began_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    r"""
    A ``sitecustomize`` (on the workers' PYTHONPATH) stamps each worker's interpreter start
    into a file. On a fresh pool the recorded start of the task (in the graph, and in the
    store) is after its worker's interpreter started, and before the task's own first line.
    """
    site = tmp_path / "site"
    site.mkdir()
    stamps = tmp_path / "stamps"
    (site / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import os, time
            with open({str(stamps)!r}, "a") as f:
                f.write(f"{{os.getpid()}} {{time.time()!r}}\\n")
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))

    def work():
        return os.getpid(), time.time()

    g = ag.Graph()
    g.add("work", work, kind="cpu")
    db = tmp_path / "s.db"
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1, store=db)
    pid, began = out.results["work"]
    booted = {
        int(p): float(t) for p, t in (line.split() for line in stamps.read_text().splitlines())
    }
    rec = out.records["work"]
    assert booted[pid] <= rec.started <= began <= rec.finished
    stored = ag.load(g, db).records["work"]
    assert stored.started == rec.started
    assert stored.finished == rec.finished


# -- 25: functions a worker cannot load -------------------------------------------------


def _module_from_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, source: str
) -> types.ModuleType:
    path = tmp_path / "elsewhere" / f"{name}.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


async def test_a_function_from_a_module_workers_cannot_import_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    r"""
      first (io)    from_file (cpu: its module was loaded from a path not on sys.path)
                    uses_module (cpu: a closure that uses that module)
                    holds_lock (cpu: cannot be pickled)    fine (cpu)
    Nothing runs; the error names every task that cannot be shipped and says what to do.
    """
    module = _module_from_file(
        monkeypatch, tmp_path, "loaded_by_path", "def work():\n    return 1\n"
    )
    lock = threading.Lock()
    ran = []
    g = ag.Graph()
    g.add("first", lambda: ran.append(1))
    g.add("from_file", module.work, kind="cpu")
    g.add("uses_module", lambda: module.work() + 1, kind="cpu")
    g.add("holds_lock", lambda: lock.locked(), kind="cpu")
    g.add("fine", lambda: 2, kind="cpu")
    with pytest.raises(ag.PicklingError) as info:
        await ag.run(g, cpu_workers=1)
    err = info.value
    assert err.tasks == ("from_file", "uses_module", "holds_lock")
    assert err.task == "from_file"
    text = str(err)
    assert "3 tasks run in worker processes" in text
    for name in err.tasks:
        assert f"task {name!r}" in text
        assert name in err.problems
    assert "'loaded_by_path'" in text and "sys.path" in text
    assert "register_pickle_by_value" in text
    assert "cannot be pickled" in text
    assert ran == []
    # Put its directory on sys.path, and it runs.
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    g2 = ag.Graph()
    g2.add("from_file", module.work, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g2, cpu_workers=1)
    assert out.results == {"from_file": 1}


async def test_a_function_a_worker_fails_to_load_fails_at_once_without_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    r"""
    The module is on sys.path, so the check before the run passes; but it refuses to be
    imported anywhere asyncgraph is not loaded (a worker never imports asyncgraph).
    """
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    module = _module_from_file(
        monkeypatch,
        tmp_path,
        "driver_only",
        """
        import sys
        if "asyncgraph" not in sys.modules:
            raise ImportError("driver_only refuses to load outside the driver")

        def work():
            return 1
        """,
    )
    g = ag.Graph()
    g.add("cannot_load", module.work, kind="cpu", retries=3, retry_delay=0)
    g.add("fine", lambda: 2, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    err = out.errors["cannot_load"]
    assert isinstance(err, ag.UnpicklingError), repr(err)
    assert err.what == "function"
    text = str(err)
    assert "task 'cannot_load'" in text
    assert "driver_only refuses to load" in text
    assert out.records["cannot_load"].attempts == 1
    assert out.results == {"fine": 2}


async def test_run_sync_in_a_helper_thread_keeps_its_workers_for_the_whole_run():
    r"""
      first (cpu) -> pause (io, 0.3 s) -> second (cpu)
    ``run_sync`` inside a running loop runs on a helper thread; the workers it starts
    there must not get the parent-death signal while the run goes on (the signal follows
    the thread that started a process): one worker serves both tasks.
    """

    async def pause(_):
        await asyncio.sleep(0.3)

    g = ag.Graph()
    g.add("first", os.getpid, kind="cpu")
    g.add("pause", pause, deps=["first"])
    g.add("second", lambda _: os.getpid(), deps=["pause"], kind="cpu")
    out = await anyio.to_thread.run_sync(lambda: asyncio.run(_in_a_loop(g)))
    assert statuses(out) == dict.fromkeys(g.tasks, "done"), out.errors
    assert out.results["first"] == out.results["second"]
    assert children_now() == []


async def _in_a_loop(g: ag.Graph) -> ag.Graph:
    return ag.run_sync(g, cpu_workers=1)  # a loop runs here: the helper-thread mode
