"""What each backend adds beyond the shared cases (tests/test_backend_matrix.py):

* ProcessBackend: its lifetime (start, close, refused when not started or closed), one
  pool for many runs (the same workers, on any loop, from ``run_sync`` too), each run's
  limits, one run's cancellation not touching another's task, a dead worker replaced,
  closing it under a run, nothing left after close;
* InlineBackend: the calling thread (``breakpoint()`` works), exact order;
* ExecutorBackend: the user's executor is never shut down, a lambda from ``__main__``
  ships to a spawned executor, bad arguments;
* ``default_cpu_workers``; the compat layer's shared pool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import anyio
import psutil
import pytest
from backends import children_now, stop_resource_tracker

import asyncgraph as ag

GUARD = 120  # seconds: a guard against a hang, not a bound
ROOT = Path(__file__).resolve().parents[1]


def pid() -> int:
    return os.getpid()


def pids_graph(n: int = 4) -> ag.Graph:
    g = ag.Graph()
    for i in range(n):
        g.add(f"p{i}", pid, kind="cpu")
    return g


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asyncgraph ProcessBackend")]


# -- ProcessBackend: its lifetime -------------------------------------------------------


async def test_a_pool_serves_many_runs_with_the_same_workers() -> None:
    async with ag.ProcessBackend(workers=2) as pool:
        workers = {p.pid for p in children_now()}
        assert len(workers) == 2  # started with the pool, before any run
        seen: set[int] = set()
        for _ in range(3):
            with anyio.fail_after(GUARD):
                out = await ag.run(pids_graph(), backend=pool)
            seen |= set(out.results.values())
        assert seen <= workers  # no run started a worker of its own
        assert {p.pid for p in children_now()} == workers
    assert children_now() == []
    assert pool_threads() == []
    assert pool.closed and not pool.started


def test_a_pool_serves_run_sync_on_fresh_loops_and_a_second_thread() -> None:
    with ag.ProcessBackend(workers=2) as pool:
        workers = {p.pid for p in children_now()}
        first = ag.run_sync(pids_graph(), backend=pool)
        second = ag.run_sync(pids_graph(), backend=pool)  # another loop
        from_thread: list[ag.Graph] = []
        t = threading.Thread(
            target=lambda: from_thread.append(ag.run_sync(pids_graph(), backend=pool))
        )
        t.start()
        t.join(GUARD)
        seen = {*first.results.values(), *second.results.values(), *from_thread[0].results.values()}
        assert seen <= workers
    assert children_now() == []
    assert pool_threads() == []


async def test_a_pool_not_started_or_closed_is_refused_naming_what_to_do(tmp_path: Path) -> None:
    pool = ag.ProcessBackend(workers=1)
    with pytest.raises(RuntimeError, match=r"is not started: use `async with ag.ProcessBackend"):
        await ag.run(pids_graph(1), backend=pool)
    db = tmp_path / "s.db"
    with pytest.raises(RuntimeError, match="is not started"):
        await ag.run(pids_graph(1), backend=pool, store=db)
    assert len(ag.history(db)) == 0  # nothing recorded
    await pool.start()
    assert (await pool.start()) is pool  # starting again does nothing
    await pool.aclose()
    await pool.aclose()  # closing again does nothing
    pool.close()
    with pytest.raises(RuntimeError, match="was closed; make a new one"):
        await ag.run(pids_graph(1), backend=pool)
    with pytest.raises(RuntimeError, match="was closed; make a new one"):
        await pool.start()
    assert children_now() == []
    assert "ProcessBackend(workers=1) <closed>" in repr(pool)


@pytest.mark.parametrize(
    ("workers", "error", "match"),
    [(0, ValueError, "workers must be at least 1"), ("2", TypeError, "workers must be an int"),
     (True, TypeError, "workers must be an int")],
)
def test_bad_workers_are_refused(workers: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ag.ProcessBackend(workers=workers)  # type: ignore[arg-type]


def test_a_pool_nobody_closed_is_closed_at_exit() -> None:
    code = """
        import os, sys, asyncgraph as ag
        pool = ag.ProcessBackend(workers=2).__enter__()
        g = ag.Graph(); g.add("p", os.getpid, kind="cpu")
        print(ag.run_sync(g, backend=pool).results["p"], flush=True)
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=GUARD, env=env)
    assert proc.returncode == 0, proc.stderr
    worker = int(proc.stdout.split()[0])
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == "zombie"


