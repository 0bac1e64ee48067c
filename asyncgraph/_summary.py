"""The value :meth:`Graph.summary` returns (apart from _report so that exporting it does
not import pandas: its DataFrame is built by ``_report.summary``)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Summary"]


@dataclass(frozen=True, slots=True, eq=False)
class Summary:
    """What :meth:`Graph.summary` returns: counts, and where the time went.

    ``counts`` is a DataFrame: one row per State (all six, in State order), columns
    ``io``, ``cpu`` and ``total``. ``busy_s`` adds up every task's duration; ``wall_s``
    spans the first start to the last finish (None before anything ran);
    ``critical_path`` is the longest chain of done tasks, each depending on the one
    before, weighted by their durations, and ``critical_path_s`` its length.
    """

    tasks: int
    counts: pd.DataFrame
    busy_s: float
    wall_s: float | None
    critical_path_s: float
    critical_path: tuple[str, ...]

    @property
    def by_status(self) -> dict[str, int]:
        """Tasks per State value, zeros included."""
        return {str(k): int(v) for k, v in self.counts["total"].items()}

    @property
    def by_kind(self) -> dict[str, int]:
        """Tasks per kind ("io", "cpu")."""
        return {k: int(self.counts[k].sum()) for k in ("io", "cpu")}

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.by_status.items() if v)
        wall = "-" if self.wall_s is None else f"{self.wall_s:.3f}s"
        path = " -> ".join(self.critical_path) or "-"
        return (
            f"{self.tasks} tasks ({counts or 'none'}); wall {wall}, busy {self.busy_s:.3f}s; "
            f"critical path {self.critical_path_s:.3f}s: {path}"
        )

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(str(self))}</p>" + str(self.counts.to_html())
