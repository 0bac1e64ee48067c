"""CPU tasks in worker processes: pickling, dead workers, bad exceptions, no leftovers.

At most two workers (the CI machines have two cores).
"""

from __future__ import annotations

import asyncio
import io
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import psutil
import pytest
from conftest import statuses

import asyncgraph as ag

GUARD = 60
ROOT = Path(__file__).resolve().parents[1]


def children_now() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


def where():
    return os.getpid()


class Unpicklable(Exception):
    """Pickles, but cannot be rebuilt: __init__ needs two arguments, args holds one."""

    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")
        self.code = code


class HoldsALock(Exception):
    def __init__(self):
        super().__init__("holding a lock")
        self.lock = threading.Lock()


async def test_lambda_closure_and_async_function_run_in_workers():
    factor = 7

    def closure(x):
        return x * factor  # a closure: plain pickle could not send it

    async def async_cpu(x):
        await asyncio.sleep(0)
        return (x, os.getpid(), type(asyncio.get_running_loop()).__name__)

    g = ag.Graph()
    g.add("base", lambda: 6, kind="cpu")
    g.add("scaled", closure, deps=["base"], kind="cpu")
    g.add("pid", where, kind="cpu")
    g.add("aio", async_cpu, deps=["scaled"], kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=2)
    assert out.results["scaled"] == 42
    assert out.results["pid"] != os.getpid()
    value, pid, _ = out.results["aio"]
    assert value == 42
    assert pid != os.getpid()
    assert children_now() == []


async def test_worker_killed_by_a_signal_fails_only_its_task():
    r"""
      killer (SIGKILLs its own worker)      fine_1 .. fine_4 (cpu)      after_killer
    Two workers; killer's worker dies, the pool is replaced, the others all finish.
    """
    g = ag.Graph()
    g.add("killer", lambda: os.kill(os.getpid(), signal.SIGKILL), kind="cpu")
    g.add("after_killer", lambda k: k, deps=["killer"], kind="cpu")
    for i in range(4):
        g.add(f"fine_{i}", lambda i=i: i * i, kind="cpu", deps=[])
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=2)
    assert statuses(out) == {
        "killer": "failed", "after_killer": "skipped",
        **{f"fine_{i}": "done" for i in range(4)},
    }
    err = out.errors["killer"]
    assert isinstance(err, ag.WorkerDiedError)
    assert err.exitcode == -signal.SIGKILL
    assert "'killer'" in str(err)
    assert "SIGKILL" in str(err)
    assert children_now() == []


async def test_worker_os_exit_and_a_transient_death_recovered_by_retry(tmp_path):
    marker = tmp_path / "died-once"

    def dies_once(path=str(marker)):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(3)
        return "second attempt"

    g = ag.Graph()
    g.add("exit3", lambda: os._exit(3), kind="cpu")
    g.add("transient", dies_once, kind="cpu", retries=1, retry_delay=0)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=2)
    assert out.errors["exit3"].exitcode == 3
    assert "exited with status 3" in str(out.errors["exit3"])
    assert out.results["transient"] == "second attempt"
    assert out.records["transient"].attempts == 2


async def test_unpicklable_exception_reaches_the_user_as_text():
    def raise_unpicklable():
        raise Unpicklable(7, "disk on fire")

    def raise_lock():
        raise HoldsALock()

    # The premise: it really cannot round-trip in a worker. Pickled without copyreg's
    # table, as a fresh worker does: importing distributed (another test module) runs
    # tblib's install(), which registers a reducer for every exception class there is.
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer)
    pickler.dispatch_table = {}
    pickler.dump(Unpicklable(7, "x"))
    with pytest.raises(TypeError):
        pickle.loads(buffer.getvalue())
    g = ag.Graph()
    g.add("rebuild_fails", raise_unpicklable, kind="cpu")
    g.add("pickle_fails", raise_lock, kind="cpu")
    g.add("fine", lambda: 1, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=2)
    assert out.results == {"fine": 1}
    err = out.errors["rebuild_fails"]
    assert isinstance(err, ag.RemoteError)
    assert err.type_name.endswith("Unpicklable")
    assert err.message == "code 7: disk on fire"
    assert "raise_unpicklable" in err.traceback
    assert "raise_unpicklable" in out.records["rebuild_fails"].traceback
    err2 = out.errors["pickle_fails"]
    assert isinstance(err2, ag.RemoteError)
    assert "HoldsALock" in str(err2)


