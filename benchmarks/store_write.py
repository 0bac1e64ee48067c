"""The store's writer, A/B in one process: the rows of schema version 1 (a row of
``state`` per task, its primary-key index and the history trigger's row, 256 rows per
INSERT, as issue 15's first pass wrote them) against schema version 2's
``SQLiteStore.write`` (one history row per batch, its records in one value).

Usage:  python benchmarks/store_write.py [--rows 10000] [--batch 500] [--pairs 7]

Each pair writes the same rows (a done no-op task's row: 14 fields, a 4-byte pickle)
to a fresh store in batches, one transaction each (WAL, ``synchronous=FULL``), once
each way, in alternating order; alone, and while another thread runs an asyncio loop
that never stops creating tasks (as a run's loop does: each SQLite step hands the GIL
over, and winning it back from a busy thread can take up to the 5 ms switch interval).
Quoted: the median of the per-pair ratios B / A, with min-max, for wall time and for
the writer thread's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import table, write_json  # first: it may put the repo on sys.path

from asyncgraph._store import sqlite as _sqlite
from asyncgraph._store.protocol import Batch, TaskRow, new_result_id

#: Schema version 1's tables, as its stores have them.
_V1 = [
    "CREATE TABLE runs (id INTEGER PRIMARY KEY, done INTEGER NOT NULL DEFAULT 0)",
    """CREATE TABLE state (name TEXT PRIMARY KEY, run_id INTEGER NOT NULL, status TEXT NOT
    NULL, attempts INTEGER NOT NULL, started REAL, finished REAL, error_type TEXT,
    error_message TEXT, traceback TEXT, fingerprint TEXT, code TEXT, result_id INTEGER,
    result_format TEXT, result BLOB)""",
    """CREATE TABLE history (run_id INTEGER NOT NULL, name TEXT NOT NULL, status TEXT NOT
    NULL, attempts INTEGER NOT NULL, started REAL, finished REAL, error_type TEXT,
    error_message TEXT, traceback TEXT, fingerprint TEXT)""",
    """CREATE TRIGGER state_history AFTER INSERT ON state BEGIN INSERT INTO history VALUES
    (NEW.run_id, NEW.name, NEW.status, NEW.attempts, NEW.started, NEW.finished,
    NEW.error_type, NEW.error_message, NEW.traceback, NEW.fingerprint); END""",
]
_INSERTS = {
    k: "INSERT OR REPLACE INTO state VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"] * k)
    for k in (256, 64, 16, 4, 1)
}


def version_1(where: Path) -> Callable[[int, Sequence[TaskRow]], None]:
    """A: a writer of version 1's rows (its ``_insert_rows`` and counts update)."""
    conn = sqlite3.connect(
        where / f"v1-{time.monotonic_ns()}.db", isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    for sql in _V1:
        conn.execute(sql)
    conn.execute("INSERT INTO runs (id) VALUES (1)")
    chain = itertools.chain.from_iterable

    def write(run_id: int, rows: Sequence[TaskRow]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        i, n = 0, len(rows)
        for k, sql in _INSERTS.items():
            while n - i >= k:
                conn.execute(sql, list(chain(rows[i : i + k])))
                i += k
        conn.execute("UPDATE runs SET done = done + ? WHERE id = ?", (n, run_id))
        conn.execute("COMMIT")

    return write


def make_rows(run_id: int, n: int) -> list[TaskRow]:
    return [
        TaskRow(
            f"t{i}",
            run_id,
            "done",
            1,
            1.0,
            2.0,
            None,
            None,
            None,
            "f" * 32,
            "c" * 32,
            new_result_id(),
            "pickle",
            b"\x80\x05N.",
        )
        for i in range(n)
    ]


def _churn(stop: threading.Event) -> None:
    async def noop() -> None:
        return None

    async def main() -> None:
        while not stop.is_set():
            await asyncio.gather(*[noop() for _ in range(200)])

    asyncio.run(main())


def measure(side: str, where: Path, n: int, batch: int, busy: bool) -> tuple[float, float]:
    store = _sqlite.SQLiteStore(where / f"s{time.monotonic_ns()}.db")
    store.acquire()
    run_id = store.begin_run()
    rows = make_rows(run_id, n)
    write: Callable[[int, Any], None] = (
        version_1(where) if side == "A" else lambda run_id, rows: store.write(run_id, rows)
    )
    stop = threading.Event()
    loop = threading.Thread(target=_churn, args=(stop,))
    if busy:
        loop.start()
    try:
        w0, c0 = time.perf_counter(), time.thread_time()
        for i in range(0, n, batch):
            write(run_id, Batch(rows[i : i + batch], {"done": min(batch, n - i)}))
        return time.perf_counter() - w0, time.thread_time() - c0
    finally:
        stop.set()
        if busy:
            loop.join()
        store.release()
        store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (False, True):
            wall, cpu, per_row = [], [], {"A": [], "B": []}
            for pair in range(args.pairs):
                sides = ["A", "B"]
                got = {}
                for side in sides if pair % 2 == 0 else sides[::-1]:
                    got[side] = measure(side, Path(tmp), args.rows, args.batch, busy)
                    per_row[side].append(got[side][0] / args.rows * 1e6)
                wall.append(got["B"][0] / got["A"][0])
                cpu.append(got["B"][1] / got["A"][1])
            out.append(
                {
                    "loop_busy": busy,
                    "rows": args.rows,
                    "pairs": args.pairs,
                    "a_us_per_row": statistics.median(per_row["A"]),
                    "b_us_per_row": statistics.median(per_row["B"]),
                    "wall_ratio": statistics.median(wall),
                    "wall_range": [min(wall), max(wall)],
                    "cpu_ratio": statistics.median(cpu),
                    "cpu_range": [min(cpu), max(cpu)],
                }
            )
    print(
        table(
            [
                "another thread",
                "rows",
                "A us/row",
                "B us/row",
                "wall B/A",
                "range",
                "writer CPU B/A",
                "range",
            ],
            [
                [
                    "busy loop" if r["loop_busy"] else "idle",
                    r["rows"],
                    r["a_us_per_row"],
                    r["b_us_per_row"],
                    r["wall_ratio"],
                    "{:.2f}-{:.2f}".format(*r["wall_range"]),
                    r["cpu_ratio"],
                    "{:.2f}-{:.2f}".format(*r["cpu_range"]),
                ]
                for r in out
            ],
        )
    )
    print(
        "(A: schema 1, a state row per task, 256 per INSERT; B: schema 2, one history row "
        "per batch. Below 1.0: B faster)"
    )
    write_json(args.json, {"benchmark": "store_write", "rows": out})
    sys.stdout.flush()


if __name__ == "__main__":
    main()
