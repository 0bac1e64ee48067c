"""The subcommands of the ``asyncgraph`` command: status, plan, run and history.

``__main__`` builds the parser and hands the parsed arguments to one handler here. Each
handler returns the exit status: 0 when all is well, 1 when a run left tasks that are not
done, 2 for a problem with what the command was given (a bad path, a store that is not a
store, a graph that cannot be imported, unknown task names). Errors of the last kind are
found before anything is written, so the store is left as it was. Ctrl-C is 130 and
SIGTERM 143, handled in ``__main__``.

The tables are plain text built here (no pandas): ``status`` and ``history`` read the
store through :class:`~asyncgraph.SQLiteStore`, which never unpickles anything, so they
work on a machine that cannot import the graph's code.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._exceptions import GraphError, StoreError, StoreMismatchError, UnknownTaskError
from ._fan import family_of, positions
from ._state import State
from ._store.resume import GONE

if TYPE_CHECKING:
    from ._api import Graph
    from ._store import RunInfo, SQLiteStore, StoredTask

__all__ = ["UsageError", "guarded", "history", "plan", "run", "status"]

ERROR_WIDTH = 60  # characters of "Type: first line of message" shown in tables


class UsageError(Exception):
    """What the command was given cannot be used; the message says what and why (exit 2)."""


Handler = Callable[[argparse.Namespace], int]


def guarded(handler: Handler) -> Handler:
    """``handler`` with bad input reported on stderr as ``asyncgraph CMD: error: ...``."""

    def call(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except StoreMismatchError as exc:
            _error(args, _mismatch(exc, args))
        except UnknownTaskError as exc:
            _error(args, str(exc))
        except (UsageError, StoreError) as exc:
            _error(args, str(exc))
        except GraphError as exc:
            _error(args, f"the graph {getattr(args, 'target', '')!r} is invalid: {exc}")
        return 2

    return call


def _error(args: argparse.Namespace, message: str) -> None:
    print(f"asyncgraph {args.command}: error: {message}", file=sys.stderr)


def _mismatch(exc: StoreMismatchError, args: argparse.Namespace) -> str:
    return "\n".join(
        [
            f"store {args.store!r} was written by a graph with other task names "
            f"than {args.target!r}",
            f"  only in the store: {_names(exc.only_in_store)}",
            f"  only in the graph: {_names(exc.only_in_graph)}",
            "  if tasks were renamed or removed, pass --force: tasks only in the store are "
            "left as they are, tasks only in the graph run as new",
        ]
    )


def _names(names: Iterable[str], limit: int = 20) -> str:
    listed = list(names)
    if not listed:
        return "none"
    shown = ", ".join(repr(n) for n in listed[:limit])
    return shown + (f" and {len(listed) - limit} more" if len(listed) > limit else "")


# -- MODULE:GRAPH ------------------------------------------------------------------------


def load_target(spec: str) -> Graph:
    """The Graph named by ``MODULE:GRAPH``; raise UsageError saying what is wrong.

    MODULE is a dotted module name or a path to a ``.py`` file; GRAPH is an attribute that
    is a Graph or a function taking no arguments that returns one. The current directory
    goes first on ``sys.path``, as ``python -m`` does; a file's directory goes there too,
    so worker processes (which get this ``sys.path``) import its CPU functions by name.
    """
    from ._api import Graph

    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise UsageError(
            f"{spec!r} is not MODULE:GRAPH; write e.g. 'pipeline:graph' (a module on the "
            "path) or 'jobs/nightly.py:build_graph' (a file)"
        )
    _path_first(os.getcwd())
    module = _import(module_part)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, Graph))
        hint = f"; the graphs in it: {', '.join(found)}" if found else ""
        raise UsageError(f"module {module_part!r} has no attribute {attr!r}{hint}") from None
    if isinstance(obj, Graph):
        return obj
    if not callable(obj):
        raise UsageError(
            f"{spec!r} is a {type(obj).__name__}, not an asyncgraph.Graph or a function "
            "returning one"
        )
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise UsageError(
            f"{spec!r} is a callable that needs arguments; give a Graph, or a function "
            "that builds one without arguments"
        ) from None
    except ValueError:
        pass  # no signature to check (a builtin): just call it
    try:
        built = obj()
    except Exception as exc:
        raise UsageError(
            f"calling {spec!r} to build the graph raised {type(exc).__name__}: {exc}\n"
            + _user_traceback(exc)
        ) from exc
    if not isinstance(built, Graph):
        raise UsageError(f"{spec!r} returned a {type(built).__name__}, not an asyncgraph.Graph")
    return built


def _path_first(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _import(module_part: str) -> Any:
    is_file = module_part.endswith(".py") or "/" in module_part or os.sep in module_part
    if not is_file:
        name = module_part
        try:
            return _import_user_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                raise UsageError(
                    f"cannot import module {name!r} ({exc}); run from the directory that "
                    "holds it, set PYTHONPATH, or give a path to the .py file"
                ) from None
            raise UsageError(_import_failed(name, exc)) from exc
    path = Path(module_part)
    if not path.is_file():
        raise UsageError(f"module file {module_part!r} does not exist")
    if path.suffix != ".py" or not path.stem.isidentifier():
        raise UsageError(
            f"module file {module_part!r} must be named like a Python module "
            "(letters, digits and _, ending in .py) so worker processes can import it"
        )
    _path_first(str(path.resolve().parent))
    try:
        module = _import_user_module(path.stem)
    except ModuleNotFoundError as exc:  # the file imports something that is missing
        raise UsageError(_import_failed(path.stem, exc)) from exc
    found = Path(getattr(module, "__file__", None) or "")
    if found.resolve() != path.resolve():
        raise UsageError(
            f"module file {module_part!r}: the name {path.stem!r} is already taken by "
            f"{found or 'a built-in module'}; rename the file"
        )
    return module


def _import_user_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise
    except Exception as exc:
        raise UsageError(_import_failed(name, exc)) from exc


def _import_failed(name: str, exc: BaseException) -> str:
    return f"importing module {name!r} raised {type(exc).__name__}: {exc}\n" + _user_traceback(exc)


def _user_traceback(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc)).rstrip()


# -- the store ---------------------------------------------------------------------------


def open_existing(path: str) -> SQLiteStore:
    """The store at ``path`` for reading; UsageError if there is no such file."""
    from ._store import SQLiteStore

    if not os.path.lexists(path):
        raise UsageError(
            f"store {path!r} does not exist (status and history read the store a run "
            "wrote; check the path)"
        )
    return SQLiteStore(path)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(started: float | None, finished: float | None) -> float | None:
    if started is None or finished is None:
        return None
    return max(finished - started, 0.0)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _error_line(error_type: str | None, message: str | None, width: int = ERROR_WIDTH) -> str:
    if error_type is None and not message:
        return ""
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    text = f"{error_type or 'Error'}: {first}" if first else (error_type or "Error")
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[str] = ()) -> str:
    """Rows as aligned text; columns named in ``right`` are right-aligned (numbers)."""
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    align = {columns.index(c) for c in right}
    lines = []
    for row in cells:
        parts = [
            v.rjust(widths[i]) if i in align else v.ljust(widths[i]) for i, v in enumerate(row)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _run_state(info: RunInfo) -> str:
    """How a run ended, saying what a run still marked ``running`` probably is."""
    if info.status != "running":
        return info.status
    # Runs are marked crashed only when the next run starts, so look at the process.
    if info.host == socket.gethostname():
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return f"stopped (its process {info.pid} is gone)"
        except PermissionError:
            pass  # alive, another user's
        return f"running (process {info.pid})"
    return f"running, or stopped (process {info.pid} on {info.host})"


def _run_json(info: RunInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "status": info.status,
        "started": _iso(info.started),
        "finished": _iso(info.finished),
        "duration_s": _seconds(info.started, info.finished),
        "graph": info.graph,
        "pid": info.pid,
        "host": info.host,
        "tasks": info.tasks,
        "reused": info.reused,
        "done": info.done,
        "failed": info.failed,
        "skipped": info.skipped,
        "cancelled": info.cancelled,
    }


# -- status --------------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    """Every task's latest record in the store, the last run's marked."""
    store = open_existing(args.store)
    try:
        tasks = store.tasks()
        runs = store.runs()
        task_order = getattr(store, "task_order", None)  # SQLiteStore's: not the protocol's
        order = task_order() if task_order is not None else []
    finally:
        store.close()
    last = runs[-1] if runs else None
    tasks = _in_graph_order(tasks, order)
    shown = [t for t in tasks.values() if not args.failed or t.status is State.FAILED]
    if args.json:
        print(json.dumps(_status_json(args.store, last, shown), indent=2))
        return 0
    if last is None:
        print(f"store {args.store}: no runs recorded yet")
        return 0
    graph = "" if last.graph is None else f" of graph {last.graph!r}"
    print(
        f"store {args.store}: last run {last.id}{graph} {_run_state(last)}, started "
        f"{_when(last.started)}, took {_duration(_seconds(last.started, last.finished))}"
    )
    print()
    rows = [
        (
            t.name,
            "gone" if t.error_type == GONE else t.status.value,
            t.attempts,
            _duration(_seconds(t.started, t.finished)),
            f"{t.run_id}*" if t.run_id == last.id else t.run_id,
            _error_line(t.error_type, t.error_message),
        )
        for t in shown
    ]
    if rows:
        columns = ("name", "status", "attempts", "duration", "run", "error")
        print(_table(columns, rows, right=("attempts", "duration", "run")))
        print()
        print(f"* written by the last run (run {last.id}); other tasks were reused or not run")
        if any(t.error_type == GONE for t in shown):
            print("gone: an element its mapped task's parent no longer returned")
    else:
        print("no failed tasks" if args.failed else "no tasks recorded")
    if any(t.status is State.RUNNING for t in shown):
        print(
            "running: the run stopped while these tasks ran (or is still running); "
            "they run again next time"
        )
    if args.failed:
        for t in shown:
            print()
            print(f"--- {t.name} (failed in run {t.run_id}) ---")
            if t.traceback:
                print(user_frames(t.traceback).rstrip())
            else:
                print(_error_line(t.error_type, t.error_message, 10**6))
    return 0


def _in_graph_order(tasks: dict[str, StoredTask], order: Sequence[str]) -> dict[str, StoredTask]:
    """``tasks`` in the order of the last run's graph (topological, then definition), as
    the store recorded it; tasks it did not have (an earlier graph's) after, as stored.

    A family's elements follow the family, by position when their keys are positions
    (``score[2]`` before ``score[10]``), else in the order above: the store writes an
    element's row when it ends, so its own order is the order they finished in.
    """
    ordered = [n for n in order if n in tasks]
    seen = set(ordered)
    ordered += [n for n in tasks if n not in seen]
    elements: dict[str, list[str]] = {}
    plain: list[str] = []
    for name in ordered:
        parsed = family_of(name)
        if parsed is not None and parsed[0] in tasks:
            elements.setdefault(parsed[0], []).append(name)
        else:
            plain.append(name)
    out: dict[str, StoredTask] = {}
    for name in plain:
        out[name] = tasks[name]
        members = elements.pop(name, [])
        at = positions([m[len(name) + 1 : -1] for m in members])
        if at is not None:
            members = [members[i] for i in sorted(range(len(members)), key=at.__getitem__)]
        out.update((m, tasks[m]) for m in members)
    for members in elements.values():  # a family without its own row: as they came
        out.update((m, tasks[m]) for m in members)
    return out


#: A traceback's frame in a file of the machinery a task runs under: asyncgraph's own
#: modules, anyio, asyncio, concurrent.futures, threading.
_MACHINERY = re.compile(
    r'^  File "[^"]*(?:[/\\]asyncgraph[/\\]_[^"]*|[/\\](?:anyio|asyncio)[/\\][^"]*'
    r'|[/\\]concurrent[/\\]futures[/\\][^"]*|[/\\]threading\.py)", line \d+'
)


def user_frames(text: str) -> str:
    """A formatted traceback from the user's first frame on: the frames of the machinery
    above it (see ``_MACHINERY``) are left out of each traceback of a chain, with a line
    saying how many. A traceback with no user frame is kept whole; the store keeps the
    full text (``--json`` prints it)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if not line.startswith("Traceback (most recent call last):"):
            continue
        frames: list[list[str]] = []  # this traceback's frames, each with its lines
        while i < len(lines) and lines[i].startswith("  "):
            if lines[i].startswith("  File ") or not frames:
                frames.append([])
            frames[-1].append(lines[i])
            i += 1
        skip = 0
        while skip < len(frames) - 1 and _MACHINERY.match(frames[skip][0]):
            skip += 1
        if skip == len(frames) - 1 and _MACHINERY.match(frames[skip][0]):
            skip = 0  # nothing but machinery: the error is asyncgraph's own, keep it all
        if skip:
            out.append(f"  [{skip} frame(s) of asyncgraph and its event loop left out]")
        for frame in frames[skip:]:
            out.extend(frame)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _status_json(path: str, last: RunInfo | None, tasks: Iterable[StoredTask]) -> dict[str, Any]:
    return {
        "store": path,
        "last_run": None if last is None else _run_json(last),
        "tasks": [
            {
                "name": t.name,
                "status": t.status.value,
                "attempts": t.attempts,
                "started": _iso(t.started),
                "finished": _iso(t.finished),
                "duration_s": _seconds(t.started, t.finished),
                "run": t.run_id,
                "in_last_run": last is not None and t.run_id == last.id,
                "error_type": t.error_type,
                "error_message": t.error_message,
                "traceback": t.traceback,
            }
            for t in tasks
        ],
    }


# -- history -------------------------------------------------------------------------------


def history(args: argparse.Namespace) -> int:
    """Every run in the store, oldest first."""
    store = open_existing(args.store)
    try:
        runs = store.runs()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"store": args.store, "runs": [_run_json(r) for r in runs]}, indent=2))
        return 0
    if not runs:
        print(f"store {args.store}: no runs recorded yet")
        return 0
    named = any(r.graph is not None for r in runs)  # a graph column only if one has a name
    columns = (
        *("run", *(("graph",) if named else ()), "started", "duration", "status"),
        *("tasks", "reused", "done", "failed", "skipped", "cancelled"),
    )
    rows = [
        (
            r.id,
            *((r.graph,) if named else ()),
            _when(r.started),
            _duration(_seconds(r.started, r.finished)),
            _run_state(r) if r is runs[-1] else r.status,
            r.tasks,
            r.reused,
            r.done,
            r.failed,
            r.skipped,
            r.cancelled,
        )
        for r in runs
    ]
    numbers = ("run", "duration", "tasks", "reused", "done", "failed", "skipped", "cancelled")
    print(_table(columns, rows, right=numbers))
    return 0


