"""Streams: DataFrame batches through a graph of ``@g.stream`` stages.

The package's modules, from the ground up: ``spec`` (a stage's stream options, what a
:class:`~asyncgraph.Task` carries), ``define`` (building a stage's task), ``frames``
(splitting, merging and the worker-side call on a list of pieces), ``result``
(:class:`~asyncgraph.Batch`, :class:`~asyncgraph.StreamResult`), ``engine`` (one
stream's run: bounded queues, terminal-first order), ``api`` (``open_stream``,
``run_stream``, ``run_stream_sync``). The package itself imports none of them, so a
``Task`` can name ``spec`` without loading the engine.
"""

from __future__ import annotations

__all__: list[str] = []
