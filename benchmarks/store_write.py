"""The store's writer, A/B in one process: ``executemany`` (one SQLite step per row, the
way rows were written before issue 15) against ``_insert_rows`` (256 rows per INSERT).

Usage:  python benchmarks/store_write.py [--rows 10000] [--batch 500] [--pairs 7]

Each pair writes the same rows (a done no-op task's row: 14 columns, a 4-byte pickle)
to a fresh store with ``SQLiteStore.write`` in batches, once each way, in alternating
order; alone, and while another thread runs an asyncio loop that never stops creating
tasks (as a run's loop does: each SQLite step hands the GIL over, and winning it back
from a busy thread can take up to the 5 ms switch interval). Quoted: the median of the
per-pair ratios B / A, with min-max, for wall time and for the writer thread's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
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


def executemany(conn: Any, rows: Sequence[TaskRow]) -> None:
    """A: the writer as it was (one step per row)."""
    conn.executemany("INSERT OR REPLACE INTO state VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def make_rows(run_id: int, n: int) -> list[TaskRow]:
    return [
        TaskRow(f"t{i}", run_id, "done", 1, 1.0, 2.0, None, None, None, "f" * 32, "c" * 32,
                new_result_id(), "pickle", b"\x80\x05N.")
        for i in range(n)
    ]


def _churn(stop: threading.Event) -> None:
    async def noop() -> None:
        return None

    async def main() -> None:
        while not stop.is_set():
            await asyncio.gather(*[noop() for _ in range(200)])

    asyncio.run(main())


def measure(
    insert: Callable[[Any, Sequence[TaskRow]], None], where: Path, n: int, batch: int, busy: bool
) -> tuple[float, float]:
    store = _sqlite.SQLiteStore(where / f"s{time.monotonic_ns()}.db")
    store.acquire()
    run_id = store.begin_run()
    rows = make_rows(run_id, n)
    saved = _sqlite._insert_rows
    _sqlite._insert_rows = insert  # type: ignore[assignment]
    stop = threading.Event()
    loop = threading.Thread(target=_churn, args=(stop,))
    if busy:
        loop.start()
    try:
        w0, c0 = time.perf_counter(), time.thread_time()
        for i in range(0, n, batch):
            store.write(run_id, Batch(rows[i : i + batch]))
        return time.perf_counter() - w0, time.thread_time() - c0
    finally:
        _sqlite._insert_rows = saved
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
                sides = [("A", executemany), ("B", _sqlite._insert_rows)]
                got = {}
                for side, fn in sides if pair % 2 == 0 else sides[::-1]:
                    got[side] = measure(fn, Path(tmp), args.rows, args.batch, busy)
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
            ["another thread", "rows", "A us/row", "B us/row", "wall B/A", "range",
             "writer CPU B/A", "range"],
            [
                ["busy loop" if r["loop_busy"] else "idle", r["rows"], r["a_us_per_row"],
                 r["b_us_per_row"], r["wall_ratio"], "{:.2f}-{:.2f}".format(*r["wall_range"]),
                 r["cpu_ratio"], "{:.2f}-{:.2f}".format(*r["cpu_range"])]
                for r in out
            ],
        )
    )
    print("(A: executemany, one step per row; B: 256 rows per INSERT. Below 1.0: B faster)")
    write_json(args.json, {"benchmark": "store_write", "rows": out})
    sys.stdout.flush()


if __name__ == "__main__":
    main()