# -- plan and run: a graph and its store -------------------------------------------------


def _prepared(args: argparse.Namespace, store: SQLiteStore) -> Graph:
    """The graph loaded from the store with the command's rewrites applied, in order."""
    import asyncgraph as ag

    graph = load_target(args.target)
    marked, values = _mark_values(args.mark_done, graph)
    unknown = {
        option: [n for n in names if n not in graph.tasks and not _element_name(n, graph)]
        for option, names in (("--reset", args.reset), ("--mark-done", marked))
    }
    if any(unknown.values()):
        detail = "; ".join(f"{o} {_names(u)}" for o, u in unknown.items() if u)
        raise UsageError(
            f"unknown task name(s): {detail}; the tasks of {args.target!r} are "
            f"{_names(graph.tasks, limit=10)}"
        )
    loaded = ag.load(graph, store, force=args.force)
    if args.reset_failed:
        loaded = ag.reset_failed(loaded)
    if args.reset:
        loaded = ag.reset(loaded, args.reset)
    if marked:
        # A task marked with no value keeps the result it has; one that has none is
        # marked without a result, and a task taking it fails with MissingResultError
        # (which says how to give one: NAME=JSON), rather than silently getting None.
        loaded = ag.mark_done(loaded, marked, results=values)
    return loaded


