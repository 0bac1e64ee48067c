"""Resuming from a store: ``load``, ``plan`` and ``history``.

A store keeps the latest record of every task with its fingerprint. Loading a graph from a
store gives each task its stored state, with one rule: a task stored as done is done only
while its fingerprint (its code, the helpers and constants it uses, its options and its
upstream fingerprints; see ``_fingerprint``) is unchanged, all its dependencies are
done, and none of those was computed in a later run than it (a subgraph that reran a
dependency without it); otherwise it is pending again. Results stay in the store
(:class:`StoredResult`) until something needs them.

A run on a store (``run(g, store=...)``) with a graph that was not loaded from that store
runs ``reset_failed(load(g, store))``: it reuses what is done and unchanged, and runs the
rest. A graph that was loaded (and perhaps rewritten) runs as it is.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, cast

from .._exceptions import RemoteError, StoreError, StoreMismatchError
from .._fan import element_like, family_of, positions, prototype
from .._fingerprint import Known, digests
from .._graph import BaseGraph, G, check_graph
from .._nogc import paused
from .._rewrite import reset_failed
from .._state import FINISHED_BADLY, PENDING_RECORD, State, StoredResult, TaskRecord
from .._task import UNKNOWN_ITEM, Element, Kind, Task, constructor, new_element
from .protocol import Store, StoredTask
from .sqlite import SQLiteStore, open_store

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Loaded",
    "check_origin",
    "durations",
    "fingerprints",
    "for_run",
    "history",
    "load",
    "load_from",
    "plan",
    "reused_record",
    "store_key",
    "weights_of",
]

#: ``TaskRecord(*fields)``, faster (see ``_task.constructor``): a load builds one per
#: task done in the store (10k on a resume of 10k).
_new_record = constructor(TaskRecord)


def reused_record(store: Store, s: StoredTask, name: str) -> TaskRecord:
    """The record of a task reused from ``store``: done, its result left in the store
    (a :class:`StoredResult` read when asked), its attempts and times as stored."""
    assert s.result_id is not None
    record: TaskRecord = _new_record(
        State.DONE,
        StoredResult(store, s.result_id, name),
        None,
        None,
        s.attempts,
        s.started,
        s.finished,
    )
    return record


_LAST_TIME = {
    State.FAILED: "failed last time",
    State.SKIPPED: "skipped last time (an upstream task failed)",
    State.CANCELLED: "cancelled last time",
    State.RUNNING: "never finished (the run stopped while it ran)",
    State.PENDING: "never finished",
}


def store_key(store: Store) -> str:
    """What identifies a store for ``Graph._origin``."""
    if isinstance(store, SQLiteStore):
        return f"sqlite:{os.path.realpath(store.path)}"
    return f"object:{id(store)}"


@dataclass(frozen=True, slots=True)
class Loaded:
    """A graph with its stored state, and what load() found out on the way."""

    graph: BaseGraph
    reasons: dict[str, str]  # why each task that is not done will run
    stored: dict[str, StoredTask]
    digests: dict[str, tuple[str, str]]  # name -> (own code digest, fingerprint)


def check_names(
    graph: BaseGraph, stored: Mapping[str, StoredTask], store: Store, force: bool
) -> None:
    """Raise StoreMismatchError if the store holds tasks the graph lacks (unless forced)."""
    if force or not stored:
        return
    tasks = graph._dag.tasks
    only_in_store = [n for n in stored if n not in tasks]
    if only_in_store and graph._dag.fans:
        mapped = {n for n, t in tasks.items() if t.over is not None}
        only_in_store = [
            n
            for n in only_in_store
            if not (n[-1:] == "]" and (i := n.find("[")) > 0 and n[:i] in mapped)
        ]
    if not only_in_store:
        return
    only_in_graph = [n for n in graph.tasks if n not in stored]
    shared = len(stored) - len(only_in_store)
    what = "another graph's store" if shared == 0 else "a store of an earlier version"
    raise StoreMismatchError(
        f"store {store} was written by a graph with other task names ({what}?): "
        f"only in the store: {_names(only_in_store)}; only in this graph: "
        f"{_names(only_in_graph)}. If tasks were renamed or removed, or you run a "
        "subgraph, pass force=True (the command line's --force): tasks only in the "
        "store are left as they are, tasks only in the graph run as new",
        only_in_store,
        only_in_graph,
    )


def _names(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def load_from(
    graph: BaseGraph, store: Store, *, force: bool = False, remember: bool = False
) -> Loaded:
    """The work of :func:`load`; blocking (reads the store), so runs call it in a thread.
    ``remember``: keep the rows read for the run of the graph it returns (``load``)."""
    with paused():  # it builds a row, a record and perhaps an element per task
        return _load_from(graph, store, force, remember)


def _load_from(graph: BaseGraph, store: Store, force: bool, remember: bool) -> Loaded:
    generation = _generation(store) if remember else None  # first: a later write shows
    stored = store.tasks()
    check_names(graph, stored, store, force)
    if graph._dag.fans and graph._dag.static() is not graph._dag:
        # Its elements come from the store (as they were); its own state for them is
        # the caller's to keep: load() a graph without them.
        graph = graph._subset(graph._dag.static())
    fps = digests(graph, _known(store))
    records = graph._record_copy()  # a dict: graph.records is a view, a call per item
    reasons: dict[str, str] = {}
    tasks = graph._dag.tasks
    done, pending = State.DONE, State.PENDING
    new_record = _new_record
    # One pass in topological order; plain loops (this runs once per task of every
    # resume, and a generator per task costs more than its work).
    for name in graph.topological_order():
        given = records[name]
        if given.status is not pending:
            # The caller's own state (mark_done, create_graph(done=...)) wins.
            if given.status is done:
                reasons[name] = "marked done by the user"
            elif given.status in _LAST_TIME:
                reasons[name] = _LAST_TIME[given.status]
            continue
        s = stored.get(name)
        if s is None:
            reasons[name] = "new"
            continue
        own, fp = fps[name]
        deps = tasks[name].deps
        deps_done = True
        if s.status is done:
            # whether every dependency is done and, if so, _upstream_reran: one pass
            reran = False
            run_id = s.run_id
            for d in deps:
                rd = records[d]
                if rd.status is not done:
                    deps_done = False
                    break
                if not reran:
                    sd = stored.get(d)
                    reran = (
                        sd is not None
                        and sd.run_id > run_id
                        and sd.started is not None
                        and type(rd.result) is StoredResult
                    )
            if not deps_done:
                reran = False  # as _upstream_reran is asked only when they are all done
            if s.fingerprint == fp and deps_done and s.result_id is not None and not reran:
                # reused_record, inline (10k on a resume of 10k)
                records[name] = new_record(
                    done, StoredResult(store, s.result_id, name), None, None, s.attempts,
                    s.started, s.finished,
                )  # fmt: skip
            elif s.code != own:
                reasons[name] = "code changed"
            elif s.fingerprint != fp:
                reasons[name] = "upstream changed"
            elif reran:
                reasons[name] = "upstream result changed"
            else:
                reasons[name] = "upstream reruns"
            continue
        reasons[name] = _LAST_TIME.get(s.status, "never finished")
        if s.status in FINISHED_BADLY:
            error: BaseException | None = None
            if s.status is not State.SKIPPED and (
                s.error_type is not None or tasks[name].over is None
            ):
                error = RemoteError(
                    s.error_type or "Error", s.error_message or "", s.traceback or ""
                )
            # (A family failed or cancelled through its elements has no error of its
            # own, as in the run that ended it: mark_done of the failed element sends
            # it back to pending, and raise_for_failures lists each failure once.)
            records[name] = TaskRecord(
                s.status, None, error, s.traceback, s.attempts, s.started, s.finished
            )
    loaded = graph._derive(records, origin=store_key(store))
    if graph._dag.fans:
        loaded = _with_stored_elements(loaded, store, stored, reasons, fps)
    if generation is not None:
        _remember(loaded, store, generation, stored)
    return Loaded(loaded, reasons, stored, fps)


def _known(store: Store) -> Callable[[], Known | None] | None:
    """What ``digests`` may take instead of hashing every task: the digests of the
    graph of the store's last run (``SQLiteStore.known_digests``), read when asked."""
    if not isinstance(store, SQLiteStore):
        return None

    def read() -> Known | None:
        kept = store.known_digests()
        return None if kept is None else Known(*kept)

    return read


