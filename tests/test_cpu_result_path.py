"""The CPU result path: a worker's bytes go to the store as they are, and are unpickled
once, off the loop's thread, when the attempt ends.

    worker: value -> cloudpickle.dumps -> bytes --pipe--> parent
    parent: bytes -> (a thread) cloudpickle.loads -> the record's value
                  \\-> the store's row, format "pickle", as they are (no second dumps)

Also: a worker's exception whose one-argument ``__init__`` builds its message (so a
round trip through pickle changes it) reaches the parent as a RemoteError with the
right message, not as a mangled copy.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import pytest
from conftest import statuses
from store_rows import latest_rows

import asyncgraph as ag
from asyncgraph._store.sqlite import SQLiteStore

GUARD = 60  # seconds: a guard against a hang, not a bound


def _row(db: Path, name: str) -> tuple[str, bytes]:
    row = latest_rows(db)[name]  # schema 2: records in batches, big results apart
    assert row.result_format is not None and row.result is not None
    return row.result_format, row.result


# -- the store row holds the worker's bytes ----------------------------------------------


def _frame_and_its_pickle(path: str) -> Any:
    """In the worker: a DataFrame, and (in a file) the bytes cloudpickle makes of it
    there, which are what the worker sends back."""
    import pandas as pd

    frame = pd.DataFrame({"city": ["a", "b", "c"], "n": [1, 2, 3]})
    Path(path).write_bytes(cloudpickle.dumps(frame))
    return frame


async def test_the_store_row_of_a_cpu_result_holds_exactly_the_workers_bytes(
    tmp_path: Path,
) -> None:
    pd = pytest.importorskip("pandas")
    db = tmp_path / "s.db"
    made = tmp_path / "made.pickle"
    g = ag.Graph()
    g.add("table", functools.partial(_frame_and_its_pickle, str(made)), kind="cpu")
    g.add("rows", lambda table: len(table), deps=["table"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1, store=db)
    assert statuses(out) == {"table": "done", "rows": "done"}
    assert out.results["rows"] == 3
    fmt, data = _row(db, "table")
    # A DataFrame from a CPU task is stored as the worker's pickle, not as Parquet.
    assert fmt == "pickle"
    assert data == made.read_bytes()
    loaded = ag.load(g, db)
    pd.testing.assert_frame_equal(loaded.results["table"], out.results["table"])


# -- unpickled once, never pickled again here --------------------------------------------

LOADS: list[int] = []  # in this process: each Counted unpickled here
DUMPS: list[int] = []  # in this process: each Counted pickled here


def _counted_back(n: int) -> Counted:
    LOADS.append(n)
    return Counted(n)


class Counted:
    """A value that counts, in the process that does it, each pickling and unpickling."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        DUMPS.append(self.n)
        return _counted_back, (self.n,)


def _make_counted(n: int) -> Counted:
    return Counted(n)