def _element_name(name: str, graph: Graph) -> bool:
    """``score[k]`` with ``score`` a mapped task: an element (the store says which)."""
    i = name.find("[")
    template = graph.tasks.get(name[:i]) if i > 0 and name.endswith("]") else None
    return template is not None and template.over is not None


def _mark_values(items: Sequence[str], graph: Graph) -> tuple[list[str], dict[str, Any]]:
    """``--mark-done NAME`` or ``NAME=JSON``: the names, and the values given.

    A task's name may itself hold ``=``: an item that is a task's name is that task.
    """
    names: list[str] = []
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if item in graph.tasks or not sep:
            names.append(item)
            continue
        try:
            values[name] = json.loads(text)
        except ValueError as exc:
            raise UsageError(
                f"--mark-done {item!r}: the value after '=' must be JSON ({exc}); for "
                f"example {name}=null, {name}=42 or {name}='\"text\"'"
            ) from None
        names.append(name)
    return names, values


def _store_for_graph(path: str) -> SQLiteStore:
    from ._store import SQLiteStore

    return SQLiteStore(path)  # created by the run's first write if it does not exist


def plan(args: argparse.Namespace) -> int:
    """What ``asyncgraph run`` with the same options would do, and why."""
    import pandas as pd

    import asyncgraph as ag

    store = _store_for_graph(args.store)
    try:
        graph = _prepared(args, store)
        frame = ag.plan(graph, store)
    finally:
        store.close()
    last_runs = [None if pd.isna(v) else int(v) for v in frame["last_run"].tolist()]
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "kind": kind,
            "action": action,
            "reason": _cli_reason(action, reason, last_status),
            "last_status": last_status,
            "last_run": last_run,
        }
        for name, kind, action, reason, last_status, last_run in zip(
            frame["name"].tolist(),
            frame["kind"].tolist(),
            frame["action"].tolist(),
            frame["reason"].tolist(),
            [v if isinstance(v, str) else None for v in frame["last_status"].tolist()],
            last_runs,
            strict=True,
        )
    ]
    if args.json:
        out = {"store": args.store, "graph": args.target, "tasks": rows}
        print(json.dumps(out, indent=2))
        return 0
    columns = ("name", "kind", "action", "reason", "last_status", "last_run")
    print(_table(columns, ([r[c] for c in columns] for r in rows), right=("last_run",)))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["action"]] = counts.get(r["action"], 0) + 1
    print()
    print(", ".join(f"{counts[a]} to {a}" for a in ("run", "reuse", "keep") if a in counts))
    return 0