#: The rows the last ``load`` read, for the run of the graph it returned (a run of a
#: loaded graph reads the store's rows again otherwise): ``(its Dag, weakly; the store's
#: key; the store's generation before the read; the rows)``. One at most, given to one
#: run at most, so no more than one load's rows are ever kept.
_LAST_LOAD: tuple[weakref.ref[Any], str, tuple[int, str | None, int], dict[str, StoredTask]] | None
_LAST_LOAD = None


def _generation(store: Store) -> tuple[int, str | None, int] | None:
    """``SQLiteStore.generation()``; None for a store that cannot say (read it again)."""
    return store.generation() if isinstance(store, SQLiteStore) else None


def _remember(
    graph: BaseGraph,
    store: Store,
    generation: tuple[int, str | None, int],
    stored: dict[str, StoredTask],
) -> None:
    global _LAST_LOAD
    _LAST_LOAD = (weakref.ref(graph._dag), store_key(store), generation, stored)


def _stored_for(graph: BaseGraph, store: Store) -> dict[str, StoredTask]:
    """The store's rows for a run of ``graph`` (loaded from it): those its ``load`` read,
    if the store says nothing was written since, else read again."""
    global _LAST_LOAD
    last, _LAST_LOAD = _LAST_LOAD, None
    if last is not None:
        dag, key, generation, stored = last
        if dag() is graph._dag and key == store_key(store) and _generation(store) == generation:
            return stored
    return store.tasks()


