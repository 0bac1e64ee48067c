"""Task specifications and the binding of dependency results to parameters.

A :class:`Task` is immutable. How a task receives its dependencies' results is one uniform
description, whichever style defined it:

* ``args``: task names whose results are passed positionally, in order;
* ``kwargs``: ``(parameter, task)`` pairs passed by keyword;
* ``skip_none``: taskmap's rule, a ``None`` result is not passed at all.

The three definition styles map onto it: parameter names (``kwargs``), ``deps=[...]``
(``args``), ``deps={"param": "task"}`` (``kwargs``), and ``create_graph`` (``args`` with
``skip_none``). Binding is checked against the function's signature when the task is
added, so a mismatch is reported before anything runs.

Building is fast for the many tasks of a big graph (issue 15): what a plain function's
signature says is read once per code object (:class:`_Plan`), the usual arguments take
:func:`fast_task`, which builds exactly what the full checks (:func:`_make_task_checked`)
would and leaves every error to them, and Tasks and Elements are built by plain slot
stores (:func:`_constructor`).
"""

from __future__ import annotations

import enum
import functools
import inspect
import keyword
import math
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._exceptions import InvalidTaskError, MissingResultError, SignatureError
from ._state import NO_RESULT
from ._stream.spec import StreamSpec

if TYPE_CHECKING:
    from ._state import TaskRecord

__all__ = ["UNKNOWN_ITEM", "Element", "Kind", "Task", "fast_task", "make_task", "new_element"]


class Kind(enum.Enum):
    """Where a task runs. Values are persisted: never change them."""

    IO = "io"  # coroutine on the event loop; a plain function in a thread
    CPU = "cpu"  # a worker process (sync or async function)

    # Members are singletons, so identity hashing is right; Enum's own __hash__ is
    # Python code, and the scheduler hashes kinds several times per task.
    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Task:
    """One task's definition (never its state: that lives in the Graph's records)."""

    name: str
    fn: Callable[..., Any]
    kind: Kind
    args: tuple[str, ...] = ()
    kwargs: tuple[tuple[str, str], ...] = ()
    skip_none: bool = False
    retries: int = 0
    retry_delay: float = 0.1
    timeout: float | None = None
    priority: int = 0
    resources: tuple[str, ...] = ()
    is_async: bool = False
    #: The dependency names, each once, in binding order (derived from args and kwargs),
    #: then the order-only ones of ``after``.
    deps: tuple[str, ...] = ()
    #: Fan-out: a template maps over the result of this dependency (see :mod:`._fan`).
    over: str | None = None
    #: Fan-out: a template's element key function (None: elements named by position).
    key: Callable[[Any], Any] | None = None
    #: Fan-out: an element's template (None for every other task).
    family: str | None = None
    #: Order-only dependencies: waited for, their results not passed (``after=``).
    after: tuple[str, ...] = ()
    #: A stream stage's options (``Graph.stream``), or None for a plain task.
    stream: StreamSpec | None = None

    def bind(self, records: Mapping[str, TaskRecord]) -> tuple[list[Any], dict[str, Any]]:
        """The call arguments, from the records of the (done) dependencies.

        Raises :class:`MissingResultError` if a dependency was marked done without a
        result (``NO_RESULT``): its dependents must be told, not handed ``None``.
        """
        if self.skip_none:
            args = [r for r in (records[d].result for d in self.args) if r is not None]
            kwargs = {p: r for p, t in self.kwargs if (r := records[t].result) is not None}
        else:
            args = [records[d].result for d in self.args]
            kwargs = {p: records[t].result for p, t in self.kwargs} if self.kwargs else {}
        # Identity, in a plain loop: ``NO_RESULT in args`` would call each result's
        # __eq__ (an array's raises), and this runs for every task, on every run.
        for r in args:
            if r is NO_RESULT:
                raise self._missing(records)
        if kwargs:
            for r in kwargs.values():
                if r is NO_RESULT:
                    raise self._missing(records)
        return args, kwargs

    def _missing(self, records: Mapping[str, TaskRecord]) -> MissingResultError:
        bound = dict.fromkeys((*self.args, *(t for _, t in self.kwargs)))
        missing = tuple(d for d in bound if records[d].result is NO_RESULT)
        return MissingResultError(self.name, missing)