def _cli_reason(action: str, reason: str, last_status: str | None) -> str:
    if action == "keep":
        return f"{last_status} last time; not rerun without --reset-failed"
    return reason


def run(args: argparse.Namespace) -> int:
    """Load, rewrite, run on the store, print a summary; 0 if every task is done."""
    import asyncgraph as ag

    progress = bool(args.progress) and _progress_option()
    backend = _backend_option(
        getattr(args, "backend", None),
        args.cpu_workers,
        eager=getattr(args, "dask_eager", False),
        capacity=getattr(args, "dask_capacity", None),
    )
    store = _store_for_graph(args.store)
    try:
        graph = _prepared(args, store)
        before = graph.status
        with backend as chosen:
            result = ag.run_sync(
                graph,
                store=store,
                cpu_workers=args.cpu_workers,
                max_io=args.max_io,
                progress=progress,
                backend=chosen,
            )
        runs = store.runs()
    finally:
        store.close()
    print(_summary(args, before, result, runs[-1] if runs else None))
    done = all(s is State.DONE for s in result.status.values())
    return 0 if done else 1


def _backend_option(
    spec: str | None, workers: int | None, *, eager: bool = False, capacity: int | None = None
) -> Any:
    """``--backend``: a context manager giving the run's ``backend=`` (None: the default)
    and closing what it started. ``dask`` needs ``asyncgraph.DaskBackend`` and
    ``distributed``, found before anything is written; ``--dask-eager`` and
    ``--dask-capacity`` are its options, refused with any other backend."""
    import contextlib

    import asyncgraph as ag

    name, _, address = (spec or "").partition("=")
    if name != "dask":
        given = [
            flag
            for flag, used in (("--dask-eager", eager), ("--dask-capacity", capacity is not None))
            if used
        ]
        if given:
            on = f"--backend {spec}" if spec else "the default backend (no --backend)"
            raise UsageError(
                f"{' and '.join(given)} applies to --backend dask only, not to {on}; "
                "add --backend dask (or dask=ADDRESS), or drop the option"
            )
    if spec is None:
        return contextlib.nullcontext(None)
    if name == "inline":
        return contextlib.nullcontext(ag.InlineBackend())
    if name == "processes":
        return ag.ProcessBackend(workers=workers)
    import importlib.util

    dask_backend = getattr(ag, "DaskBackend", None)
    if dask_backend is None or importlib.util.find_spec("distributed") is None:
        raise UsageError(
            "--backend dask needs Dask distributed, which is not installed; "
            "install it with: pip install 'asyncgraph[dask]'"
        )
    options = {"eager": eager, "capacity": capacity}
    made = dask_backend(address, **options) if address else dask_backend(**options)
    return contextlib.nullcontext(made)