@pytest.mark.parametrize("store", [False, True])
async def test_a_cpu_result_is_unpickled_once_and_not_pickled_again(
    tmp_path: Path, store: bool
) -> None:
    db = tmp_path / "s.db"
    LOADS.clear()
    DUMPS.clear()
    g = ag.Graph()
    g.add("value", functools.partial(_make_counted, 7), kind="cpu")
    g.add("uses", lambda value: value.n + 1, deps=["value"])
    g.add("again", lambda value: value.n + 2, deps=["value"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1, store=db if store else None)
    assert statuses(out) == {"value": "done", "uses": "done", "again": "done"}
    assert LOADS == [7]  # once, for both consumers and the record
    assert DUMPS == []  # the store took the worker's bytes: no dumps in this process
    value = out.results["value"]
    assert isinstance(value, Counted) and value.n == 7
    assert out.results["uses"] == 8 and out.results["again"] == 9
    if store:
        fmt, data = _row(db, "value")
        assert fmt == "pickle"
        assert cloudpickle.loads(data).n == 7  # a load made by the test: counted too
        assert LOADS == [7, 7]


# -- the loop is not blocked by the unpickle ----------------------------------------------

LOADING = threading.Event()  # a Slow's unpickle began (in this process)
GO = threading.Event()  # the probe ran on the loop meanwhile: the unpickle may end
LOADED = threading.Event()  # the unpickle ended
SAW_GO: list[bool] = []


def _slow_back(token: str) -> str:
    LOADING.set()
    SAW_GO.append(GO.wait(GUARD))  # False only if nothing else ran meanwhile
    LOADED.set()
    return token


class Slow:
    """A value whose unpickle waits until the probe coroutine says it ran."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _slow_back, (self.token,)


def _make_slow() -> Slow:
    return Slow("loaded")


async def test_the_loop_runs_other_tasks_while_a_cpu_result_is_unpickled(
    tmp_path: Path,
) -> None:
    r"""
      slow (cpu: its result's unpickle waits on GO)      probe (coroutine: waits for
                                                          the unpickle to begin, sets GO)
    If the unpickle ran on the loop's thread, the probe could not run until it ended,
    and it would wait in vain (SAW_GO == [False]).
    """
    LOADING.clear()
    GO.clear()
    LOADED.clear()
    SAW_GO.clear()
    order: list[str] = []

    async def probe() -> str:
        await asyncio.to_thread(LOADING.wait, GUARD)
        order.append("probe ran during the load")
        GO.set()
        return "ok"

    g = ag.Graph()
    g.add("slow", _make_slow, kind="cpu")
    g.add("probe", probe)
    g.add("after", lambda slow: order.append("after") or slow, deps=["slow"])
    with anyio.fail_after(GUARD * 2):
        out = await ag.run(g, cpu_workers=1, store=tmp_path / "s.db")
    assert statuses(out) == {"slow": "done", "probe": "done", "after": "done"}
    assert SAW_GO == [True]
    assert order == ["probe ran during the load", "after"]
    assert out.results["slow"] == "loaded"


async def test_a_run_that_stops_does_not_wait_for_an_unpickle_in_progress(
    tmp_path: Path,
) -> None:
    r"""
      slow (cpu: its result's unpickle waits on GO)      stopper (coroutine: waits for
                                                          the unpickle to begin, fails)
    fail_fast stops the run while the unpickle goes on: the run stops waiting for it,
    as for any thread call, and records 'slow' as cancelled.
    """
    LOADING.clear()
    GO.clear()
    LOADED.clear()
    SAW_GO.clear()

    async def stopper() -> None:
        await asyncio.to_thread(LOADING.wait, GUARD)
        raise RuntimeError("stop the run")

    g = ag.Graph()
    g.add("slow", _make_slow, kind="cpu")
    g.add("stopper", stopper)
    try:
        with anyio.fail_after(GUARD), pytest.raises(ag.TaskFailures) as info:
            await ag.run(g, cpu_workers=1, fail_fast=True, store=tmp_path / "s.db")
        assert SAW_GO == []  # the unpickle has not ended: nobody waited for it
        assert statuses(info.value.graph) == {"slow": "cancelled", "stopper": "failed"}
    finally:
        GO.set()  # let the abandoned thread end, before another test uses the events
        await asyncio.to_thread(LOADED.wait, GUARD)


# -- the size check still holds ------------------------------------------------------------

LIMIT = 60_000


class SmallRows(SQLiteStore):
    """A store whose rows hold at most LIMIT bytes, and says so."""

    def begin_run(self) -> int:
        run_id = super().begin_run()
        assert self._conn is not None
        self._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, LIMIT)
        return run_id

    def result_size_limit(self) -> int:
        return LIMIT


def _bytes_of(n: int) -> bytes:
    return b"x" * n


async def test_a_cpu_result_too_big_for_the_store_fails_its_own_task_only(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    g = ag.Graph()
    g.add("small", functools.partial(_bytes_of, 100), kind="cpu")
    g.add("big", functools.partial(_bytes_of, LIMIT + 1), kind="cpu", retries=2, retry_delay=0)
    g.add("after_big", lambda big: len(big), deps=["big"])
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1, store=SmallRows(db))
    assert statuses(out) == {"small": "done", "big": "failed", "after_big": "skipped"}
    error = out.errors["big"]
    assert isinstance(error, ag.UnstorableResultError), repr(error)
    assert "'big'" in str(error) and f"{LIMIT:,}" in str(error)
    assert out.records["big"].attempts == 1  # it would fail again: not retried
    assert _row(db, "small") == ("pickle", cloudpickle.dumps(b"x" * 100))


# -- an exception whose pickle round trip changes it ---------------------------------------


class CountedRows(Exception):
    """Its one-argument __init__ builds the message: pickle rebuilds it from the
    message (``cls(*args)``), which builds it again."""

    def __init__(self, n: Any) -> None:
        super().__init__(f"{n} rows were bad")


def _bad_rows() -> None:
    raise CountedRows(5)


async def test_an_exception_that_unpickles_differently_arrives_as_its_text() -> None:
    g = ag.Graph()
    g.add("check", _bad_rows, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    error = out.errors["check"]
    assert isinstance(error, ag.RemoteError), repr(error)
    assert error.type_name.endswith(".CountedRows")
    assert error.message == "5 rows were bad"
    assert str(error).endswith("CountedRows: 5 rows were bad")
    assert "raise CountedRows(5)" in out.records["check"].traceback


# -- the reply pipe hands a big frame over without copying it ------------------------------


def test_reply_frames_big_and_small_arrive_whole_in_any_chunking() -> None:
    from asyncgraph._executors.process import _BIG, _HEADER, _Replies

    big = bytes(range(256)) * (_BIG // 128)  # past _BIG: handed over as a view
    small = b"small"
    stream = b"".join(_HEADER.pack(len(p)) + p for p in (small, big, small, big))
    for chunk in (1 << 20, 4096, 7):
        replies = _Replies()
        for i in range(0, len(stream), chunk):
            replies.data_received(stream[i : i + chunk])
        assert [bytes(f) for f in replies.frames] == [small, big, small, big]
        assert replies.buffer == b""


def test_only_a_small_pickle_that_names_no_callable_is_loaded_on_the_loop() -> None:
    import collections
    import datetime
    import fractions

    from asyncgraph._executors.process import _INLINE, _NAMES_CODE

    def inline(value: Any) -> bool:
        data = cloudpickle.dumps(value)
        return len(data) <= _INLINE and _NAMES_CODE.search(data) is None

    for plain in (
        None,
        True,
        5,
        2**70,
        (1, 2),
        [1, [2]],
        {1: (2,)},
        b"xy",
        bytearray(b"x"),
        frozenset({1}),
    ):
        assert inline(plain), plain
    code = (
        Counted(1),
        Slow("x"),
        datetime.date(2020, 1, 1),
        fractions.Fraction(1, 3),
        collections.OrderedDict(a=1),
        lambda: 1,
        {1: Counted(2)},
        b"x" * (_INLINE + 1),
    )
    for value in code:
        assert not inline(value), value