class _UnknownItem:
    """The type of :data:`UNKNOWN_ITEM`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<item not loaded: found in its parent's result when the element runs>"


#: The item of an element loaded from a store (``load`` unpickles nothing): its family
#: finds it again when it expands; an element run on its own (``subgraph``) finds it in
#: its parent's result, by its key.
UNKNOWN_ITEM: Any = _UnknownItem()


@dataclass(frozen=True, slots=True)
class Element(Task):
    """One element of a mapped task (a template): ``score[alice]``, a task of its own.

    It shares its template's function and options; ``input`` names the dependency
    whose result was mapped (None for an element-wise element, which takes its
    counterpart's whole result), and ``value`` is its one item of that result.
    ``index`` is its position in the family, ``at`` its key as written in its name.
    """

    value: Any = None
    input: str | None = None
    index: int = 0
    at: str = ""

    def bind(self, records: Mapping[str, TaskRecord]) -> tuple[list[Any], dict[str, Any]]:
        """As :meth:`Task.bind`, the mapped dependency giving this element's item."""
        over = self.input
        if over is None:
            return Task.bind(self, records)
        value = self.value
        if value is UNKNOWN_ITEM:
            value = self._find_item(records[over].result)
        args: list[Any] = []
        for d in self.args:
            r = value if d == over else records[d].result
            if r is NO_RESULT:
                raise self._missing(records)
            if not (self.skip_none and r is None):
                args.append(r)
        kwargs: dict[str, Any] = {}
        for p, t in self.kwargs:
            r = value if t == over else records[t].result
            if r is NO_RESULT:
                raise self._missing(records)
            if not (self.skip_none and r is None):
                kwargs[p] = r
        return args, kwargs

    def _find_item(self, parent: Any) -> Any:
        """This element's item in its parent's result, by its key (see UNKNOWN_ITEM)."""
        if isinstance(parent, Mapping):
            for k, v in parent.items():
                if str(k) == self.at:
                    return v
        elif self.key is None:
            if self.at.isdigit() and int(self.at) < len(parent):
                return parent[int(self.at)]
        else:
            for v in parent:
                if str(self.key(v)) == self.at:
                    return v
        raise MissingResultError(self.name, (self.input or "",))


def _unwrap_partial(fn: Any) -> Any:
    # By type, never by attribute or isinstance (which reads ``__class__``): a Mock
    # answers ``fn.func`` with another Mock, forever, and a proxy raises on any lookup.
    while issubclass(type(fn), functools.partial):
        fn = fn.func
    return fn


def _call_of(fn: Any) -> Any:
    """What calling ``fn`` runs: a function or method itself, else its class's ``__call__``.

    Looked up on the type, statically, so an object whose attributes raise or answer
    every name (a proxy, a Mock) is asked nothing.
    """
    fn = _unwrap_partial(fn)
    t = type(fn)
    if t is types.FunctionType or t is types.MethodType or issubclass(t, type):
        return fn
    call = inspect.getattr_static(t, "__call__", None)
    if isinstance(call, (staticmethod, classmethod)):
        call = call.__func__
    return fn if call is None else _unwrap_partial(call)


def is_async_callable(fn: Any) -> bool:
    call = _call_of(fn)
    if inspect.iscoroutinefunction(call):
        return True
    if call is fn:
        return False
    try:  # an object that says so itself (unittest.mock.AsyncMock)
        return inspect.iscoroutinefunction(fn)
    except Exception:  # noqa: BLE001 - an object that cannot be asked is not async
        return False


def _check_not_a_generator(name: str, fn: Any) -> None:
    """Refuse generator functions: calling one runs none of its body."""
    call = _call_of(fn)
    for what, test, instead in (
        ("an async generator function", inspect.isasyncgenfunction, "[x async for x in ...]"),
        ("a generator function", inspect.isgeneratorfunction, "list(...)"),
    ):
        if test(call):
            raise InvalidTaskError(
                name,
                f"its function is {what}: calling it only creates a generator and runs "
                "none of its body, so the task would end done with an unstarted generator "
                f"as its result; return a list instead (collect the items: return "
                f"{instead}); a task runs once, so for DataFrame batches that flow through "
                "stages use @g.stream and run_stream (docs/streams.md)",
            )


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: trust the user
        return None


def _params_as_deps(name: str, sig: inspect.Signature) -> tuple[tuple[str, str], ...]:
    pairs = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        if p.kind is p.POSITIONAL_ONLY:
            raise SignatureError(
                name,
                f"parameter {p.name!r} is positional-only, so it cannot name a dependency;"
                " pass deps=[...] to give its results positionally",
            )
        pairs.append((p.name, p.name))
    return tuple(pairs)


def _check_binding(
    name: str, sig: inspect.Signature, n_args: int, kw: Iterable[str], skip_none: bool
) -> None:
    kw = list(kw)
    # With skip_none (taskmap's rule) a dependency that returns None passes nothing, so the
    # function may take fewer positional arguments than it has dependencies.
    counts = range(n_args, -1, -1) if skip_none else (n_args,)
    errors = []
    for n in counts:
        try:
            sig.bind(*range(n), **dict.fromkeys(kw))
        except TypeError as exc:
            errors.append(str(exc))
        else:
            return
    passed = []
    if n_args:
        passed.append(f"{n_args} positional result(s)")
    if kw:
        passed.append("keyword(s) " + ", ".join(kw))
    raise SignatureError(
        name,
        f"its signature {sig} cannot accept what its dependencies pass "
        f"({' and '.join(passed) or 'nothing'}): {errors[0]}; "
        "change the parameters or the deps",
    )


def _check_encodable(name: str) -> None:
    """A task name is stored (SQLite: UTF-8 only) and printed: refuse a lone surrogate,
    as ``os.fsdecode`` makes of a file name that is not UTF-8, before anything runs."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidTaskError(
            name,  # its repr (in the message) escapes the surrogate
            f"a task name must be text UTF-8 can encode; it has {name[exc.start]!r} at "
            f"position {exc.start} (a lone surrogate, as os.fsdecode gives for bytes that "
            "are not UTF-8): name the task without it",
        ) from None


def short_repr(value: Any, limit: int = 60) -> str:
    """``type value`` for an error message, the value's repr cut to ``limit`` characters
    (a Task's repr holds its function and every option: a line of its own)."""
    if isinstance(value, Task):
        return f"Task {value.name!r}"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(value).__name__} {text}"


def task_name(value: Any) -> Any:
    """A :class:`Task` where a task name is expected stands for its name."""
    return value.name if isinstance(value, Task) else value


def _as_names(name: str, what: str, value: Any, kind: str = "task names") -> tuple[str, ...]:
    if isinstance(value, Task) and kind == "task names":
        value = [value]
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidTaskError(name, f"{what} must be a list of {kind}, not {short_repr(value)}")
    if what == "deps" and isinstance(value, (set, frozenset)) and len(value) > 1:
        # Results are passed positionally, in the order of deps; a set's order changes
        # from one process to the next (hash randomisation), and so would the call.
        raise InvalidTaskError(
            name,
            f"deps is a {type(value).__name__} ({sorted(map(repr, value))}), which has no "
            "order, and a list of deps passes the results positionally in its order; pass "
            "a list, or a dict {'param': 'task'} to pass them by keyword",
        )
    out = tuple(task_name(v) for v in value) if kind == "task names" else tuple(value)
    for v in out:
        if not isinstance(v, str):
            also = " or Tasks" if kind == "task names" else ""
            raise InvalidTaskError(
                name, f"{what} must hold {kind} (str{also}), found {short_repr(v)}"
            )
    return out


def _param_name(name: str, key: Any) -> str:
    """A ``deps={"param": "task"}`` key: a parameter name, so an identifier, not a keyword."""
    if not isinstance(key, str):
        why = f"keys must be parameter names (str), not {type(key).__name__} {key!r}"
    elif not key.isidentifier():
        why = f"{key!r} is not a Python identifier, so it cannot be a parameter name"
    elif keyword.iskeyword(key):
        why = f"{key!r} is a Python keyword, so it cannot be a parameter name"
    else:
        return key
    raise InvalidTaskError(
        name,
        f"deps key {key!r}: {why}; deps={{'param': 'task'}} maps the function's parameter "
        "names to task names (pass deps=[...] to give results positionally)",
    )


def make_task(
    name: str,
    fn: Callable[..., Any],
    *,
    deps: Iterable[str] | Mapping[str, str] | None = None,
    kind: Kind | str | None = None,
    retries: int = 0,
    retry_delay: float = 0.1,
    timeout: float | None = None,
    priority: int = 0,
    resources: Iterable[str] = (),
    skip_none: bool = False,
    after: Iterable[str] | None = None,
    over: str | Task | None = None,
    key: Callable[[Any], Any] | None = None,
) -> Task:
    """Build and check a Task; every error names the task and the offending option.

    ``after`` names order-only dependencies: the task waits for them (and is skipped if
    one fails) but is not passed their results.

    Most tasks take a fast path: a plain function (the same code as a function seen
    before, so its signature was read once, see :class:`_Plan`), options of their usual
    types, ``deps`` a list, tuple or dict of names, no ``after``/``over``. Anything
    else, and anything the fast path would refuse, goes the full way
    (:func:`_make_task_checked`), which raises every error as it always did: the fast
    path only ever builds the Task the full way would build.
    """
    if after is None and over is None and key is None:
        task = fast_task(
            name, fn, deps, kind, retries, retry_delay, timeout, priority, resources, skip_none
        )
        if task is not None:
            return task
    return _make_task_checked(
        name,
        fn,
        deps=deps,
        kind=kind,
        retries=retries,
        retry_delay=retry_delay,
        timeout=timeout,
        priority=priority,
        resources=resources,
        skip_none=skip_none,
        after=after,
        over=over,
        key=key,
    )


def fast_task(
    name: Any,
    fn: Any,
    deps: Any,
    kind: Any,
    retries: Any,
    retry_delay: Any,
    timeout: Any,
    priority: Any,
    resources: Any,
    skip_none: bool,
) -> Task | None:
    """:func:`make_task` without ``after``/``over``/``key``, for the usual arguments
    only: the Task the full path would build, or None when the full path must look
    (an unusual argument, or one it would refuse). It never raises for bad input.
    ``Graph.add`` calls it first, positionally.

    Each test admits only values the full path accepts unchanged: a plain function
    with a plan (see :class:`_Plan`), an ASCII name, a kind given as None, a Kind or
    its value, ints and finite floats of the usual signs, no resources, and deps None,
    a list or tuple of names, or a dict of parameter names to names.
    """
    if type(fn) is not types.FunctionType or type(name) is not str:
        return None
    if not name or not name.isascii() or fn.__dict__ or fn.__kwdefaults__ is not None:
        return None
    code = fn.__code__
    plan = _PLANS.get(id(code))
    if plan is None or plan.code is not code or plan.n_defaults != len(fn.__defaults__ or ()):
        plan = _plan_of(fn)
        if plan is None:
            return None
    if kind is None:
        the_kind = Kind.IO
    elif type(kind) is Kind:
        the_kind = kind
    else:
        the_kind = _KIND_OF.get(kind) if type(kind) is str else None  # type: ignore[assignment]
        if the_kind is None:
            return None
    if type(retries) is not int or retries < 0 or type(priority) is not int:
        return None
    if type(retry_delay) is not float or not 0.0 <= retry_delay < math.inf:
        if type(retry_delay) is not int or retry_delay < 0:
            return None
        retry_delay = float(retry_delay)
    if timeout is not None:
        number: type[Any] = type(timeout)
        if (number is not float and number is not int) or not timeout >= 0:
            return None
        timeout = float(timeout)
    if type(resources) is not tuple or resources:
        return None
    given: type[Any] = type(deps)
    if given is list or given is tuple:
        args: tuple[str, ...] = tuple(deps)
        for a in args:
            if type(a) is not str:
                return None
        if name in args or (len(args) > 1 and len(set(args)) != len(args)):
            return None
        bind_key: tuple[Any, bool] = (len(args), skip_none)
        if bind_key not in plan.binds and not plan.check(bind_key, name, len(args), ()):
            return None
        return _new_task(
            name, fn, the_kind, args, (), skip_none, retries, retry_delay, timeout,
            priority, (), plan.is_async, args, None, None, None, (), None,
        )  # fmt: skip
    if deps is None:
        kwargs = plan.auto
        if kwargs is None or name in plan.auto_names:
            return None
        return _new_task(
            name, fn, the_kind, (), kwargs, skip_none, retries, retry_delay, timeout,
            priority, (), plan.is_async, plan.auto_names, None, None, None, (), None,
        )  # fmt: skip
    if given is dict:
        kwargs = tuple(deps.items())
        for p, d in kwargs:
            if type(p) is not str or type(d) is not str or d == name:
                return None
            if not p.isidentifier() or keyword.iskeyword(p):
                return None
        params = tuple(p for p, _ in kwargs)
        bind_key = (params, skip_none)
        if bind_key not in plan.binds and not plan.check(bind_key, name, 0, params):
            return None
        return _new_task(
            name, fn, the_kind, (), kwargs, skip_none, retries, retry_delay, timeout,
            priority, (), plan.is_async, tuple(dict.fromkeys(d for _, d in kwargs)),
            None, None, None, (), None,
        )  # fmt: skip
    return None


def _make_task_checked(
    name: str,
    fn: Callable[..., Any],
    *,
    deps: Iterable[str] | Mapping[str, str] | None = None,
    kind: Kind | str | None = None,
    retries: int = 0,
    retry_delay: float = 0.1,
    timeout: float | None = None,
    priority: int = 0,
    resources: Iterable[str] = (),
    skip_none: bool = False,
    after: Iterable[str] | None = None,
    over: str | Task | None = None,
    key: Callable[[Any], Any] | None = None,
) -> Task:
    """:func:`make_task`'s full path: every check, in order (see there)."""
    if not isinstance(name, str) or not name:
        raise InvalidTaskError(str(name), "a task name must be a non-empty string")
    _check_encodable(name)
    if not callable(fn):
        raise InvalidTaskError(name, f"the function must be callable, not {type(fn).__name__}")
    _check_not_a_generator(name, fn)
    is_async = is_async_callable(fn)
    if kind is None:
        the_kind = Kind.IO
    else:
        try:
            the_kind = Kind(kind.value if isinstance(kind, Kind) else kind)
        except ValueError:
            raise InvalidTaskError(
                name, f"unknown kind {kind!r}; use one of {[k.value for k in Kind]}"
            ) from None
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidTaskError(name, f"retries must be an int >= 0, not {retries!r}")
    for opt, value in (("retry_delay", retry_delay), ("timeout", timeout)):
        if value is None and opt == "timeout":
            continue
        # ``not value >= 0`` also refuses NaN; a retry delay must be finite too, or the
        # retry would never come (a timeout of inf just means none).
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not value >= 0
            or (opt == "retry_delay" and math.isinf(value))
        ):
            what = "a finite number" if opt == "retry_delay" else "a number"
            raise InvalidTaskError(name, f"{opt} must be {what} >= 0 (seconds), not {value!r}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidTaskError(name, f"priority must be an int, not {priority!r}")
    res = _as_names(name, "resources", resources, "limit names")

    sig = _signature(fn)
    args: tuple[str, ...] = ()
    kwargs: tuple[tuple[str, str], ...] = ()
    if deps is None:
        if sig is not None:
            kwargs = _params_as_deps(name, sig)
    elif isinstance(deps, Mapping):
        kwargs = tuple((_param_name(name, p), task_name(t)) for p, t in deps.items())
        _as_names(name, "deps", [t for _, t in kwargs])
    else:
        args = _as_names(name, "deps", deps)
    if len(set(res)) != len(res):
        raise InvalidTaskError(name, f"resources lists {sorted(set(res))} with repeats")
    if len(set(args)) != len(args):
        dup = sorted({a for a in args if args.count(a) > 1})
        raise InvalidTaskError(name, f"deps lists {dup} more than once")
    order_only: tuple[str, ...] = ()
    if after is not None:
        order_only = _as_names(name, "after", after)
        if len(set(order_only)) != len(order_only):
            dup = sorted({a for a in order_only if order_only.count(a) > 1})
            raise InvalidTaskError(name, f"after lists {dup} more than once")
        # A name that is also a data dependency is waited for already: it stays one.
        bound = {*args, *(t for _, t in kwargs)}
        order_only = tuple(a for a in order_only if a not in bound)
    if name in args or name in (t for _, t in kwargs) or name in order_only:
        from ._exceptions import CycleError

        raise CycleError([name, name])
    if sig is not None and deps is not None:
        _check_binding(name, sig, len(args), (p for p, _ in kwargs), skip_none)
    all_deps = tuple(dict.fromkeys((*args, *(t for _, t in kwargs))))
    over_name: str | None = task_name(over)
    _check_over(name, over_name, key, all_deps)
    return Task(
        name=name,
        fn=fn,
        kind=the_kind,
        args=args,
        kwargs=kwargs,
        skip_none=skip_none,
        retries=retries,
        retry_delay=float(retry_delay),
        timeout=None if timeout is None else float(timeout),
        priority=priority,
        resources=res,
        is_async=is_async,
        deps=tuple(dict.fromkeys((*all_deps, *order_only))),
        over=over_name,
        key=key,
        after=order_only,
    )


def _check_over(name: str, over: Any, key: Any, deps: tuple[str, ...]) -> None:
    """``over=`` names one of the task's dependencies; ``key=`` is a function, and only
    with ``over=``."""
    if over is None:
        if key is not None:
            raise InvalidTaskError(
                name,
                "key= names the elements of a mapped task, but the task has no over=; "
                "pass over='<dependency>' to map it over that dependency's result",
            )
        return
    if not isinstance(over, str) or not over:
        raise InvalidTaskError(
            name,
            f"over must be the name of one of its dependencies (a str), not "
            f"{type(over).__name__} {over!r}",
        )
    if over not in deps:
        raise InvalidTaskError(
            name,
            f"over={over!r} is not one of its dependencies ({list(deps)}); over= names the "
            "dependency whose result is mapped, element by element: add it to the "
            "function's parameters or to deps",
        )
    if key is not None and not callable(key):
        raise InvalidTaskError(
            name,
            f"key must be a function of one element returning its key (str or int), not "
            f"{type(key).__name__} {key!r}",
        )
    if "[" in name or "]" in name:
        raise InvalidTaskError(
            name,
            "a mapped task's name may not contain '[' or ']': its elements are named "
            f"{name}[<key>]",
        )


# -- the fast path's memory: one plan per code object ------------------------------------

_KIND_OF = {k.value: k for k in Kind}
_CO_GENERATORS = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
#: id(code) -> its plan. Bounded: it holds code objects (never functions, their globals
#: or closures), and is emptied when full; a miss only costs one signature read.
_PLANS: dict[int, _Plan] = {}
_PLANS_MAX = 4096


class _Plan:
    """What :func:`make_task` reads from a plain function's signature, once.

    It is the same for every function made from one code object (a ``def`` in a loop,
    a closure, a lambda per task) that has as many positional defaults and no
    keyword-only ones: the parameters, their kinds and which have defaults all come
    from the code and those counts, and binding depends on nothing else (the default
    values themselves and the annotations only show in error messages, which the full
    path writes). ``binds`` remembers the bindings ``Signature.bind`` accepted:
    ``(n_positional, skip_none)`` for a list of deps, ``(keywords, skip_none)`` for a
    dict.

    State it keeps
        ``code``        the code object (its id is the key: kept alive, so never reused);
        ``n_defaults``  how many positional parameters have defaults;
        ``is_async``    a coroutine function (``async def``);
        ``sig``         the signature (read once, with ``inspect.signature``);
        ``auto``        the ``(parameter, task)`` pairs of ``deps=None``, or None when
                        the full path refuses them (a positional-only parameter);
        ``auto_names``  those tasks, in order;
        ``binds``       the binding keys checked and accepted.
    """

    __slots__ = ("auto", "auto_names", "binds", "code", "is_async", "n_defaults", "sig")

    def __init__(self, fn: types.FunctionType, sig: inspect.Signature) -> None:
        self.code = fn.__code__
        self.n_defaults = len(fn.__defaults__ or ())
        self.is_async = bool(self.code.co_flags & inspect.CO_COROUTINE)
        self.sig = sig
        try:
            self.auto: tuple[tuple[str, str], ...] | None = _params_as_deps("", sig)
        except SignatureError:
            self.auto = None
        self.auto_names = tuple(t for _, t in self.auto or ())
        self.binds: set[tuple[Any, bool]] = set()

    def check(
        self, bind_key: tuple[Any, bool], name: str, n_args: int, kw: tuple[str, ...]
    ) -> bool:
        """Whether the signature accepts ``n_args`` positional results and the keywords
        ``kw``; remembered as ``bind_key`` if so."""
        try:
            _check_binding(name, self.sig, n_args, kw, bind_key[1])
        except SignatureError:
            return False
        self.binds.add(bind_key)
        return True


def _plan_of(fn: types.FunctionType) -> _Plan | None:
    """The plan of a plain function (made and kept), or None when the full path must
    look at it: a generator function (refused there), or no signature."""
    code = fn.__code__
    if code.co_flags & _CO_GENERATORS:
        return None
    sig = _signature(fn)
    if sig is None:
        return None
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    plan = _PLANS[id(code)] = _Plan(fn, sig)
    return plan


def _constructor(cls: type) -> Callable[..., Any]:
    """A function building a ``cls`` (a frozen dataclass with slots) from all its
    fields' values, positionally, in field order, for the many tasks a graph or a family
    builds at once (everything else calls the class).

    It fills a *body*, an object of a mutable twin of ``cls`` (the same base and slots,
    plain attribute setting), with plain stores, which the interpreter specializes to a
    slot write each, and then makes it a ``cls`` (``__class__`` assignment, allowed
    between classes of the same layout). The dataclass's ``__init__`` goes through
    ``object.__setattr__`` by name for every field (frozen), three to four times
    slower. The result is an ordinary ``cls``: the same type, fields, equality, hash,
    pickling and immutability. Checked once here; if this Python refused it, the
    fields would be stored through the slots' descriptors instead.
    """
    from dataclasses import fields

    names = [f.name for f in fields(cls)]
    base = cls.__mro__[1]
    body = type(
        f"_{cls.__name__}Body",
        (base,),
        {
            "__slots__": cls.__dict__["__slots__"],
            # both, so the type's one setattr slot is the generic one (a dataclass
            # base's frozen __delattr__ would make every store a Python call)
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
        },
    )
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_body": body}
    lines = ["def build(" + ", ".join(names) + "):", "    self = _new(_body)"]
    lines += [f"    self.{n} = {n}" for n in names]
    lines += ["    self.__class__ = _cls", "    return self"]
    exec("\n".join(lines), env)
    build: Callable[..., Any] = env["build"]
    try:
        probe = build(*names)
        ok = type(probe) is cls and all(getattr(probe, n) == n for n in names)
    except TypeError:
        ok = False
    if not ok:  # pragma: no cover - CPython allows it since 3.0
        env2: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
        lines = ["def build(" + ", ".join(names) + "):", "    self = _new(_cls)"]
        for k, n in enumerate(names):
            env2[f"_set{k}"] = getattr(cls, n).__set__
            lines.append(f"    _set{k}(self, {n})")
        lines.append("    return self")
        exec("\n".join(lines), env2)
        build = env2["build"]
    build.__qualname__ = build.__name__ = f"new_{cls.__name__.lower()}"
    return build


_new_task: Callable[..., Task] = _constructor(Task)
#: ``Element(*values)``, faster: the fields in order (see :func:`_constructor`).
new_element: Callable[..., Element] = _constructor(Element)

#: The same fast constructor for other frozen, slotted dataclasses built in bulk (a
#: store's records, ``load``'s TaskRecords: 10k of each on every resume).
constructor = _constructor
__all__ += ["constructor"]
