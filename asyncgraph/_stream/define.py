"""Building a stream stage's :class:`~asyncgraph.Task` (``Graph.stream``, ``add_stream``).

A stage is an ordinary task with a :class:`~.spec.StreamSpec`: every option ``add``
takes is checked by ``make_task``, then the batch parameter (the function's first) is
taken out of the binding. The task's ``deps`` are its stream parents followed by the
plain tasks its other parameters name, so the graph's order, cycles and reach see both.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._exceptions import InvalidTaskError
from .._task import Kind, Task, _call_of, make_task
from .spec import SOURCE, StreamSpec

__all__ = ["make_stream_task"]


def _batch_param(name: str, fn: Callable[..., Any]) -> str:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise InvalidTaskError(
            name, "a stream stage needs a function whose signature can be read"
        ) from None
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise InvalidTaskError(
            name,
            "a stream stage's first parameter receives the batches (a DataFrame): give "
            f"the function one, named {SOURCE!r} or after its stream parent "
            "(def stage(source): ...)",
        )
    return params[0].name


def _check_batch_options(name: str, batch_size: Any, batch_timeout: Any) -> None:
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InvalidTaskError(
            name, f"batch_size must be an int >= 1 (rows per call) or None, not {batch_size!r}"
        )
    if batch_timeout is None:
        return
    if (
        isinstance(batch_timeout, bool)
        or not isinstance(batch_timeout, (int, float))
        or not batch_timeout > 0
        or math.isinf(batch_timeout)
    ):
        raise InvalidTaskError(
            name, f"batch_timeout must be a number of seconds > 0, not {batch_timeout!r}"
        )
    if batch_size is None:
        raise InvalidTaskError(
            name,
            "batch_timeout bounds how long a partial merge waits for batch_size rows; "
            "without batch_size there is no merge: set batch_size too, or drop batch_timeout",
        )


def make_stream_task(
    name: str,
    fn: Callable[..., Any],
    *,
    inputs: Iterable[str] | None = None,
    deps: Mapping[str, str] | None = None,
    kind: Kind | str | None = None,
    retries: int = 0,
    retry_delay: float = 0.1,
    timeout: float | None = None,
    priority: int = 0,
    resources: Iterable[str] = (),
    batch_size: int | None = None,
    batch_timeout: float | None = None,
) -> Task:
    """A stream stage's task; every error names the task and what to change."""
    if name == SOURCE:
        raise InvalidTaskError(
            name, f"{SOURCE!r} names the stream's source; give the stage another name"
        )
    if not callable(fn):
        raise InvalidTaskError(name, f"the function must be callable, not {type(fn).__name__}")
    call = _call_of(fn)
    if inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call):
        raise InvalidTaskError(
            name,
            "a stream stage returns one DataFrame per call, and its function is a "
            "generator function: return a DataFrame instead (pd.concat the pieces, or "
            "use batch_size= to have the stream split the batches)",
        )
    param = _batch_param(name, fn)
    _check_batch_options(name, batch_size, batch_timeout)
    if inputs is None:
        parents: tuple[str, ...] = () if param == SOURCE else (param,)
        edges = (SOURCE,) if param == SOURCE else parents
    else:
        if isinstance(inputs, str) or not isinstance(inputs, Iterable):
            raise InvalidTaskError(
                name, f"inputs must be a list of stream stage names, not {inputs!r}"
            )
        edges = tuple(inputs)
        if not edges or not all(isinstance(i, str) for i in edges):
            raise InvalidTaskError(
                name, f"inputs must be a non-empty list of stream stage names, not {inputs!r}"
            )
        if len(set(edges)) != len(edges):
            raise InvalidTaskError(name, f"inputs lists {sorted(edges)} with repeats")
        parents = tuple(i for i in edges if i != SOURCE)
    if deps is not None and not isinstance(deps, Mapping):
        raise InvalidTaskError(
            name,
            "a stream stage's deps= maps its other parameters to plain tasks "
            "({'param': 'task'}); its batch parameter comes first and takes the batches",
        )
    if deps is not None and param in deps:
        raise InvalidTaskError(
            name, f"deps names {param!r}, the batch parameter: name stream parents in inputs="
        )
    # make_task checks every option and the signature; the batch parameter is bound
    # under a placeholder and then taken out.
    placeholder = "\x00batch"
    task = make_task(
        name,
        fn,
        deps=None if deps is None else {param: placeholder, **deps},
        kind=kind,
        retries=retries,
        retry_delay=retry_delay,
        timeout=timeout,
        priority=priority,
        resources=resources,
    )
    kwargs = tuple((p, t) for p, t in task.kwargs if p != param)
    plain = tuple(t for _, t in kwargs)
    for p in parents:
        if p == name:
            from .._exceptions import CycleError

            raise CycleError([name, name])
    return dataclasses.replace(
        task,
        args=(),
        kwargs=kwargs,
        deps=tuple(dict.fromkeys((*parents, *plain))),
        stream=StreamSpec(param, edges, batch_size, batch_timeout),
    )