def _progress_option() -> bool:
    """``--progress``: the bar of ``run(progress=True)``, on stderr when it is a terminal."""
    import importlib.util

    if importlib.util.find_spec("tqdm") is None:
        raise UsageError(
            "--progress needs tqdm, which is not installed; "
            "install it with: pip install 'asyncgraph[progress]'"
        )
    return True


def _summary(
    args: argparse.Namespace, before: dict[str, State], result: Graph, info: RunInfo | None
) -> str:
    counts: dict[str, int] = {}
    records = result.records
    for name, state in result.status.items():
        was = before.get(name)  # None: an element its family's expansion made in the run
        key = state.value
        if state is State.DONE and (was is State.DONE or _reused_in(records[name], info)):
            key = "reused"
        counts[key] = counts.get(key, 0) + 1
    order = ("done", "reused", "failed", "skipped", "cancelled", "pending", "running")
    lines = [
        f"run {info.id if info else '?'} on {args.store}: {len(result)} tasks"
        + (f", {info.status}" if info else ""),
        "",
        _table(("status", "tasks"), [(k, counts[k]) for k in order if k in counts], ("tasks",)),
    ]
    from shlex import quote

    failed = [n for n, s in result.status.items() if s in (State.FAILED, State.CANCELLED)]
    if failed:
        rows = []
        for n in failed:
            error = records[n].error
            kept = before.get(n) is records[n].status and records[n].status is not State.PENDING
            line = "" if error is None else _exception_line(error)
            rows.append((n, records[n].status.value + (" (kept)" if kept else ""), line))
        lines += ["", _table(("name", "status", "error"), rows)]
    if any(s is not State.DONE for s in result.status.values()):
        lines += [
            "",
            f"tracebacks: asyncgraph status {quote(args.store)} --failed",
            f"after fixing the cause: asyncgraph run {quote(args.target)} --store "
            f"{quote(args.store)} --reset-failed",
        ]
    return "\n".join(lines)


def _reused_in(record: Any, info: RunInfo | None) -> bool:
    """A done task the run took from the store without running it: it finished before
    the run began. An element a family's expansion reused by content (its parent ran
    again) is pending or absent in the graph before the run, so only its record says."""
    finished = record.finished
    return info is not None and finished is not None and finished < info.started


def _exception_line(error: BaseException) -> str:
    type_name = getattr(error, "type_name", None) or type(error).__name__
    message = getattr(error, "message", None)
    return _error_line(type_name, message if isinstance(message, str) else str(error))