# -- ProcessBackend: shared by concurrent runs ------------------------------------------


async def test_concurrent_runs_keep_their_own_limits(tmp_path: Path) -> None:
    """Two runs with cpu_workers=1 each on a pool of 2: neither overlaps itself (a file
    claimed exclusively per run), and they run at the same time (both are inside at
    once: each waits for the other's file)."""

    def inside(run: str, other: str, root: str = str(tmp_path)) -> str:
        import time

        mine = os.path.join(root, run)
        fd = os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails on self-overlap
        os.close(fd)
        open(os.path.join(root, f"{run}.seen"), "a").close()
        while not os.path.exists(os.path.join(root, f"{other}.seen")):
            time.sleep(0.01)  # the other run is inside too: they overlap
        os.unlink(mine)
        return run

    def graph(run: str, other: str) -> ag.Graph:
        g = ag.Graph()
        for i in range(3):
            g.add(f"{run}{i}", lambda run=run, other=other: inside(run, other), kind="cpu")
        return g

    async with ag.ProcessBackend(workers=2) as pool:
        with anyio.fail_after(GUARD):
            a, b = await asyncio.gather(
                ag.run(graph("a", "b"), backend=pool, cpu_workers=1),
                ag.run(graph("b", "a"), backend=pool, cpu_workers=1),
            )
    assert set(a.results.values()) == {"a"} and set(b.results.values()) == {"b"}


async def test_cancelling_one_run_does_not_touch_another_runs_task(tmp_path: Path) -> None:
    def block(name: str, root: str = str(tmp_path)) -> str:
        import time

        open(os.path.join(root, f"{name}.started"), "w").close()
        while not os.path.exists(os.path.join(root, f"{name}.release")):
            time.sleep(0.01)
        return f"{name} done"

    def graph(name: str) -> ag.Graph:
        g = ag.Graph()
        g.add(name, lambda: block(name), kind="cpu")
        return g

    async with ag.ProcessBackend(workers=2) as pool:
        victim = asyncio.ensure_future(ag.run(graph("victim"), backend=pool))
        survivor = asyncio.ensure_future(ag.run(graph("survivor"), backend=pool))
        with anyio.fail_after(GUARD):
            names = ("victim", "survivor")
            while not all((tmp_path / f"{n}.started").exists() for n in names):  # noqa: ASYNC110
                await anyio.sleep(0.01)  # test-side wait for the workers
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        assert not survivor.done()
        (tmp_path / "survivor.release").touch()
        with anyio.fail_after(GUARD):
            out = await survivor
        assert out.results == {"survivor": "survivor done"}
        # The victim's worker was killed and is replaced for the next run.
        with anyio.fail_after(GUARD):
            again = await ag.run(pids_graph(2), backend=pool)
        assert set(again.status.values()) == {ag.State.DONE}
        assert len(children_now()) <= 2


async def test_a_dead_worker_is_replaced() -> None:
    g = ag.Graph()
    g.add("killer", lambda: os._exit(9), kind="cpu")
    async with ag.ProcessBackend(workers=1) as pool:
        (before,) = {p.pid for p in children_now()}
        with anyio.fail_after(GUARD):
            out = await ag.run(g, backend=pool)
        assert isinstance(out.errors["killer"], ag.WorkerDiedError)
        assert out.errors["killer"].exitcode == 9
        with anyio.fail_after(GUARD):
            out = await ag.run(pids_graph(1), backend=pool)
        assert out.results["p0"] != before  # a fresh worker
        assert {p.pid for p in children_now()} == {out.results["p0"]}


