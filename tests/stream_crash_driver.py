"""A durable stream for tests/test_stream_durable.py's crash trials.

``python stream_crash_driver.py DIR RUN KILL_AT``: streams 50 source batches of 4 rows
through fetch (a coroutine) -> score (a thread, split to 3 rows) -> publish (a
coroutine, merged to 6 rows), writing Parquet to DIR/out with the store DIR/s.db. Every
call appends ``RUN STAGE SOURCE_IDS`` to DIR/calls.log (one write, O_APPEND); the
KILL_AT-th call (if > 0) SIGKILLs this process in the middle of the stream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pandas as pd

import asyncgraph as ag

# The run's number and kill point reach the stages through the environment, read at
# call time: as globals of the stages' code they would be part of its fingerprint, and
# every run (another kill point) would find the done batches stale.
os.environ["STREAM_DIR"], os.environ["STREAM_RUN"], os.environ["STREAM_KILL_AT"] = sys.argv[1:4]
DIR = sys.argv[1]


def note(stage: str, batch: pd.DataFrame) -> None:
    ids = ",".join(str(i) for i in sorted(set(batch["id"])))
    env = os.environ
    path = os.path.join(env["STREAM_DIR"], "calls.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{env['STREAM_RUN']} {stage} {ids}\n".encode())
    finally:
        os.close(fd)
    n = int(env.get("STREAM_CALLS", "0")) + 1
    env["STREAM_CALLS"] = str(n)
    if n == int(env["STREAM_KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)


def source(start: int = 0):
    for i in range(start, 50):
        yield pd.DataFrame({"id": [i] * 4, "row": range(4)})


g = ag.Graph()


@g.stream
async def fetch(source: pd.DataFrame) -> pd.DataFrame:
    await asyncio.sleep(0)
    note("fetch", source)
    return source.assign(fetched=1)


@g.stream(batch_size=3)
def score(fetch: pd.DataFrame) -> pd.DataFrame:
    note("score", fetch)
    return fetch.assign(score=fetch["row"] * 2)


@g.stream(batch_size=6)
async def publish(score: pd.DataFrame) -> pd.DataFrame:
    await asyncio.sleep(0)
    note("publish", score)
    return score


if __name__ == "__main__":
    r = ag.run_stream_sync(
        g, source=source, out=os.path.join(DIR, "out"), store=os.path.join(DIR, "s.db")
    )
    print(r.done, r.failed, r.cancelled, r.skipped)