#: The error type of the row a run writes for an element its parent no longer produces.
GONE = "ElementGone"


def _with_stored_elements(
    graph: BaseGraph,
    store: Store,
    stored: Mapping[str, StoredTask],
    reasons: dict[str, str],
    fps: Mapping[str, tuple[str, str]],
) -> BaseGraph:
    """``graph`` with the elements its store holds for each mapped task, as they were
    (a family is expanded again when its mapped task runs, and each element's
    fingerprint is then checked by its item's content).

    An element is done here if it is done in the store, its mapped task's code is the
    same, and its parent is done and was not computed after it; else pending (with the
    reason), or failed/skipped/cancelled as stored. Nothing is unpickled. ``fps``: the
    graph's ``digests``.
    """
    tasks = graph._dag.tasks  # the Dag's own dict: read only
    # Each mapped task's stored element rows: one pass over the store's names, a name's
    # family read from it inline (this runs on every load of a graph that maps).
    members: dict[str, list[StoredTask]] = {n: [] for n, t in tasks.items() if t.over is not None}
    if not members:
        return graph
    found = False
    for n, s in stored.items():
        if n[-1:] != "]":
            continue
        i = n.find("[")
        rows_of = members.get(n[:i]) if i > 0 else None
        if rows_of is None or n in tasks or s.error_type == GONE:
            continue
        rows_of.append(s)
        found = True
    if not found:
        return graph
    records = graph._record_copy()
    added: list[Task] = []
    done = State.DONE
    for template, rows in members.items():
        if not rows:
            continue
        t = tasks[template]
        over = t.over
        assert over is not None
        parent = tasks[over]
        own = fps[template][0]
        proto = prototype(t)
        cut = len(template) + 1
        # In family order where the names say it (by position: ``t[2]`` before ``t[10]``),
        # else as the store wrote them (each run's in the order they started).
        at = positions([s.name[cut:-1] for s in rows])
        if at is not None:
            rows[:] = [rows[i] for i in sorted(range(len(rows)), key=at.__getitem__)]
        else:
            rows.sort(key=_stored_order)
        wise = parent.over is not None  # element-wise: each takes its counterpart element
        # A family a run collected done was expanded in that run from its inputs as they
        # were then, and each element it kept was checked against them (computed again,
        # or reused because its item's content was the same): an element row is as
        # recent as that run, although the row itself is older. (A family given by
        # mark_done has no start: it vouches for nothing.) A run that kept an element
        # of a family that did not end done re-stamps the element's own row (``vouch``).
        fam = stored.get(template)
        vouched = (
            fam.run_id if fam is not None and fam.status is done and fam.started is not None else 0
        )
        stale_after = 0  # mapped over a task's result: a row older than this is stale
        if not wise:
            # Every element has the template's deps, so whether they are done and the
            # latest run that computed one of them are the same for the whole family
            # (``_upstream_reran`` for each row, at once).
            proto[_IN_AT["input"]] = over
            proto[_IN_AT["value"]] = UNKNOWN_ITEM
            proto[_IN_AT["key"]] = t.key
            deps_done = all((r := records.get(d)) is not None and r.status is done for d in t.deps)
            latest = max(
                (
                    sd.run_id
                    for d in t.deps
                    if (sd := stored.get(d)) is not None
                    and sd.started is not None
                    and type(records[d].result) is StoredResult
                ),
                default=0,
            )
            stale_after = latest if deps_done and latest > vouched else 0
        i_name, i_index, i_at = _IN_AT["name"], _IN_AT["index"], _IN_AT["at"]
        why_not_up = f"expands again when {over!r} runs"
        all_done = True
        for i, s in enumerate(rows):
            name = s.name
            key = name[cut:-1]
            if wise:
                mine = f"{over}[{key}]"
                deps = tuple(mine if d == over else d for d in t.deps)
                added.append(
                    element_like(
                        proto,
                        name=name,
                        args=tuple(mine if d == over else d for d in t.args),
                        kwargs=tuple((p, mine if d == over else d) for p, d in t.kwargs),
                        deps=deps,
                        value=UNKNOWN_ITEM,
                        input=None,
                        index=i,
                        at=key,
                        key=t.key,
                    )
                )
                up_done = all((r := records.get(d)) is not None and r.status is done for d in deps)
            else:
                args = proto.copy()
                args[i_name] = name
                args[i_index] = i
                args[i_at] = key
                added.append(new_element(*args))
                up_done = deps_done
            status = s.status
            if status is done:
                if wise:
                    reran = up_done and _upstream_reran(s, deps, records, stored, vouched)
                else:
                    reran = stale_after > s.run_id
                if s.code == own and up_done and s.result_id is not None and not reran:
                    records[name] = reused_record(store, s, name)
                    continue
                records[name] = PENDING_RECORD
                reasons[name] = (
                    "code changed"
                    if s.code != own
                    else why_not_up
                    if not up_done
                    else "upstream result changed"
                )
                all_done = False
                continue
            all_done = False
            reasons[name] = _LAST_TIME.get(status, "never finished")
            if status in FINISHED_BADLY:
                error = RemoteError(
                    s.error_type or "Error", s.error_message or "", s.traceback or ""
                )
                records[name] = TaskRecord(
                    status,
                    None,
                    error if status is not State.SKIPPED else None,
                    s.traceback,
                    s.attempts,
                    s.started,
                    s.finished,
                )
            else:
                records[name] = PENDING_RECORD
        # The family is done only if every element is: else it is collected again.
        if records[template].status is done and not all_done:
            records[template] = PENDING_RECORD
            reasons[template] = "an element reruns"
    return graph._with_dag(graph._dag.with_elements([], added), records)


