"""The house's layers: every module imports only modules of lower layers.

Each of asyncgraph's modules has a layer (0: imports nothing of ours). A module may
import a module of a lower layer, or one of its own layer that ``SAME`` names for it;
nothing above. Every import counts: top-level, inside functions (lazy) and under
``TYPE_CHECKING``; the one back-edge kept on purpose is type-only and listed in
``BACK_EDGES``. Since no module imports upward, there is no run-time import cycle.

Third-party and heavy standard modules have rooms too: the event loop only from the
run's layer up, ``sqlite3`` only in the SQLite store, ``pandas`` only lazily (inside a
function) where a table is made, ``uvloop`` only where ``run_sync`` makes its loop.

``docs/design.md`` shows the same table between ``<!-- layers -->`` markers; the test
fails when they differ. ``python tests/test_layers.py`` prints the table to paste.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "asyncgraph"

#: module -> (layer, what it owns). The order is the docs table's.
LAYERS: dict[str, tuple[int, str]] = {
    "_exceptions": (0, "the error tree"),
    "_state": (0, "`State`, `TaskRecord`, `ResultRef`, `StoredResult`, `NO_RESULT`"),
    "_events": (0, "`Event`, `EventKind`, `Emit`"),
    "_shield": (0, "`wait_to_the_end`, `in_thread_to_the_end`: the one shield"),
    "_nogc": (0, "`paused`: the cycle collector off while a load builds its records"),
    "_stream": (0, "the stream package (its `__init__` imports none of its modules)"),
    "_stream.spec": (0, "`StreamSpec`: what makes a task a stream stage"),
    "_stream.frames": (0, "splitting and merging batches; a stage's call on a list of pieces"),
    "_stream.result": (0, "`Batch`, `StageSummary`, `StreamResult`, `StreamFailures`"),
    "_task": (1, "`Task`, `Kind`, `make_task`, binding a task's arguments"),
    "_dag": (1, "`Dag`: tasks, children, order, cycles, reach, name checks, longest paths"),
    "_fan": (1, "fan-out: a mapped task's items, elements, collected result, aggregate"),
    "_store.protocol": (1, "the `Store` protocol, `StoredTask`, `TaskRow`, `Batch`, `RunInfo`"),
    "_store.serialize": (1, "results to bytes and back (pickle, Parquet)"),
    "_store.files": (1, "the store file's lock and the file-system checks"),
    "_store.journal": (1, "a batch of task records as one value (schema 2), read safely"),
    "_stream.define": (1, "a stream stage's `Task` (`Graph.stream`, `add_stream`)"),
    "_graph": (2, "`BaseGraph`: a Dag and its records; build, read, derive"),
    "_rewrite": (2, "the five rewrites, pure functions over `BaseGraph`"),
    "_scheduler": (2, "the synchronous scheduling core; unit paths cached per Dag"),
    "_fingerprint": (2, "task digests; binding bytes cached per Dag"),
    "_summary": (2, "`Summary`, the counts of a graph's states"),
    "_store.writer": (2, "`RunWriter`: the writer thread, one batch per commit"),
    "_store.sqlite": (2, "`SQLiteStore`, `open_store`"),
    "_store": (2, "the store package: the names the rest of the library takes from it"),
    "_clock": (3, "`Clock`, the system clock, the retry backoff"),
    "_options": (3, "`RunOptions`, validated once; `CANCEL_GRACE`"),
    "_ledger": (3, "one run's records; the one path out for events and rows (`Sink`)"),
    "_taskset": (3, "one run's asyncio tasks, retry timers, its end; `stop()`"),
    "_observe": (3, "`Watch`: progress bar, callbacks, logging"),
    "_executors": (3, "the executor package: the run's default executors"),
    "_executors.base": (3, "the `Executor` protocol, `route`, `Outcome`, `InlineExecutor`"),
    "_executors.threads": (3, "the run's own daemon threads"),
    "_executors.local": (3, "`LoopExecutor` (a coroutine is its own task), `ThreadExecutor`"),
    "_executors.process": (3, "`ProcessPool`, `ProcessExecutor`, the pre-run pickling check"),
    "_executors._worker": (3, "the worker process's script (stdlib and cloudpickle only)"),
    "_executors.shared": (3, "`SharedPool`: a process pool on its own thread, shared by runs"),
    "_executors.futures": (3, "CPU tasks on a user's `concurrent.futures.Executor`"),
    "_executors._dask_worker": (3, "what a Dask worker runs: one attempt (stdlib, cloudpickle)"),
    "_executors.dask": (3, "`DaskBackend`, `DaskExecutor`: CPU tasks on a Dask cluster"),
    "_store.resume": (3, "`load`, `plan`, `history`, `for_run`, weights from durations"),
    "_stream.store": (3, "`StreamStore`: the stream's own tables in the store's file"),
    "_stream.durable": (3, "`Durable`: Parquet out, the record, resume and leftovers"),
    "_store.session": (4, "`StoreSink` (the store's side of a run), `hold`, `load_inputs`"),
    "_backends": (4, "`ProcessBackend`, `InlineBackend`, `ExecutorBackend`"),
    "_fused": (4, "the run's fused path: a plain run's done-callback and start, inline"),
    "_runner": (5, "`_Run`: one run of one graph, a record of collaborators"),
    "_report": (5, "`to_frame`, `summary`, `timeline`, critical path (pandas)"),
    "_pictures": (5, "Mermaid, DOT, SVG, HTML, the timeline plot"),
    "_lifetime": (6, "`run`, `start`: a run's lifetime, one straight path"),
    "_sync": (7, "`run_sync`, its signals, its loop (the only uvloop importer)"),
    "_open_run": (7, "`OpenRun`, `open_run`"),
    "_stream.engine": (7, "`Engine`: one stream's run, bounded queues, terminal-first"),
    "_stream.api": (8, "`open_stream`, `OpenStream`, `run_stream`, `run_stream_sync`"),
    "_api": (8, "the public `Graph` (the verbs) and `create_graph`"),
    "__init__": (9, "the curated public names"),
    "_cli": (9, "the `asyncgraph` command's subcommands"),
    "__main__": (9, "the `asyncgraph` command (argparse)"),
    "_demo": (9, "the `asyncgraph demo` graph"),
    "compat": (9, "compatibility layers"),
    "compat.taskmap": (9, "taskmap's API on asyncgraph"),
    "compat.dplutils": (9, "dplutils' `PipelineExecutor` on streams (`StreamExecutor`)"),
}

#: module -> the modules of its own layer it may import.
SAME: dict[str, set[str]] = {
    "_dag": {"_task"},
    "_fan": {"_task"},
    "_stream.spec": set(),
    "_stream.frames": set(),
    "_stream.result": set(),
    "_stream.define": {"_task"},
    "_stream.store": set(),
    "_stream.durable": {"_stream.store"},
    "_rewrite": {"_graph"},
    "_fingerprint": {"_graph"},
    "_options": {"_clock", "_executors", "_executors.base"},
    "_observe": {"_options"},
    "_executors": {"_clock", "_executors.base", "_executors.local", "_executors.process"},
    "_executors.base": {"_clock"},
    "_executors.local": {"_clock", "_executors.base", "_executors.threads"},
    "_executors.process": {"_clock", "_executors._worker", "_executors.base", "_executors.threads"},
    "_executors.shared": {"_clock", "_executors.process"},
    "_executors.futures": {"_clock", "_executors.base", "_executors.process", "_executors._worker"},
    "_executors.dask": {
        "_clock",
        "_executors._dask_worker",
        "_executors.base",
        "_executors.local",
        "_executors.process",
        "_executors.threads",
    },
    "_store": {"_store.sqlite", "_store.writer"},
    "_pictures": {"_report"},
    "_open_run": set(),
    "__init__": {"_cli", "_demo"},
    "__main__": {"__init__", "_cli", "_demo"},
    "_cli": {"__init__"},
    "_demo": {"__init__"},
    "compat.taskmap": set(),
    "compat.dplutils": set(),
}

#: (importer, imported): upward edges kept on purpose, each type-only.
BACK_EDGES: set[tuple[str, str]] = {("_exceptions", "_graph")}

#: Modules run on their own (a worker process's script): they import nothing of ours.
STANDALONE = {"_executors._worker", "_executors._dask_worker"}

#: A third-party or heavy standard module -> the modules that may import it (any way),
#: and those that may only lazily (inside a function) or for types. ``"L3+"``: any
#: module of layer 3 or above.
OUTSIDE: dict[str, tuple[set[str], set[str]]] = {
    "asyncio": ({"L3+", "_shield"}, {"_fingerprint"}),
    "anyio": ({"L3+", "_shield"}, set()),
    "sqlite3": ({"_store.sqlite", "_stream.store"}, set()),
    "uvloop": (set(), {"_sync"}),
    "pandas": (
        {"_report"},
        {"_store.serialize", "_store.resume", "_cli", "_demo", "_api", "_summary"}
        | {"_stream.frames", "_stream.result", "_stream.engine", "compat.dplutils"},
    ),
    "cloudpickle": (
        {
            "_executors.process",
            "_executors._worker",
            "_executors.futures",
            "_executors.dask",
            "_executors._dask_worker",
            "_store.serialize",
        },
        set(),
    ),
    "distributed": (set(), {"_executors.dask"}),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


class Import:
    def __init__(self, target: str, line: int, lazy: bool, type_only: bool) -> None:
        self.target, self.line, self.lazy, self.type_only = target, line, lazy, type_only


def imports_of(path: Path) -> list[Import]:
    """Every import in ``path``, resolved to a module name (ours: relative to the package)."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path).split(".") if module_name(path) else []
    package = me if path.name == "__init__.py" else me[:-1]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, lazy, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, lazy, type_only)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                add(child, lazy, type_only)
            else:
                visit(child, lazy, type_only)

    def visit_stmt(stmt: ast.stmt, lazy: bool, type_only: bool) -> None:
        wrapper = ast.Module(body=[stmt], type_ignores=[])
        visit(wrapper, lazy, type_only)

    def add(node: ast.Import | ast.ImportFrom, lazy: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name == "asyncgraph" or name.startswith("asyncgraph."):
                    name = name.removeprefix("asyncgraph").lstrip(".") or "__init__"
                    found.append(Import(name, node.lineno, lazy, type_only))
                else:
                    found.append(Import("!" + name, node.lineno, lazy, type_only))
            return
        if node.level == 0:
            base = node.module or ""
            if base == "asyncgraph" or base.startswith("asyncgraph."):
                ours = base.removeprefix("asyncgraph").lstrip(".")
                for alias in node.names:
                    found.append(Import(_ours(ours, alias.name), node.lineno, lazy, type_only))
            else:
                found.append(Import("!" + base, node.lineno, lazy, type_only))
            return
        up = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        base = ".".join([*up, *([node.module] if node.module else [])])
        for alias in node.names:
            found.append(Import(_ours(base, alias.name), node.lineno, lazy, type_only))

    visit(tree, False, False)
    return found


def _ours(base: str, name: str) -> str:
    """``from .X import Y``: the module X.Y if it is one, else X."""
    candidate = f"{base}.{name}" if base else name
    path = PKG.joinpath(*candidate.split("."))
    if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
        return candidate
    return base or "__init__"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def modules() -> dict[str, Path]:
    """Every module of the package by its name under ``asyncgraph`` (``__init__``: the
    package itself)."""
    return {module_name(p) or "__init__": p for p in sorted(PKG.rglob("*.py"))}


def ours(name: str) -> list[Import]:
    """The imports of our own modules in module ``name`` (not itself).

    Importing ``a.b`` runs the package ``a``'s ``__init__`` first, so from outside the
    package it counts as importing ``a`` too; a package's own ``__init__`` importing its
    modules counts as well (it runs them).
    """
    found = []
    package = name.rpartition(".")[0] if name not in PACKAGES else name
    for imp in imports_of(modules()[name]):
        target = imp.target
        if target.startswith("!") or target == name:
            continue
        found.append(imp)
        parent = target.rpartition(".")[0]
        while parent and parent != package and not package.startswith(parent + "."):
            found.append(Import(parent, imp.line, imp.lazy, imp.type_only))
            parent = parent.rpartition(".")[0]
    return found


PACKAGES = {".".join(p.parent.relative_to(PKG).parts) for p in PKG.rglob("__init__.py")} - {""}


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set(LAYERS))
    extra = sorted(set(LAYERS) - set(modules()))
    assert not missing, f"modules with no layer in tests/test_layers.py LAYERS: {missing}"
    assert not extra, f"LAYERS names modules that do not exist: {extra}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_go_down(name: str):
    me = LAYERS[name][0]
    bad = []
    for imp in ours(name):
        target = imp.target
        if name in STANDALONE:
            bad.append(f"line {imp.line}: imports {target}, but it runs on its own")
            continue
        their = LAYERS[target][0]
        if their < me or target in SAME.get(name, ()):
            continue
        if (name, target) in BACK_EDGES and imp.type_only:
            continue
        how = "type-only " if imp.type_only else ("lazy " if imp.lazy else "")
        bad.append(f"line {imp.line}: {how}import of {target} (layer {their}) from layer {me}")
    assert not bad, f"asyncgraph.{name} imports upward:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("name", sorted(modules()))
