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
     (a thread: fails, the database is down)
          |
     build_dashboard                              skipped
          |
     email_report                                 skipped

The demo is a night and a morning. The night's run records everything in a store (one
SQLite file); ``load_to_db`` fails because the database is down. In the morning the
database is back: the recovery loads the stored state, shows the plan (what will run and
why), resets the failed tasks and runs again, and only ``load_to_db`` and the two tasks it
skipped run; every other result comes from the store.

The CPU functions live in this module on purpose: worker processes receive the parent's
``sys.path`` and import them from here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
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


#: The "database" is down while this file exists (set by main(); a real pipeline would
#: find out by connecting). Read at run time, so it is no part of any fingerprint.
DB_DOWN_ENV = "ASYNCGRAPH_DEMO_DB_DOWN"


def load_to_db(word_counts: dict[str, int]) -> int:  # a blocking client: runs in a thread
    time.sleep(0.05)
    flag = os.environ.get(DB_DOWN_ENV)
    if flag and os.path.exists(flag):
        raise ConnectionError("db.internal:5432 refused the connection (simulated)")
    return len(word_counts)


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


def main(out: TextIO | None = None, store: str | None = None, progress: bool = True) -> int:
    """The night and the morning (see the module docstring). ``store``: keep the store
    there (default: a temporary directory, removed at the end)."""
    out = out if out is not None else sys.stdout
    if progress:
        import importlib.util

        if importlib.util.find_spec("tqdm") is None:
            print(
                "(no progress bar: tqdm is not installed; pip install 'asyncgraph[progress]')",
                file=sys.stderr,
            )
            progress = False
    if store is None:
        with tempfile.TemporaryDirectory(prefix="asyncgraph-demo-") as tmp:
            return _night_and_morning(out, os.path.join(tmp, "nightly.db"), progress)
    return _night_and_morning(out, store, progress)


def _night_and_morning(out: TextIO, store: str, progress: bool) -> int:
    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    flag = f"{store}.db-down"
    os.environ[DB_DOWN_ENV] = flag
    open(flag, "w").close()  # the database is down tonight
    try:
        g = build_graph()
        say(f"Night: running {len(g)} tasks (cpu_workers=2) with store {store}")
        say("(the database is down: load_to_db fails, and what needs it is skipped)\n")
        t0 = time.perf_counter()
        night = ag.run_sync(g, cpu_workers=2, store=store, progress=progress)
        elapsed = time.perf_counter() - t0
        say(_format_table(night.to_frame()))
        say(f"\n{_counts(night)} in {elapsed:.1f}s")

        os.remove(flag)  # morning: the database is back
        say("\nMorning: the database is back. The recovery script loads the stored state:")
        say("\n    g = ag.load(build_graph(), store)\n    ag.plan(ag.reset_failed(g), store)\n")
        g = ag.reset_failed(ag.load(build_graph(), store))
        plan = ag.plan(g, store)
        say(_format_plan(plan))
        t0 = time.perf_counter()
        morning = ag.run_sync(g, cpu_workers=2, store=store, progress=progress)
        elapsed = time.perf_counter() - t0
        ran = sorted(plan.loc[plan["action"] == "run", "name"])
        say(f"\nRecovery: ran {', '.join(ran)}; reused the rest from the store.\n")
        say(_format_table(morning.to_frame()))
        say(f"\n{_counts(morning)} in {elapsed:.1f}s")
        if "summary" in morning.results:
            say(f"summary: {morning.results['summary']}")
        history = ag.history(store)
        say("\nRuns in the store (ag.history, or: asyncgraph history STORE):")
        say(_plain(history[["run", "status", "tasks", "reused", "done", "failed", "skipped"]]))
        say(
            "\nFrom a shell, the same recovery is:\n\n"
            "    asyncgraph status STORE\n"
            "    asyncgraph run MODULE:GRAPH --store STORE --reset-failed"
        )
    finally:
        if os.path.exists(flag):
            os.remove(flag)
    return 0


def _counts(graph: ag.Graph) -> str:
    states = list(graph.status.values())
    detail = ", ".join(f"{states.count(s)} {s}" for s in ag.State if s in states)
    return f"{len(graph)} tasks: {detail}"


def _format_plan(plan: pd.DataFrame) -> str:
    return _plain(plan[["name", "kind", "action", "reason"]])


def _plain(frame: pd.DataFrame) -> str:
    table = frame.astype(str)
    widths = {c: max(len(c), *map(len, table[c])) for c in table.columns}
    text = table.to_string(
        index=False,
        justify="left",
        formatters={c: (lambda cell, w=w: cell.ljust(w)) for c, w in widths.items()},
    )
    return "\n".join(line.rstrip() for line in text.splitlines())