#: Where each field of an Element goes in its constructor's arguments.
_IN_AT = {f.name: i for i, f in enumerate(fields(Element))}


def _stored_order(s: StoredTask) -> tuple[int, float]:
    return s.run_id, s.started or 0.0


def _family_reasons(natural: Loaded, given: BaseGraph) -> None:
    """A mapped task whose parent runs: it expands then, with how many elements it had."""
    graph = natural.graph
    records = given.records
    families = graph._dag.families()
    for name, task in graph.tasks.items():
        over = task.over
        if over is None or name not in records or records[over].status is State.DONE:
            continue
        if records[name].status is not State.PENDING:
            continue
        n = len(families.get(name, ()))
        natural.reasons[name] = f"expands when {over!r} runs (last time: {n:,} elements)"


def _gone_rows(natural: Loaded) -> list[dict[str, Any]]:
    """The stored elements a parent no longer returned when it last ran."""
    tasks = natural.graph.tasks
    rows = []
    for n, s in natural.stored.items():
        if s.error_type != GONE or n in tasks:
            continue
        split = family_of(n)
        if split is None or split[0] not in tasks:
            continue
        rows.append(
            {
                "name": n,
                "kind": tasks[split[0]].kind.value,
                "action": "gone",
                "reason": f"gone: {s.error_message}",
                "last_status": s.status.value,
                "last_run": s.run_id,
            }
        )
    return rows


