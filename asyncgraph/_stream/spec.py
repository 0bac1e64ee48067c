"""What makes a task a stream stage: :class:`StreamSpec`, carried by ``Task.stream``.

A stream stage is a task whose first parameter receives DataFrame batches: from the
stream's source (the parameter is named ``source``) or from its stream parents (the
parameter names one, or ``inputs=[...]`` names several: a union). Every other parameter
binds to a plain task by the usual rules, through the task's ``kwargs``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFINED", "SOURCE", "StreamSpec", "refuse_stream_tasks"]

#: The name a source stage's batch parameter gives the stream's source.
SOURCE = "source"

#: Set once a stream stage exists in this process (a StreamSpec was made or unpickled):
#: until then no graph can hold one, and a plain run skips the scan in
#: :func:`refuse_stream_tasks` (a run of 100k tasks pays nothing for streams).
DEFINED = [False]


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """A stage's stream options (see ``Graph.stream``).

    ``param`` is the batch parameter's name; ``inputs`` where its batches come from:
    stream parents, and ``"source"`` for the stream's source (a union when several);
    ``batch_size`` the rows per call (None: batches as they come); ``batch_timeout``
    how long a partial merge may wait before it is sent anyway.
    """

    param: str
    inputs: tuple[str, ...]
    batch_size: int | None = None
    batch_timeout: float | None = None

    def __post_init__(self) -> None:
        DEFINED[0] = True  # a graph may hold a stage from now on

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickled through __init__, so a graph loaded in a fresh process sets DEFINED.
        return (StreamSpec, (self.param, self.inputs, self.batch_size, self.batch_timeout))


def refuse_stream_tasks(tasks: Iterable[Any], caller: str) -> None:
    """TypeError if any of ``tasks`` is a stream stage: a plain run cannot run one."""
    if not DEFINED[0]:
        return
    stages = [t.name for t in tasks if t.stream is not None]
    if stages:
        raise TypeError(
            f"{caller}() cannot run stream stages ({', '.join(map(repr, stages[:5]))}"
            f"{', ...' if len(stages) > 5 else ''}): they take batches of a source; run "
            "the graph with asyncgraph.run_stream(g, source=...) or open_stream"
        )
