"""The 3 a.m. script: see what failed in the store, fix it, rerun only that.

    python recover.py [STORE]       (in the directory where pipeline.py ran)

1. ``ag.load`` gives the pipeline's graph with the state the store recorded: what is
   done (its result stays in the store), what failed and why.
2. ``ag.plan`` of ``ag.reset_failed(...)`` shows what the rerun will do: the failed task
   and its descendants run, everything else is reused.
3. The fault is fixed (the database is back: ``db_down`` is removed).
4. The run on the store runs exactly what the plan said; ``ran.log`` proves it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pipeline

import asyncgraph as ag


def ran_since(offset: int) -> list[str]:
    return Path("ran.log").read_text()[offset:].split() if Path("ran.log").exists() else []


def main(store: str) -> int:
    stored = ag.load(pipeline.graph, store)
    # Failed and skipped here; a run that was killed would leave pending tasks too.
    broken = [n for n, s in stored.status.items() if s is not ag.State.DONE]
    if not broken:
        print(f"every task is done in {store}: nothing to recover")
        return 0
    for name, error in stored.errors.items():
        print(f"{name} failed: {error}")

    retry = ag.reset_failed(stored)  # failed and skipped tasks, and their descendants
    plan = ag.plan(retry, store)
    print("\nthe plan:\n" + plan.to_string(index=False))
    to_run = set(plan.loc[plan["action"] == "run", "name"])
    assert to_run == set(broken) | stored.descendants(broken), to_run

    Path("db_down").unlink(missing_ok=True)  # the fix: the database is back
    print("\nfixed: the database is up again\n")

    offset = len(Path("ran.log").read_text()) if Path("ran.log").exists() else 0
    done = ag.run_sync(retry, store=store, cpu_workers=1)
    pipeline.show(done)

    ran = ran_since(offset)
    print("\nran this time:", ", ".join(ran))
    runs = ag.history(store)[["run", "status", "reused", "done", "failed"]]
    print("\n" + runs.to_string(index=False))
    assert sorted(ran) == sorted(to_run), f"ran {ran}, planned {sorted(to_run)}"
    assert all(s is ag.State.DONE for s in done.status.values()), done.status
    print("\nreport:", done.results["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "nightly.db"))