def _upstream_reran(
    s: StoredTask,
    deps: Any,
    records: Mapping[str, TaskRecord],
    stored: Mapping[str, StoredTask],
    vouched: int = 0,
) -> bool:
    """Whether a dependency reused from the store was computed in a later run than ``s``
    (or than ``vouched``, the run that last collected ``s``'s family done).

    Then ``s`` was computed from that dependency's earlier result: a run that reran the
    dependency without it (a subgraph that left it out) would otherwise leave it looking
    reusable, as fingerprints cover code, not results. Run ids only grow. A result the
    user gave (``mark_done``: no start time) is not a computation and does not count.
    """
    for d in deps:
        sd = stored.get(d)
        if (
            sd is not None
            and sd.run_id > max(s.run_id, vouched)
            and sd.started is not None
            and type(records[d].result) is StoredResult
        ):
            return True
    return False


def load(graph: G, store: str | os.PathLike[str] | Store, *, force: bool = False) -> G:
    """``graph`` with the state its store recorded, ready to inspect, rewrite and run.

    Tasks done in the store with an unchanged fingerprint are done (their results are
    loaded when a run or ``graph.results[name]`` needs them); failed, skipped and
    cancelled tasks keep that state (``reset_failed`` sends them back to pending); tasks
    that are new, changed, downstream of a change or never finished are pending.
    Raises :class:`StoreMismatchError` if the store holds tasks the graph does not have,
    unless ``force=True``.
    """
    check_graph(graph, "load")
    if not isinstance(force, bool):
        raise TypeError(f"force must be True or False, not {force!r}")
    loaded = load_from(graph, open_store(store), force=force, remember=True).graph
    return cast(G, loaded)  # derived from graph: of its class


def check_origin(graph: BaseGraph, store: Store) -> None:
    """Raise StoreError if ``graph`` was loaded from (or run on) a store other than this.

    Its reused tasks' results are in that store, under keys this one does not have, and
    the states it carries are that store's: mixing them into this one would record
    results nobody computed here. A careful user means one of the two stores; we say
    which two, and how to use either.
    """
    origin = graph._origin
    if origin is None or origin == store_key(store) or _same_file(origin, store):
        return
    where = origin.removeprefix("sqlite:") if origin.startswith("sqlite:") else None
    other = repr(where) if where is not None else "another Store object"
    fix = f"store={where!r}" if where is not None else "that Store object"
    raise StoreError(
        f"this graph was loaded from store {other} (or returned by a run on it), and "
        f"this run is on store {str(store)!r}; its done tasks' results are in {other}. "
        f"Run it on the store it came from ({fix}), or load it from this one first: "
        f"ag.load(graph, {str(store)!r})"
    )


