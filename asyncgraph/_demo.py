r"""The graph behind ``python -m asyncgraph demo``: a small nightly report, one part broken.

::

    fetch_home   fetch_docs   fetch_blog        io: coroutines on the event loop (sleeps)
         \           |           /
          +----------+----------+
          |                     |
     word_counts           hash_pages   count_primes
     (io: a thread)        (cpu)        (cpu: a worker process)
          |                      \        /
     load_to_db                    summary       done: the independent branch finishes
     (fails: ConnectionError)
          |
     build_dashboard                              skipped
          |
     email_report                                 skipped

The failure is the point of the demo, so the command exits 0: a failed task is data in
the returned graph, not an exception. The CPU functions live in this module on purpose:
worker processes receive the parent's ``sys.path`` and import them from here.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from typing import TYPE_CHECKING, TextIO

import asyncgraph as ag

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["build_graph", "main"]

PAGES = {
    "home": ("https://example.org/", 0.2),
    "docs": ("https://example.org/docs", 0.3),
    "blog": ("https://example.org/blog", 0.1),
}


# -- IO: coroutines on the event loop ----------------------------------------------------


async def _fetch(page: str) -> str:
    url, latency = PAGES[page]
    await asyncio.sleep(latency)  # stands in for an HTTP request
    return f"<html><title>{page}</title>{url} " + " ".join(["asyncgraph demo page"] * 200)


async def fetch_home() -> str:
    return await _fetch("home")


async def fetch_docs() -> str:
    return await _fetch("docs")


async def fetch_blog() -> str:
    return await _fetch("blog")


async def load_to_db(word_counts: dict[str, int]) -> int:
    await asyncio.sleep(0.05)
    raise ConnectionError("db.internal:5432 refused the connection (simulated)")


async def build_dashboard(load_to_db: int) -> str:  # never runs: its dependency fails
    return f"dashboard over {load_to_db} rows"


async def email_report(build_dashboard: str) -> None:  # never runs either
    await asyncio.sleep(0.01)


# -- IO: a plain function, run in a thread -------------------------------------------------


def word_counts(fetch_home: str, fetch_docs: str, fetch_blog: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for text in (fetch_home, fetch_docs, fetch_blog):
        for word in text.split():
            counts[word] = counts.get(word, 0) + 1
    return counts


# -- CPU: run in worker processes (kind="cpu") -------------------------------------------


def hash_pages(fetch_home: str, fetch_docs: str, fetch_blog: str) -> str:
    """Hash the pages 400,000 times over: about 0.2 s of real work."""
    digest = (fetch_home + fetch_docs + fetch_blog).encode()
    for _ in range(400_000):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


def count_primes(limit: int = 200_000) -> int:
    """Count primes below ``limit`` by trial division: about 0.3 s of real work."""
    found = 0
    for k in range(2, limit):
        for d in range(2, int(k**0.5) + 1):
            if k % d == 0:
                break
        else:
            found += 1
    return found


def summary(hash_pages: str, count_primes: int) -> str:
    return f"{count_primes} primes below 200,000; pages digest {hash_pages}"


def build_graph() -> ag.Graph:
    g = ag.Graph()
    g.add("fetch_home", fetch_home)
    g.add("fetch_docs", fetch_docs)
    g.add("fetch_blog", fetch_blog)
    g.add("hash_pages", hash_pages, kind="cpu")
    g.add("word_counts", word_counts)  # a plain function with kind "io": a thread
    g.add("load_to_db", load_to_db, retries=1, retry_delay=0.05)
    g.add("build_dashboard", build_dashboard)
    g.add("email_report", email_report)
    g.add("count_primes", count_primes, kind="cpu")
    g.add("summary", summary)
    return g


def _format_table(frame: pd.DataFrame) -> str:
    """The status table as left-aligned text: durations to 10 ms, "-" where empty."""
    import pandas as pd

    table = frame[["name", "kind", "status", "attempts", "duration_s", "error"]].copy()
    table["duration_s"] = [("-" if pd.isna(d) else f"{d:.2f}") for d in table["duration_s"]]
    table["error"] = table["error"].fillna("-")
    table = table.astype(str)
    widths = {c: max(len(c), *map(len, table[c])) for c in table.columns}
    text = table.to_string(
        index=False,
        justify="left",
        formatters={c: (lambda cell, w=w: cell.ljust(w)) for c, w in widths.items()},
    )
    return "\n".join(line.rstrip() for line in text.splitlines())


def main(out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    g = build_graph()
    print(
        f"Running a graph of {len(g)} tasks (cpu_workers=2); load_to_db fails on purpose.\n",
        file=out,
    )
    t0 = time.perf_counter()
    done = ag.run_sync(g, cpu_workers=2)
    elapsed = time.perf_counter() - t0

    print(_format_table(done.to_frame()), file=out)

    states = list(done.status.values())
    detail = ", ".join(f"{states.count(s)} {s}" for s in ag.State if s in states)
    print(f"\n{len(done)} tasks in {elapsed:.1f}s: {detail}", file=out)
    if "summary" in done.results:
        print(f"summary: {done.results['summary']}", file=out)
    print(
        "\nThe failure is recorded, not raised. To rerun only the failed task and what it"
        " skipped,\nfix the cause and then:\n\n"
        "    g = ag.reset_failed(done)      # failed/skipped/cancelled + descendants -> pending\n"
        "    done = ag.run_sync(g)          # done results are reused, not recomputed",
        file=out,
    )
    return 0