async def test_closing_the_pool_under_a_run_fails_its_task_saying_so(tmp_path: Path) -> None:
    started = tmp_path / "started"

    def block(path: str = str(started)) -> None:
        import time

        open(path, "w").close()
        time.sleep(3600)

    g = ag.Graph()
    g.add("block", block, kind="cpu")
    g.add("below", lambda b: b, deps=["block"], kind="cpu")
    pool = await ag.ProcessBackend(workers=1).start()
    run = asyncio.ensure_future(ag.run(g, backend=pool))
    with anyio.fail_after(GUARD):
        while not started.exists():  # noqa: ASYNC110 - test-side wait for the worker
            await anyio.sleep(0.01)
        await pool.aclose()
        out = await run
    assert out.status["block"] is ag.State.FAILED
    assert "was closed while it ran" in str(out.errors["block"])
    assert out.status["below"] is ag.State.SKIPPED
    assert children_now() == []


# -- InlineBackend ----------------------------------------------------------------------


def test_inline_runs_on_the_calling_thread_so_breakpoint_works(monkeypatch) -> None:
    hits: list[int] = []
    monkeypatch.setattr(sys, "breakpointhook", lambda *a, **k: hits.append(threading.get_ident()))

    def stop_here(x: int) -> int:
        breakpoint()
        return x + 1

    g = ag.Graph()
    g.add("a", lambda: 1, kind="cpu")
    g.add("b", stop_here, deps=["a"], kind="cpu")
    g.add("c", stop_here, deps=["b"])  # a plain IO function: the calling thread too
    out = ag.run_sync(g, backend=ag.InlineBackend())
    assert out.results == {"a": 1, "b": 2, "c": 3}
    assert hits == [threading.get_ident()] * 2


async def test_inline_coroutines_stay_on_the_loop_and_overlap() -> None:
    both = asyncio.Barrier(2)

    async def meet() -> str:
        await both.wait()  # both must be waiting at once
        return "met"

    g = ag.Graph()
    g.add("io_a", meet)
    g.add("io_b", meet)
    with anyio.fail_after(GUARD):
        out = await ag.run(g, backend=ag.InlineBackend())
    assert out.results == {"io_a": "met", "io_b": "met"}


# -- ExecutorBackend --------------------------------------------------------------------


async def test_the_users_executor_is_never_shut_down() -> None:
    with ThreadPoolExecutor(2) as executor:
        backend = ag.ExecutorBackend(executor)
        assert backend.workers == 2 and not backend.processes
        g = ag.Graph()
        g.add("t", lambda: threading.get_ident(), kind="cpu")
        out = await ag.run(g, backend=backend)
        assert out.results["t"] != threading.get_ident()
        assert executor.submit(lambda: "still open").result(GUARD) == "still open"
    with pytest.raises(RuntimeError):
        executor.submit(int)
    g = ag.Graph()
    g.add("t", lambda: 1, kind="cpu")
    out = await ag.run(g, backend=backend)  # the user shut it down: the task says so
    assert "was shut down: keep it open" in str(out.errors["t"])


