"""What a stream hands back: :class:`Batch` (one output), :class:`StageSummary` (one
stage's counts), :class:`StreamResult` (the whole stream) and :class:`StreamFailures`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Batch", "StageSummary", "StreamFailures", "StreamPlan", "StreamResult"]


class Batch(NamedTuple):
    """One output batch of a stream's sink stage, as :meth:`OpenStream.outputs` yields it.

    ``task`` is the sink stage; ``id`` the batch's name (the source batch's number,
    ``"17"``; a split piece ``"17.1"``; a merge ``"17+18"``); ``rows`` its length;
    ``data`` the DataFrame; ``sources`` the source batch numbers it derives from;
    ``path`` the Parquet file it was written to (with ``out=``), else None.
    """

    task: str
    id: str
    rows: int
    data: Any
    sources: tuple[int, ...] = ()
    path: str | None = None


class StageSummary(NamedTuple):
    """One stage's counts over a stream: calls made (retries included), batches that
    ended done or failed there, rows in and out, and seconds spent in its calls."""

    task: str
    calls: int
    done: int
    failed: int
    rows_in: int
    rows_out: int
    busy: float


class StreamFailures(ExceptionGroup[Exception]):
    """Batches of a stream failed (an ExceptionGroup of their errors); ``result`` is
    the :class:`StreamResult` of the stream as it ended."""

    result: StreamResult | None

    def __new__(
        cls, message: str, errors: list[Exception], result: StreamResult | None = None
    ) -> StreamFailures:
        self = super().__new__(cls, message, errors)
        self.result = result
        return self

    def __init__(
        self, message: str, errors: list[Exception], result: StreamResult | None = None
    ) -> None:
        super().__init__(message, errors)


@dataclass
class StreamResult:
    """How a stream ended.

    ``done``, ``failed`` and ``cancelled`` count source batches (``skipped``: done in
    the store already, not run again); ``rows`` the source rows read; ``errors`` the
    error of each failed batch by source number; ``outputs`` the output batches when
    they were collected (``run_stream(collect=True)``, the default without ``out=``);
    ``files`` the Parquet files written; ``stopped`` why the stream ended early
    (``"deadline"``, ``"fail_fast"``, ``"max_failed_batches"``, ``"cancelled"``) or None.
    """

    done: int = 0
    failed: int = 0
    cancelled: int = 0
    skipped: int = 0
    rows: int = 0
    errors: dict[int, BaseException] = field(default_factory=dict)
    outputs: list[Batch] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    stages: dict[str, StageSummary] = field(default_factory=dict)
    stopped: str | None = None

    def summary(self) -> list[StageSummary]:
        """Per stage: calls, batches done and failed, rows in and out, busy seconds."""
        return list(self.stages.values())

    def to_frame(self) -> pd.DataFrame:
        """The summary as a pandas DataFrame, one row per stage."""
        import pandas as pd

        return pd.DataFrame(self.summary(), columns=StageSummary._fields).set_index("task")

    def raise_for_failures(self) -> StreamResult:
        """Raise :class:`StreamFailures` if a batch failed or was cancelled; else self."""
        errors = [e for e in self.errors.values() if isinstance(e, Exception)]
        if errors or self.cancelled:
            what = f"{self.failed} batch(es) failed" if self.failed else ""
            if self.cancelled:
                what += (", " if what else "") + f"{self.cancelled} cancelled"
            raise StreamFailures(
                f"stream: {what}", errors or [RuntimeError("batches were cancelled")], self
            )
        return self

    def __repr__(self) -> str:
        parts = [f"{self.done} done"]
        for name in ("failed", "cancelled", "skipped"):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)} {name}")
        why = f" (stopped by {self.stopped})" if self.stopped else ""
        return f"<StreamResult batches: {', '.join(parts)}{why}; {self.rows} rows>"


class StreamPlan(NamedTuple):
    """What a durable stream will do on its store, from :func:`plan_stream`: source
    batches done and still valid (skipped), done by other code (``stale``: recomputed,
    their files replaced), failed or cancelled (sourced again), and done batches that
    ``reset=`` sends back (``reset``: recomputed, their files replaced)."""

    done: int
    stale: int
    failed: int
    cancelled: int
    reset: int = 0

    def __str__(self) -> str:
        lines = [f"{self.done} done batches will be skipped"]
        if self.reset:
            lines.append(f"reset: {self.reset} done batches will be recomputed")
        if self.stale:
            lines.append(f"code changed: {self.stale} done batches will be recomputed")
        if self.failed or self.cancelled:
            lines.append(
                f"{self.failed} failed and {self.cancelled} cancelled batches will be sourced again"
            )
        return "; ".join(lines)
