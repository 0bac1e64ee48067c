"""Batches as rows: splitting, merging, and the call of a stage on a list of pieces.

A batch travels as a DataFrame, or, once re-batched, as a list of DataFrame pieces
(iloc slices and whole frames) that are concatenated where the stage runs: in the worker
process for a CPU stage, in the thread for a plain IO function, on the loop only for a
coroutine stage. Splits follow dplutils' ``split_dataframe``: the fewest pieces of at
most ``batch_size`` rows, their sizes within one row of each other, larger ones first.
pandas is imported only when a list is concatenated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["as_frame", "call_on_pieces", "split_bounds", "take_rows"]


def split_bounds(rows: int, batch_size: int) -> list[int]:
    """The row offsets ``[0, ..., rows]`` of the fewest pieces of at most ``batch_size``
    rows (dplutils' rule: row ``i`` goes to piece ``floor(i * n / rows)``)."""
    n = -(-rows // batch_size)
    return [(k * rows + n - 1) // n for k in range(n + 1)]


def take_rows(parts: Sequence[Any], start: int, stop: int) -> list[Any]:
    """Rows ``start:stop`` of the frames ``parts`` read as one, as a list of slices."""
    out: list[Any] = []
    offset = 0
    for part in parts:
        n = len(part)
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            out.append(part if lo == 0 and hi == n else part.iloc[lo:hi])
        offset += n
        if offset >= stop:
            break
    return out


def as_frame(data: Any) -> Any:
    """A DataFrame from a batch: itself, or its pieces concatenated."""
    if type(data) is not list:
        return data
    if len(data) == 1:
        return data[0]
    import pandas as pd

    return pd.concat(data, ignore_index=False)


def call_on_pieces(fn: Callable[..., Any], data: Any, /, *args: Any, **kwargs: Any) -> Any:
    """``fn(batch, ...)`` with the batch's pieces concatenated first, where this runs
    (a worker process, a thread): never on the event loop."""
    return fn(as_frame(data), *args, **kwargs)