def _same_file(origin: str, store: Store) -> bool:
    """Two spellings of one file (a hard link: realpath differs, the inode does not)."""
    if not (origin.startswith("sqlite:") and isinstance(store, SQLiteStore)):
        return False
    try:
        return os.path.samefile(origin.removeprefix("sqlite:"), store.path)
    except OSError:
        return False


def for_run(graph: BaseGraph, store: Store, *, force: bool = False) -> Loaded:
    """What a run on ``store`` starts from (see the module docstring)."""
    check_origin(graph, store)
    if graph._origin is not None:
        # Loaded from this store already (its names were checked then): as it is.
        with paused():
            return Loaded(graph, {}, _stored_for(graph, store), digests(graph))
    loaded = load_from(graph, store, force=force)
    ready = reset_failed(loaded.graph)  # keeps _origin: _derive copies it
    return Loaded(ready, loaded.reasons, loaded.stored, loaded.digests)


def fingerprints(graph: BaseGraph) -> dict[str, str]:
    """Each task's fingerprint (a hex string), by name, in topological order.

    The fingerprint covers the task's code (with the helpers and constants it uses), its
    options, how it binds its dependencies, and their fingerprints: what a store compares
    to decide whether a done task can be reused. Two graphs' fingerprints can be compared
    without a store: ``ag.plan(new, fingerprints=ag.fingerprints(old))``.
    """
    check_graph(graph, "fingerprints")
    return {name: full for name, (_, full) in digests(graph).items()}


def plan(
    graph: BaseGraph,
    store: str | os.PathLike[str] | Store | BaseGraph | None = None,
    *,
    fingerprints: Mapping[str, str] | BaseGraph | None = None,
) -> pd.DataFrame:
    """What a run of ``graph`` on ``store`` would do: for each task ``run`` or ``reuse``
    (or ``keep`` for a failed task a loaded graph has not reset), and why.

    Columns: name, kind, action, reason, last_status (in the store, or None), last_run.
    Reads the store only; nothing is unpickled or written.

    Without a store, ``fingerprints=`` compares ``graph`` with another graph (or with the
    fingerprints :func:`fingerprints` took of one; ``plan(graph, other_graph)`` is the
    same as ``plan(graph, fingerprints=other_graph)``): a task whose fingerprint is unchanged
    is ``reuse``, any other ``run``, with why (``new``, ``code changed``, ``upstream
    changed (names)``, ``dependencies changed``: other ones, or bound otherwise).
    Columns: name, kind, action, reason, fingerprint, before (the other's fingerprint,
    or None).
    """
    check_graph(graph, "plan")
    if isinstance(store, BaseGraph) and fingerprints is None:
        store, fingerprints = None, store  # plan(new, old): two graphs, no store
    if fingerprints is not None:
        if store is not None:
            raise TypeError(
                "plan() takes a store or fingerprints=, not both: a store plan already "
                "compares with the fingerprints the store holds"
            )
        return _compare(graph, fingerprints)
    if store is None:
        raise TypeError(
            "plan() needs a store (plan(graph, 'nightly.db')) or another graph's "
            "fingerprints (plan(graph, fingerprints=ag.fingerprints(old)))"
        )
    with paused():  # a row per task, and perhaps an element per stored one
        return _store_plan(graph, store)