def test_a_lambda_from_main_ships_to_a_spawned_executor() -> None:
    """A script's own functions reach a spawned ProcessPoolExecutor by value, and the
    workers never import asyncgraph (they have only cloudpickle)."""
    code = """
        import multiprocessing, sys
        from concurrent.futures import ProcessPoolExecutor
        import asyncgraph as ag

        def square(x):
            return x * x, "asyncgraph" in sys.modules

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(2, mp_context=ctx) as ex:
                g = ag.Graph()
                g.add("x", lambda: 9, kind="cpu")
                g.add("sq", square, deps=["x"], kind="cpu")
                print(ag.run_sync(g, backend=ag.ExecutorBackend(ex)).results)
                print(ex.submit(sum, [1, 2]).result())
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=GUARD, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "{'x': 9, 'sq': (81, False)}" in proc.stdout
    assert proc.stdout.split()[-1] == "3"  # the executor is still the user's, and open


def test_bad_executor_backend_arguments() -> None:
    with pytest.raises(TypeError, match="ExecutorBackend takes a concurrent.futures.Executor"):
        ag.ExecutorBackend("processes")  # type: ignore[arg-type]
    with ThreadPoolExecutor(1) as ex:
        with pytest.raises(ValueError, match="workers must be at least 1"):
            ag.ExecutorBackend(ex, workers=0)
        with pytest.raises(TypeError, match="processes must be True, False or None"):
            ag.ExecutorBackend(ex, processes="yes")  # type: ignore[arg-type]
        assert ag.ExecutorBackend(ex, processes=True).processes


async def test_a_broken_process_pool_fails_the_tasks_with_worker_died() -> None:
    g = ag.Graph()
    g.add("killer", lambda: os._exit(1), kind="cpu")
    with ProcessPoolExecutor(1) as executor:
        out = await ag.run(g, backend=ag.ExecutorBackend(executor))
        err = out.errors["killer"]
        assert isinstance(err, ag.WorkerDiedError)
        assert "asyncgraph does not replace an executor it was given" in str(err)
        g2 = ag.Graph()
        g2.add("later", lambda: 1, kind="cpu")
        out = await ag.run(g2, backend=ag.ExecutorBackend(executor))
        assert isinstance(out.errors["later"], ag.WorkerDiedError)  # broken for good
    stop_resource_tracker()


# -- how many CPU tasks a run takes at once ---------------------------------------------


def test_a_run_without_cpu_workers_takes_the_backends_size() -> None:
    from asyncgraph._options import RunOptions

    pool = ag.ProcessBackend(workers=5)
    assert RunOptions(backend=pool).cpu_workers == 5
    assert RunOptions(backend=pool, cpu_workers=2).cpu_workers == 2
    assert RunOptions(backend=ag.InlineBackend()).cpu_workers == 1
    with ThreadPoolExecutor(3) as ex:
        assert RunOptions(backend=ag.ExecutorBackend(ex)).cpu_workers == 3
    assert RunOptions().cpu_workers == (os.cpu_count() or 1)


# -- the taskmap compat layer's shared pool ---------------------------------------------


def test_taskmap_parallel_runs_share_workers_that_stop_when_idle() -> None:
    import asyncgraph.compat.taskmap as taskmap

    def graph() -> taskmap.Graph:
        return taskmap.create_graph({"a": pid, "b": pid}, {"a": [], "b": []})

    first = taskmap.run_parallel(graph(), nprocs=2)
    second = taskmap.run_parallel(graph(), nprocs=2)
    workers = {*first.results.values(), *second.results.values()}
    assert os.getpid() not in workers
    assert len(workers) <= 2  # the second run reused the first's workers
    procs = [psutil.Process(p) for p in workers if psutil.pid_exists(p)]
    _gone, alive = psutil.wait_procs(procs, timeout=taskmap.IDLE_SECONDS + GUARD)
    assert alive == []  # stopped once idle


def test_ctrl_c_interrupts_a_plain_function_running_inline() -> None:
    """On the calling thread, Ctrl-C raises KeyboardInterrupt in the running function
    (as in a plain script), and run_sync ends with it after its cleanup."""
    code = """
        import asyncgraph as ag

        def spin():
            print("spinning", flush=True)
            while True:
                pass

        g = ag.Graph()
        g.add("spin", spin, kind="cpu")
        g.add("after", lambda s: s, deps=["spin"])
        try:
            ag.run_sync(g, backend=ag.InlineBackend())
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "spinning"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=GUARD)
    finally:
        proc.kill()
    assert "interrupted" in out
    assert proc.returncode == 0


def test_a_backend_class_instead_of_an_instance_is_refused() -> None:
    g = ag.Graph()
    g.add("a", lambda: 1, kind="cpu")
    match = r"not the class ProcessBackend: pass ProcessBackend\(\.\.\.\)"
    with pytest.raises(TypeError, match=match):
        ag.run_sync(g, backend=ag.ProcessBackend)  # type: ignore[arg-type]