async def test_picklable_exception_keeps_type_args_and_worker_traceback():
    def bad():
        raise KeyError("missing-key")

    g = ag.Graph()
    g.add("bad", bad, kind="cpu")
    out = await ag.run(g, cpu_workers=1)
    err = out.errors["bad"]
    assert type(err) is KeyError
    assert err.args == ("missing-key",)
    assert "in bad" in out.records["bad"].traceback


async def test_unpicklable_result_fails_the_task_and_the_run_goes_on():
    g = ag.Graph()
    g.add("lock", lambda: threading.Lock(), kind="cpu")
    g.add("uses_lock", lambda lock: lock, deps=["lock"], kind="cpu")
    g.add("fine", lambda: 2, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    assert statuses(out) == {"lock": "failed", "uses_lock": "skipped", "fine": "done"}
    assert "cannot be pickled" in str(out.errors["lock"])
    assert "task 'lock' (lock)" in str(out.errors["lock"])


async def test_unpicklable_argument_fails_the_task_with_its_name():
    g = ag.Graph()
    g.add("lock", lambda: threading.Lock())  # io: fine in-process
    g.add("cpu_user", lambda lock: 1, deps=["lock"], kind="cpu")
    out = await ag.run(g, cpu_workers=1)
    assert out.status["cpu_user"] is ag.State.FAILED
    assert "arguments of task 'cpu_user' cannot be pickled" in str(out.errors["cpu_user"])


async def test_unpicklable_function_is_refused_before_anything_runs():
    lock = threading.Lock()
    ran = []
    g = ag.Graph()
    g.add("first", lambda: ran.append(1))
    g.add("holds_lock", lambda: lock.locked(), kind="cpu")
    with pytest.raises(ag.PicklingError, match="'holds_lock'") as info:
        await ag.run(g)
    assert "kind='io'" in str(info.value)
    assert ran == []


async def test_cpu_timeout_kills_the_worker(tmp_path):
    pid_file = tmp_path / "pid"

    def spin(path=str(pid_file)):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        while True:
            pass

    g = ag.Graph()
    g.add("spin", spin, kind="cpu", timeout=0.5)
    g.add("after", lambda: "still served", kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    assert isinstance(out.errors["spin"], TimeoutError)
    assert out.results == {"after": "still served"}
    worker = int(pid_file.read_text())
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie"
    assert children_now() == []


async def test_cancel_stops_cpu_workers_and_leaves_no_process(tmp_path):
    started = tmp_path / "started"

    def block(path=str(started)):
        open(path, "w").close()
        import time

        time.sleep(3600)

    g = ag.Graph()
    g.add("block", block, kind="cpu")
    g.add("thread", lambda: 1)
    run = asyncio.ensure_future(ag.run(g, cpu_workers=2))
    with anyio.fail_after(GUARD):
        # Wait for the worker to start the task; the file appears when it does.
        while not started.exists():  # noqa: ASYNC110 - test-side wait, not the library
            await anyio.sleep(0.01)
    assert len(children_now()) == 1
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert children_now() == []


def run_script(code: str, *args: str, **popen) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=GUARD, env=env, **popen,
    )


def test_functions_defined_in_main_work_without_a_main_guard():
    r"""
    A script with no ``if __name__ == "__main__"``: workers must not re-run it (the
    print would appear once per worker) and its functions must reach them.
    """
    proc = run_script(
        """
        import asyncgraph as ag
        print("script body ran")

        def square(x):
            return x * x

        g = ag.Graph()
        g.add("x", lambda: 9, kind="cpu")
        g.add("sq", square, deps=["x"], kind="cpu")
        print(ag.run_sync(g, cpu_workers=2).results)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("script body ran") == 1
    assert "{'x': 9, 'sq': 81}" in proc.stdout


def test_print_in_a_worker_reaches_stdout():
    proc = run_script(
        """
        import asyncgraph as ag
        g = ag.Graph()
        g.add("talk", lambda: print("hello from a worker", flush=True), kind="cpu")
        ag.run_sync(g, cpu_workers=1)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "hello from a worker" in proc.stdout


def test_ctrl_c_in_run_sync_cancels_and_leaves_no_process():
    r"""
    The worker announces itself on stdout; we then send SIGINT to the script (only to it,
    as a terminal would to the foreground group minus the workers, which ignore it).
    """
    code = """
        import os, sys, time
        import asyncgraph as ag

        def block():
            print("worker", os.getpid(), flush=True)
            time.sleep(3600)

        g = ag.Graph()
        g.add("block", block, kind="cpu")
        try:
            ag.run_sync(g, cpu_workers=1)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("worker"), line
        worker = int(line.split()[1])
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=GUARD)
    finally:
        proc.kill()
    assert "interrupted" in out
    assert proc.returncode == 0
    assert not psutil.pid_exists(worker)


async def test_worker_killed_from_outside_mid_task(tmp_path):
    r"""
    As the out-of-memory killer would: the test SIGKILLs the worker while its task runs.
      victim (blocks, killed from outside) -> after_victim
      steady_0..2 (cpu), io_side (io)
    """
    pid_file = tmp_path / "victim.pid"

    def victim(path=str(pid_file)):
        import time

        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        time.sleep(3600)

    g = ag.Graph()
    g.add("victim", victim, kind="cpu")
    g.add("after_victim", lambda v: v, deps=["victim"], kind="cpu")
    for i in range(3):
        g.add(f"steady_{i}", lambda i=i: i, kind="cpu", deps=[])
    g.add("io_side", lambda: "io")
    run = asyncio.ensure_future(ag.run(g, cpu_workers=2))
    with anyio.fail_after(GUARD):
        while not pid_file.exists():  # noqa: ASYNC110 - test-side wait, not the library
            await anyio.sleep(0.01)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        out = await run
    assert statuses(out) == {
        "victim": "failed", "after_victim": "skipped", "io_side": "done",
        **{f"steady_{i}": "done" for i in range(3)},
    }
    assert out.errors["victim"].exitcode == -signal.SIGKILL
    assert children_now() == []


async def test_fail_fast_while_a_worker_starts_leaves_no_process():
    r"""
    An IO task fails after k loop turns while the CPU task's worker is being started
    and initialised; whatever moment the cancellation lands on, no worker survives.
    """
    for k in range(8):
        g = ag.Graph()
        g.add("cpu", where, kind="cpu")

        async def boom(k=k):
            for _ in range(k):
                await asyncio.sleep(0)
            raise ValueError("boom")

        g.add("io", boom)
        with anyio.fail_after(GUARD), pytest.raises(ag.TaskFailures):
            await ag.run(g, cpu_workers=1, fail_fast=True)
        assert children_now() == [], f"a worker survived with k={k}"


async def test_a_second_cancellation_during_cleanup_leaves_no_process():
    r"""
    The first cancel makes the run stop its children; 'stubborn' takes a while to end,
    and a second cancel lands meanwhile. The cleanup still finishes: no worker left.
    """
    started = anyio.Event()
    in_cleanup = anyio.Event()
    g = ag.Graph()
    g.add("cpu", where, kind="cpu")

    @g.task
    async def stubborn():
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            in_cleanup.set()
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.2)

    run = asyncio.ensure_future(ag.run(g, cpu_workers=1))
    with anyio.fail_after(GUARD):
        await started.wait()
        while not children_now():  # noqa: ASYNC110 - test-side wait for the worker
            await anyio.sleep(0.01)
        run.cancel()
        await in_cleanup.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert children_now() == []