def _store_plan(graph: BaseGraph, store: Any) -> pd.DataFrame:
    """:func:`plan` on a store (a path or a Store)."""
    import pandas as pd

    the_store = open_store(store)
    check_origin(graph, the_store)
    if graph._origin is not None:
        # A loaded (perhaps rewritten) graph runs as it is: compare it with what a run
        # of the bare definitions would do, to tell the user's rewrites apart.
        given = graph
        fresh = graph._derive(dict.fromkeys(graph.tasks, PENDING_RECORD), origin=None)
        # The graph was loaded, so a mismatch of names was already allowed (load's force).
        natural = for_run(fresh, the_store, force=True)
    else:
        natural = for_run(graph, the_store)
        given = natural.graph
    rows: list[tuple[Any, ...]] = []  # one tuple a task (a dict a task cost a third more)
    append = rows.append
    stored = natural.stored
    reasons = natural.reasons
    kinds = _KIND_VALUE
    values = _STATE_VALUE
    done, pending = State.DONE, State.PENDING
    tasks: Mapping[str, Task] = graph._dag.tasks
    if natural.graph._dag.fans:  # with the elements the store holds
        tasks = {**natural.graph._dag.tasks, **given._dag.tasks}
        _family_reasons(natural, given)
    given_records = given._record_copy()
    natural_records = natural.graph._record_copy()
    for name, task in tasks.items():
        given_record = given_records.get(name)
        natural_record = natural_records.get(name)
        if given_record is None or natural_record is None:
            continue
        want = given_record.status
        would = natural_record.status
        if want is done:
            action = "reuse"
            reason = reasons.get(name, "done, unchanged")
            if would is not done:
                reason = "marked done by the user"
        elif want is pending:
            action = "run"
            reason = "reset by the user" if would is done else reasons.get(name, "never finished")
            if task.over is not None and reasons.get(name, "").startswith("expands"):
                reason = reasons[name]
        else:
            action = "keep"
            reason = f"{want.value} last time; not reset (reset_failed() reruns it)"
        s = stored.get(name)
        if s is None:
            append((name, kinds[task.kind], action, reason, None, None))
        else:
            append((name, kinds[task.kind], action, reason, values[s.status], s.run_id))
    if natural.graph._dag.fans:
        rows += [tuple(row.values()) for row in _gone_rows(natural)]
    frame = pd.DataFrame(rows, columns=_PLAN_COLUMNS)
    return frame.astype({"last_run": "Int64"})


#: A store plan's columns (``_gone_rows`` gives its rows in this order too).
_PLAN_COLUMNS = ["name", "kind", "action", "reason", "last_status", "last_run"]
_KIND_VALUE = {kind: kind.value for kind in Kind}  # Enum's .value is a Python property
_STATE_VALUE = {state: state.value for state in State}


def _compare(graph: BaseGraph, other: Mapping[str, str] | BaseGraph) -> pd.DataFrame:
    """``plan(graph, fingerprints=other)``: each task's fingerprint against ``other``'s."""
    import pandas as pd

    mine = digests(graph)
    theirs: dict[str, tuple[str | None, str]]
    if isinstance(other, BaseGraph):
        theirs = dict(digests(other))
    elif isinstance(other, Mapping):
        theirs = {}
        for name, fp in other.items():
            if not isinstance(name, str) or not isinstance(fp, str):
                raise TypeError(
                    "plan(fingerprints=...) takes a Graph or a dict of task name -> "
                    f"fingerprint (str), as ag.fingerprints(graph) returns; found "
                    f"{type(name).__name__} -> {type(fp).__name__} for {name!r}"
                )
            theirs[name] = (None, fp)
    else:
        raise TypeError(
            "plan(fingerprints=...) takes a Graph or a dict of task name -> fingerprint, "
            f"as ag.fingerprints(graph) returns; not {type(other).__name__}"
        )
    rows: list[tuple[str, str, str, str, str | None, str | None]] = []
    elements = []
    for name in graph.topological_order():
        task = graph.tasks[name]
        if task.family is not None:  # fan-out: no fingerprint of its own (see below)
            elements.append(task)
            continue
        own, fp = mine[name]
        before = theirs.get(name)
        if before is None:
            action, reason = "run", "new"
        elif before[1] == fp:
            action, reason = "reuse", "unchanged"
        else:
            action = "run"
            changed = [d for d in task.deps if theirs.get(d, (None, ""))[1] != mine[d][1]]
            if before[0] is not None and before[0] != own:
                reason = "code changed"
            elif changed:
                reason = "upstream changed (" + ", ".join(changed) + ")"
            elif before[0] is None:
                reason = "code or dependencies changed"
            else:
                reason = "dependencies changed"  # which tasks, or how they are bound
        rows.append(
            (name, task.kind.value, action, reason, fp, None if before is None else before[1])
        )
    by_name = {r[0]: r for r in rows}
    for e in elements:
        # An element's fingerprint is taken as its family expands, from its item: here
        # it does what its mapped task does (its item comes from the same parent).
        family = e.family
        assert family is not None
        _, _, action, reason, _, _ = by_name[family]
        by_name[e.name] = (
            e.name,
            e.kind.value,
            action,
            f"as its mapped task {family!r} ({reason})",
            None,
            None,
        )
    ordered = [by_name[n] for n in graph.tasks]  # definition order, as the store's plan
    return pd.DataFrame(
        ordered, columns=["name", "kind", "action", "reason", "fingerprint", "before"]
    )