def test_outside_modules_stay_in_their_rooms(name: str):
    me = LAYERS[name][0]
    bad = []
    for imp in imports_of(modules()[name]):
        if not imp.target.startswith("!"):
            continue
        top = imp.target[1:].split(".")[0]
        if top not in OUTSIDE:
            continue
        anywhere, lazily = OUTSIDE[top]
        if name in anywhere or ("L3+" in anywhere and me >= 3):
            continue
        if name in lazily and (imp.lazy or imp.type_only):
            continue
        bad.append(f"line {imp.line}: imports {top}")
    assert not bad, f"asyncgraph.{name} imports what it may not:\n  " + "\n  ".join(bad)


def test_no_import_cycle_at_run_time():
    """Type-only imports aside, the import graph has no cycle (so none at import time,
    and none through lazy imports either)."""
    edges = {name: {imp.target for imp in ours(name) if not imp.type_only} for name in modules()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                cycle = [*stack[stack.index(m) :], m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)


def render() -> str:
    """The layer table as docs/design.md shows it."""
    rows = ["| layer | module | owns | may import |", "|---:|---|---|---|"]
    for name, (layer, owns) in LAYERS.items():
        if name in STANDALONE:
            allowed = ["nothing of ours"]
        else:
            allowed = [f"L0-L{layer - 1}"] if layer else ["-"]
            allowed += sorted(f"`{m}`" for m in SAME.get(name, ()))
            allowed += [f"`{m}` (type-only)" for a, m in sorted(BACK_EDGES) if a == name]
        rows.append(f"| L{layer} | `{name}` | {owns} | {', '.join(allowed)} |")
    return "\n".join(rows)


def test_design_md_shows_the_same_table():
    text = (ROOT / "docs" / "design.md").read_text()
    begin, end = "<!-- layers -->", "<!-- /layers -->"
    assert begin in text and end in text, f"docs/design.md needs {begin} ... {end}"
    shown = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert shown == render(), (
        "docs/design.md's layer table differs from tests/test_layers.py's LAYERS; paste "
        "the output of `python tests/test_layers.py` between the markers"
    )


def test_the_walker_sees_every_kind_of_import(tmp_path: Path):
    """The walker finds top-level, lazy and TYPE_CHECKING imports, relative and absolute
    (a test of the test: a walker that missed one kind would pass every module)."""
    pkg = PKG / "_layers_probe.py"
    assert not pkg.exists()
    pkg.write_text(
        "from typing import TYPE_CHECKING\n"
        "from ._state import State\n"
        "import asyncgraph._task\n"
        "if TYPE_CHECKING:\n"
        "    from ._graph import BaseGraph\n"
        "def f():\n"
        "    from ._runner import _Run\n"
        "    import pandas\n"
    )
    try:
        got = {(i.target, i.lazy, i.type_only) for i in imports_of(pkg)}
    finally:
        pkg.unlink()
    assert ("_state", False, False) in got
    assert ("_task", False, False) in got
    assert ("_graph", False, True) in got
    assert ("_runner", True, False) in got
    assert ("!pandas", True, False) in got


if __name__ == "__main__":
    sys.stdout.write(render() + "\n")
