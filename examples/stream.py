"""Streams: DataFrame batches through a graph, in bounded memory, exactly once on disk.

A plain task (the "model") runs once; three stream stages then process every batch the
source gives: ``fetch`` on the event loop (IO), ``score`` in worker processes (CPU,
re-batched to 500 rows), ``publish`` on the loop again. The sink's batches are written
as Parquet under ``out/``, and the store records each source batch once its files are in
place, so the second run below skips everything already done without calling any task.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pandas as pd

import asyncgraph as ag

g = ag.Graph()


@g.task
def model() -> dict[str, float]:
    return {"weight": 2.0}  # loaded once, the same value for every batch


@g.stream
async def fetch(source: pd.DataFrame) -> pd.DataFrame:
    await asyncio.sleep(0)  # stands for a network call per batch
    return source.assign(value=source["n"] * 1.5)


@g.stream(kind="cpu", batch_size=500)
def score(fetch: pd.DataFrame, model: dict[str, float]) -> pd.DataFrame:
    return fetch.assign(score=fetch["value"] * model["weight"])


@g.stream
async def publish(score: pd.DataFrame) -> pd.DataFrame:
    return score[score["score"] > 100]  # a filter: an empty result passes nothing on


def read_files(start: int = 0):
    """The source: 8 "files" of 300 rows; start= lets a resumed stream skip ahead."""
    for i in range(start, 8):
        yield pd.DataFrame({"file": i, "n": range(i * 300, (i + 1) * 300)})


async def main(where: Path) -> None:
    out, store = where / "scores", where / "scores.db"
    async with ag.open_stream(
        g, source=read_files, max_batches=5, out=out, store=store, cpu_workers=2
    ) as s:
        async for b in s.outputs():  # ag.Batch(task, id, rows, data), as they complete
            print(f"  {b.task} batch {b.id}: {b.rows} rows from source batch(es) {b.sources}")
    print("first run:", s.result)
    assert s.result.done == 5

    result = await ag.run_stream(g, source=read_files, out=out, store=store, cpu_workers=2)
    print("second run:", result)
    assert (result.done, result.skipped) == (3, 5)  # the 5 done batches were not redone
    print(result.to_frame())

    data = pd.read_parquet(out)
    assert sorted(data["file"].unique()) == list(range(8))
    assert not data.duplicated(["n"]).any()  # every row once
    print(f"{len(data)} rows in {len(list(out.glob('*.parquet')))} Parquet files")
    print(ag.plan_stream(g, store=store))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