def history(store: str | os.PathLike[str] | Store) -> pd.DataFrame:
    """Every run in ``store``: run id, the graph's name (``Graph(name=...)``, or missing),
    start, end (UTC), status and counts by status."""
    import pandas as pd

    the_store = open_store(store)
    runs = the_store.runs()
    columns = [
        "run",
        "graph",
        "started",
        "finished",
        "duration_s",
        "status",
        "tasks",
        "reused",
        "done",
        "failed",
        "skipped",
        "cancelled",
        "pid",
        "host",
    ]
    rows: list[dict[str, Any]] = []
    for r in runs:
        rows.append(
            {
                "run": r.id,
                "graph": r.graph,
                "started": _ts(r.started),
                "finished": _ts(r.finished),
                "duration_s": None if r.finished is None else r.finished - r.started,
                "status": r.status,
                "tasks": r.tasks,
                "reused": r.reused,
                "done": r.done,
                "failed": r.failed,
                "skipped": r.skipped,
                "cancelled": r.cancelled,
                "pid": r.pid,
                "host": r.host,
            }
        )
    frame = pd.DataFrame(rows, columns=columns)
    # The name is text or missing, NaN as in to_frame().error: pandas' text dtype, whether
    # any run was named or none was (pandas would infer str, object or float).
    text: Any = "str" if int(pd.__version__.split(".")[0]) >= 3 else object
    frame["graph"] = pd.Series(
        [math.nan if r["graph"] is None else r["graph"] for r in rows], dtype=text
    )
    frame["started"] = pd.to_datetime(frame["started"], utc=True)
    frame["finished"] = pd.to_datetime(frame["finished"], utc=True)
    return frame.astype({"duration_s": "float64"})


def _ts(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC)


def durations(stored: Mapping[str, StoredTask]) -> dict[str, float]:
    """Past durations, for the scheduler's critical-path estimate."""
    out: dict[str, float] = {}
    done = State.DONE
    for n, s in stored.items():
        if s.status is done:
            started, finished = s.started, s.finished
            if started is not None and finished is not None:
                out[n] = finished - started if finished > started else 0.0
    return out


def weights_of(loaded: Loaded) -> dict[str, float] | None:
    """Critical-path weights from the past durations of ``loaded``'s tasks (None if none
    was ever timed); a task never timed gets the median.

    Only the tasks to run get one: the scheduler measures the paths of those alone (a
    task's path runs through its descendants, which run too), so a resume of 100 tasks
    of 10k does not make 10k weights.
    """
    known = durations(loaded.stored)
    if not known:
        return None
    ordered = sorted(known.values())
    typical = ordered[len(ordered) // 2] or 1e-6
    runnable = (State.PENDING, State.RUNNING)
    return {
        n: known.get(n, typical) or 1e-6
        for n, r in loaded.graph._record_copy().items()
        if r.status in runnable
    }
