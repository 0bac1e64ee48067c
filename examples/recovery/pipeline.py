r"""A nightly pipeline with a durable store: ``python pipeline.py [STORE]``.

    extract_orders   extract_customers      coroutines (stand-ins for HTTP calls)
          |      \        /
          |      transform                  kind="cpu": a worker process
          |       /      \
          |  load_warehouse \               a plain function (a thread): writes the
          |       \         |               "database", warehouse.db
    archive_orders  \       |               a plain function: writes orders.json
                     report                 a coroutine

Everything happens in the current directory: the database is ``warehouse.db``, and it is
"down" while a file named ``db_down`` exists there (``touch db_down`` breaks it). Each
task appends its name to ``ran.log`` when it starts, so a recovery can show what ran.

The run is recorded in STORE (default ``nightly.db``); a task done there is reused by
every later run on it. The script prints the status table and exits 1 if a task failed.
Recover with ``recover.py`` or the ``asyncgraph`` command (see README.md).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

import asyncgraph as ag

graph = ag.Graph()


def mark(task: str) -> None:
    """Record that ``task`` started (the side-effect log a recovery checks)."""
    with open("ran.log", "a") as log:
        log.write(task + "\n")


@graph.task
async def extract_orders() -> list[dict[str, object]]:
    mark("extract_orders")
    await asyncio.sleep(0.05)  # stands in for an HTTP call
    return [
        {"order": 1, "customer": "c1", "amount": 30.0},
        {"order": 2, "customer": "c2", "amount": 12.5},
        {"order": 3, "customer": "c1", "amount": 7.5},
        {"order": 4, "customer": "c3", "amount": 99.0},
    ]


@graph.task
async def extract_customers() -> dict[str, str]:
    mark("extract_customers")
    await asyncio.sleep(0.05)
    return {"c1": "ada", "c2": "grace", "c3": "edsger"}


@graph.task(kind="cpu")
def transform(
    extract_orders: list[dict[str, object]], extract_customers: dict[str, str]
) -> dict[str, float]:
    """Total amount per customer name (runs in a worker process)."""
    mark("transform")
    totals: dict[str, float] = {}
    for order in extract_orders:
        name = extract_customers[str(order["customer"])]
        totals[name] = totals.get(name, 0.0) + float(str(order["amount"]))
    return dict(sorted(totals.items()))


@graph.task
def load_warehouse(transform: dict[str, float]) -> int:
    """Write the totals into the database; fails while the database is down."""
    mark("load_warehouse")
    if Path("db_down").exists():
        raise ConnectionError("warehouse.db is down (db_down exists)")
    with sqlite3.connect("warehouse.db") as db:
        db.execute("CREATE TABLE IF NOT EXISTS totals (customer TEXT PRIMARY KEY, amount REAL)")
        db.executemany("INSERT OR REPLACE INTO totals VALUES (?, ?)", transform.items())
    return len(transform)


@graph.task
def archive_orders(extract_orders: list[dict[str, object]]) -> str:
    """Independent of the database: done even on a night it is down (a thread)."""
    mark("archive_orders")
    Path("orders.json").write_text(json.dumps(extract_orders))
    return "orders.json"


@graph.task
async def report(load_warehouse: int, transform: dict[str, float]) -> str:
    mark("report")
    best = max(transform, key=transform.__getitem__)
    return f"{load_warehouse} customers loaded; top: {best} ({transform[best]:.2f})"


def show(done: ag.Graph) -> None:
    frame = done.to_frame()[["name", "kind", "status", "attempts", "error"]]
    print(frame.fillna({"error": ""}).to_string(index=False))


def main(store: str) -> int:
    done = ag.run_sync(graph, store=store, cpu_workers=1)
    show(done)
    if all(s is ag.State.DONE for s in done.status.values()):
        print("\nreport:", done.results["report"])
        return 0
    print(f"\nfailed; see `asyncgraph status {store} --failed`, then run recover.py")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "nightly.db"))
