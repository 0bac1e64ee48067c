"""CPU tasks, issue 15: the pool starts with the run, a big result comes back in one
copy, and a shared pool replaces a dead worker at once and serves by priority.

    the run's start  -> check() -> ProcessPool.warm(n CPU tasks): workers start while
                        the IO tasks run, and import what the CPU functions name
    a big result     -> worker: pickle 5, out-of-band buffers -> a memfd
                        parent: mmap of /proc/<worker>/fd/<fd> (no copy) -> pickle.loads
                        a store: the same pickle with the buffers in it (``inband``)

No test here measures time: concurrency is shown by what a task sees (the run's own
children, a FIFO a worker writes to while an IO task reads it).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import pickle
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

import asyncgraph as ag
from asyncgraph._executors import _worker
from asyncgraph._executors.process import Mapped, ProcessExecutor, ProcessPool, inband

GUARD = 60  # seconds: a guard against a hang, not a bound

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd and /proc")


def _children() -> set[int]:
    """The pids of this process's children (from /proc)."""
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            found.add(int(entry))
    return found


def _pid(*_: Any) -> int:
    return os.getpid()


def _array(mb: int, readonly: bool = False) -> Any:
    import numpy as np

    a = np.arange(mb * 1024 * 1024 // 8, dtype=np.float64)
    if readonly:
        a.flags.writeable = False
    return {"a": a, "label": "x", "small": np.arange(3)}


def _frame(rows: int) -> Any:
    import numpy as np
    import pandas as pd

    values = np.arange(rows * 4, dtype=np.float64).reshape(rows, 4)
    return pd.DataFrame(values, columns=list("abcd"))


# -- the pool starts with the run -------------------------------------------------------


@linux
async def test_the_workers_start_while_the_runs_io_task_runs() -> None:
    seen: dict[str, set[int]] = {}

    async def io() -> None:
        for _ in range(10_000):  # loop turns, not time: the start is a few turns away
            kids = _children()
            if len(kids) >= 2:
                break
            await asyncio.sleep(0)
        seen["during io"] = kids

    g = ag.Graph()
    g.add("io", io)
    g.add("a", _pid, deps=["io"], kind="cpu")
    g.add("b", _pid, deps=["io"], kind="cpu")
    done = await asyncio.wait_for(ag.run(g, cpu_workers=2), GUARD)
    assert done.status["a"] is ag.State.DONE, done.errors
    # Both CPU tasks ran in workers that were up before either task was ready.
    assert {done.results["a"], done.results["b"]} <= seen["during io"]
    assert len(seen["during io"]) == 2


async def test_no_worker_starts_for_a_run_without_cpu_tasks_to_run(tmp_path: Path) -> None:
    g = ag.Graph()
    g.add("a", _pid, kind="cpu")
    g = ag.mark_done(g, ["a"], results={"a": 1})
    ex = ProcessExecutor(2)
    ex.check(g._dag.tasks, [])
    assert ex.pool is None
    done = await ag.run(g)
    assert done.results["a"] == 1


async def test_workers_start_no_more_than_the_cpu_tasks_to_run() -> None:
    pool = ProcessPool(4)
    try:
        pool.warm(1)
        assert pool._warming is not None
        await pool._warming
        assert len(pool._idle) == 1
        pool.warm(1)  # enough are up: nothing more starts
        assert pool._warming is None
        await pool.call("t", pickle.dumps(_pid), ((), {}))
        assert len(pool._idle) == 1
    finally:
        await pool.aclose()


def _read_fifo(path: str) -> str:
    with open(path) as f:
        return f.read()


@linux
async def test_a_worker_imports_the_modules_of_the_runs_functions_before_its_first_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    module = tmp_path / "ag_preload_probe.py"
    module.write_text(
        "import os, sys\n"
        "if 'asyncgraph' not in sys.modules:  # a worker (it never imports asyncgraph)\n"
        f"    with open({str(fifo)!r}, 'w') as f:\n"
        "        f.write('imported in ' + str(os.getpid()))\n"
        "def work(io):\n"
        "    return os.getpid()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import ag_preload_probe  # made above

    said: dict[str, str] = {}

    async def io() -> None:
        # Returns only once a worker imported the module: the CPU task waits for this
        # task, so nothing but the worker's preload can import it.
        said["fifo"] = await asyncio.to_thread(_read_fifo, str(fifo))

    g = ag.Graph()
    g.add("io", io, timeout=GUARD)
    g.add("work", ag_preload_probe.work, kind="cpu")
    done = await asyncio.wait_for(ag.run(g, cpu_workers=1), GUARD)
    assert done.status["work"] is ag.State.DONE, done.errors
    assert said["fifo"] == f"imported in {done.results['work']}"
    sys.modules.pop("ag_preload_probe", None)


# -- a big result comes back in one copy -------------------------------------------------


@linux
async def test_a_big_array_result_is_mapped_from_the_workers_memfd() -> None:
    np = pytest.importorskip("numpy")
    g = ag.Graph()
    g.add("big", lambda: _array(4), kind="cpu")
    done = await asyncio.wait_for(ag.run(g, cpu_workers=1), GUARD)
    value = done.results["big"]
    a = value["a"]
    assert np.array_equal(a, np.arange(4 * 1024 * 1024 // 8, dtype=np.float64))
    assert value["label"] == "x" and list(value["small"]) == [0, 1, 2]
    # No copy: the array's memory is the mapping of the worker's memfd ...
    base = a.base
    while isinstance(base, (memoryview, np.ndarray)):
        base = base.obj if isinstance(base, memoryview) else base.base
    assert isinstance(base, mmap.mmap)
    # ... private to this process: writable, and the worker (gone) never sees it.
    a[0] = 42.0
    assert a[0] == 42.0
    if os.path.isdir("/dev/shm"):  # nothing named (other programs' entries aside)
        assert not [n for n in os.listdir("/dev/shm") if "asyncgraph" in n]


@linux
async def test_a_read_only_array_stays_read_only() -> None:
    pytest.importorskip("numpy")
    g = ag.Graph()
    g.add("big", lambda: _array(2, readonly=True), kind="cpu")
    done = await asyncio.wait_for(ag.run(g, cpu_workers=1), GUARD)
    assert not done.results["big"]["a"].flags.writeable


@linux
async def test_a_big_frame_on_a_store_is_kept_as_a_plain_pickle(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("big", lambda: _frame(50_000), kind="cpu")  # 1.6 MB of floats
    done = await asyncio.wait_for(ag.run(g, cpu_workers=1, store=db), GUARD)
    pd.testing.assert_frame_equal(done.results["big"], _frame(50_000))
    conn = sqlite3.connect(db)
    try:
        fmt, data = conn.execute(  # schema 2: a big result is a row of results
            "SELECT format, data FROM results WHERE name = 'big'"
        ).fetchone()
    finally:
        conn.close()
    assert fmt == "pickle"
    # What any reader of the store does (an older tree too): pickle.loads, no buffers.
    pd.testing.assert_frame_equal(pickle.loads(data), _frame(50_000))
    again = ag.load(g, db)
    pd.testing.assert_frame_equal(again.results["big"], _frame(50_000))


@linux
async def test_a_big_result_on_a_shared_pool_is_mapped_too() -> None:
    np = pytest.importorskip("numpy")
    g = ag.Graph()
    g.add("big", lambda: _array(2), kind="cpu")
    async with ag.ProcessBackend(workers=1) as pool:
        for _ in range(2):  # the worker's memfd of the first is closed at the second
            done = await asyncio.wait_for(ag.run(g, backend=pool), GUARD)
            assert np.array_equal(done.results["big"]["a"], _array(2)["a"])


def test_inband_rewrites_out_of_band_buffers_into_the_pickle() -> None:
    np = pytest.importorskip("numpy")
    ro = np.arange(1000, dtype=np.int64)
    ro.flags.writeable = False
    value = {"w": np.arange(100_000, dtype=np.float64), "r": ro, "s": "text" * 100, "n": [1, 2]}
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2
    data = inband(head, [b.raw() for b in buffers])
    back = pickle.loads(data)  # no buffers=: an ordinary pickle
    assert np.array_equal(back["w"], value["w"]) and back["w"].flags.writeable
    assert np.array_equal(back["r"], ro) and not back["r"].flags.writeable
    assert back["s"] == value["s"] and back["n"] == [1, 2]
    # Shared references survive (the memo's numbering holds).
    shared = np.arange(10)
    twice = [shared, shared, {"again": shared}]
    buffers = []
    head = pickle.dumps(twice, protocol=5, buffer_callback=buffers.append)
    back2 = pickle.loads(inband(head, [b.raw() for b in buffers]))
    assert back2[0] is back2[1] is back2[2]["again"]


def test_a_mapped_result_loads_from_its_buffers() -> None:
    value = {"b": bytearray(b"x" * 10), "k": 1}
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    m = Mapped(head, [memoryview(bytearray(b.raw())) for b in buffers])
    assert m.load() == value
    assert pickle.loads(m.inband()) == value


def test_the_worker_pickles_with_pickle_and_falls_back_to_cloudpickle() -> None:
    assert pickle.loads(_worker._dumps([1, "a"])) == [1, "a"]
    f = pickle.loads(_worker._dumps(lambda x: x + 1))  # pickle refuses a lambda
    assert f(1) == 2


# -- a shared pool -----------------------------------------------------------------------


def _die() -> None:
    os._exit(3)


async def test_a_shared_pool_replaces_a_dead_worker_before_the_next_call() -> None:
    async with ag.ProcessBackend(workers=1) as pool:
        shared = pool._shared
        assert shared.loop is not None and shared.pool is not None
        g = ag.Graph()
        g.add("die", _die, kind="cpu")
        done = await asyncio.wait_for(ag.run(g, backend=pool), GUARD)
        assert isinstance(done.errors["die"], ag.WorkerDiedError)

        async def replaced() -> list[int]:
            assert shared.pool is not None
            if shared.pool._warming is not None:  # the replacement, started at the death
                await shared.pool._warming
            return [w.pid for w in shared.pool._idle if w.alive]

        idle = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(replaced(), shared.loop))
        assert len(idle) == 1  # up before anyone asked for it
        g2 = ag.Graph()
        g2.add("pid", _pid, kind="cpu")
        done2 = await asyncio.wait_for(ag.run(g2, backend=pool), GUARD)
        assert done2.results["pid"] == idle[0]
