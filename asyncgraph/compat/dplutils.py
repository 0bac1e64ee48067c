"""dplutils' executor interface on asyncgraph's streams: :class:`StreamExecutor`.

A thin adapter on ``dplutils.pipeline.PipelineExecutor`` (dplutils 0.8.2): give it a
list of ``PipelineTask`` (a chain) or a ``PipelineGraph``, ``max_batches=`` and
``generator=``, and ``run()`` yields ``OutputBatch(data, task)`` as the sinks complete,
``writeto(outdir, partition_by_task=None, task_partition_name="task")`` writes them as
Parquet. Underneath, each ``PipelineTask`` is an asyncgraph stream stage (its
``batch_size`` re-batches as dplutils does; its ``kwargs`` and ``context_kwargs`` are
bound when the run starts), so scheduling is asyncgraph's: closest to a sink first, a
bounded queue per edge, the source read only when the first stages have room.

``run()`` is a plain generator, as dplutils' is: the stream runs on an event loop in a
helper thread and hands each output over on demand, so an output not asked for is not
computed ahead (beyond the queues). Closing the generator early cancels the stream and
waits for its cleanup. A task that raises ends the run with that error (dplutils'
executors do the same); pass ``fail_fast=False`` to let the other batches go on.

The functions run in the stream's threads (``kind="io"``, the default) or, with
``kind="cpu"``, in worker processes. dplutils itself is needed (``pip install --no-deps
dplutils networkx pyyaml``: its Ray dependency is not used here).

State it keeps (one ``StreamExecutor``)
    ``graph``, ``ctx``        dplutils' own (the task graph, the context);
    ``max_batches``, ``generator_fun``  what to stream;
    ``options``               asyncgraph's options for each stream (queue_size, max_io, ...).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
from dplutils.pipeline import OutputBatch, PipelineExecutor

from .._api import Graph
from .._options import RunOptions
from .._stream.durable import Durable
from .._stream.engine import Engine
from .._stream.result import StreamFailures

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["StreamExecutor", "to_graph"]

_END = object()


def _stage_fn(func: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[[Any], Any]:
    def stage(batch: Any) -> Any:
        return func(batch, **kwargs)

    stage.__qualname__ = stage.__name__ = getattr(func, "__name__", "stage")
    return stage


def to_graph(pipeline: Any, context: dict[str, Any], kind: str = "io") -> Graph:
    """An asyncgraph Graph of stream stages from a dplutils ``PipelineGraph``."""
    g = Graph()
    for task in nx.topological_sort(pipeline):
        parents = [p.name for p in pipeline.predecessors(task)]
        g.add_stream(
            task.name,
            _stage_fn(task.func, task.resolve_kwargs(context)),
            inputs=parents or ["source"],
            kind=kind,
            batch_size=task.batch_size,
        )
    return g


class StreamExecutor(PipelineExecutor):  # type: ignore[misc]
    """dplutils' ``PipelineExecutor`` run by asyncgraph's stream engine.

    ``max_batches`` caps the source batches (None: until the generator ends, or
    forever for the default generator, as dplutils'); ``generator`` is a callable
    returning an iterator of DataFrames (default: an endless stream of one-row frames
    ``{"run_id", "id"}``). The other options are asyncgraph's (see ``open_stream``).
    """

    def __init__(
        self,
        graph: Any,
        max_batches: int | None = None,
        generator: Callable[[], Any] | None = None,
        *,
        kind: str = "io",
        queue_size: int = 2,
        max_io: int | None = None,
        cpu_workers: int | None = None,
        fail_fast: bool = True,
    ) -> None:
        super().__init__(graph)
        self.max_batches = max_batches
        self.generator_fun = generator or self.source_generator_fun
        self.kind = kind
        self.options: dict[str, Any] = {
            "queue_size": queue_size,
            "max_io": max_io,
            "cpu_workers": cpu_workers,
            "fail_fast": fail_fast,
        }

    def source_generator_fun(self) -> Iterator[pd.DataFrame]:
        import pandas as pd

        bid = 0
        while True:
            yield pd.DataFrame({"run_id": [self.run_id], "id": [bid]})
            bid += 1

    def _engine(self, durable: Durable | None = None) -> Engine:
        g = to_graph(self.graph, self.ctx, self.kind)
        o = self.options
        return Engine(
            g,
            self.generator_fun,
            RunOptions(max_io=o["max_io"], cpu_workers=o["cpu_workers"], fail_fast=o["fail_fast"]),
            queue_size=o["queue_size"],
            max_batches=self.max_batches,
            start=0,
            mode="pull",
            max_failed_batches=None,
            durable=durable,
        )

    def execute(self) -> Iterator[OutputBatch]:
        engine = self._engine()
        for batch in _pull(engine):
            yield OutputBatch(batch.data, task=batch.task)

    def writeto(
        self,
        outdir: Path | str,
        partition_by_task: bool | None = None,
        task_partition_name: str = "task",
    ) -> None:
        """Run the pipeline, writing each output batch as Parquet under ``outdir``
        (``task_partition_name=<sink>/`` directories when ``partition_by_task``, or by
        default when there are several sinks), through the stream's own writer."""
        self.validate()
        self._run_id = None
        durable = Durable(outdir, None, partition=partition_by_task, part_name=task_partition_name)
        for _ in _pull(self._engine(durable)):
            pass


def _pull(engine: Engine) -> Iterator[Any]:
    """The engine's outputs, one per ``next()``, from a loop in a helper thread."""
    out: queue.SimpleQueue[Any] = queue.SimpleQueue()
    demand = threading.Semaphore(0)
    closing = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        state["loop"] = asyncio.get_running_loop()
        state["task"] = asyncio.current_task()
        task = asyncio.ensure_future(engine.run())
        try:
            it = engine.out.__aiter__()
            while True:
                await asyncio.to_thread(demand.acquire)
                if closing.is_set():
                    break
                try:
                    batch = await it.__anext__()
                except StopAsyncIteration:
                    break
                out.put(batch)
            if closing.is_set():
                engine.stop("cancelled")
            engine.out.drop_all()
            await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            out.put(("error", exc))
        out.put(_END)

    thread = threading.Thread(target=target, name="asyncgraph-dplutils", daemon=True)
    thread.start()
    try:
        while True:
            demand.release()
            item = out.get()
            if item is _END:
                return
            if type(item) is tuple and item and item[0] == "error":
                exc = item[1]
                if isinstance(exc, StreamFailures) and len(exc.exceptions) == 1:
                    raise exc.exceptions[0] from None  # dplutils' executors raise it
                raise exc
            yield item
    finally:
        closing.set()
        demand.release()
        thread.join()
