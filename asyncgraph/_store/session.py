"""The store's side of a run: a :class:`~asyncgraph._ledger.Sink` that writes its rows.

Before the run: the stored results its pending tasks take as inputs are loaded, the run
is begun in the store, and stale ``done`` rows are reset. During the run: each ended
task's row goes to a writer thread (``RunWriter``), and the commits come back to the
ledger, which sends their ``done`` events then. After it: the run's end is recorded.

State it keeps
    ``ready[name]``          a result's bytes as they came (a CPU worker's pickle),
                             until ``keep`` takes them instead of serializing;
    ``blobs[name]``          a done task's serialized result, until its row is queued;
    ``unstorable_errors``    why a result could not be serialized, until its task fails;
    ``counts[state]``        tasks ended, by state (committed or not);
    ``reused``, ``done_before``  tasks reused from the store (the run's count), and the
                             elements among them loaded as done (not counted twice);
    ``writer``, ``run_id``   the writer thread and the run's key, once begun;
    ``ids``                  the run's result keys: consecutive from a random start;
    ``error``                a write that failed (the run was stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import operator
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._exceptions import StoreError, UnstorableResultError
from .._fingerprint import (
    element_fingerprints,
    elementwise_fingerprint,
    input_digests,
    known_of,
)
from .._graph import BaseGraph
from .._ledger import Ledger
from .._nogc import paused
from .._shield import in_thread_to_the_end
from .._state import State, StoredResult, TaskRecord
from .._task import Element, Task
from .protocol import Store, TaskRow, new_result_id
from .resume import GONE, reused_record
from .serialize import serialize
from .writer import RunWriter

if TYPE_CHECKING:
    from .resume import Loaded

__all__ = ["MAX_ERROR_TEXT", "StoreSink", "hold", "load_inputs"]

_VALUE_OF = {state: state.value for state in State}  # Enum's .value is a Python property
_STATUS = operator.attrgetter("status")
_RESULT = operator.attrgetter("result")
_STORED = itertools.repeat(StoredResult)
_DONE = State.DONE
NONE_BLOB = serialize("", None)  # what a None result is stored as (made once)
_NO_DIGEST = (None, None)
#: A run's first result key is random below 2**61: the run's own keys, one after
#: another, stay below SQLite's largest integer (2**63 - 1) for 2**62 results.
_BASE_MASK = (1 << 61) - 1


#: What a row of a done task holds beside its result, at most (its name, times, digests
#: and SQLite's record header), with a wide margin: the room a result leaves for them.
_ROW_OVERHEAD = 16 * 1024


async def load_inputs(
    records: dict[str, TaskRecord], tasks: Mapping[str, Task], pending: Any
) -> None:
    """Replace the StoredResults the pending tasks take as inputs with their values.

    Each is read from its own store (the one the graph was loaded from), in a thread,
    several at once where the store can, before any task starts.
    """
    by_store: dict[int, tuple[Store, dict[str, int]]] = {}
    for n in pending:
        for d in tasks[n].deps:
            placeholder = records[d].result
            if type(placeholder) is StoredResult:
                store = placeholder.store
                by_store.setdefault(id(store), (store, {}))[1][d] = placeholder.result_id
    if not by_store:
        return

    def load_all() -> dict[str, Any]:
        values: dict[str, Any] = {}
        with paused():  # many results at once (the inputs of 10k elements)
            for store, wanted in by_store.values():
                values.update(store.load_results(wanted))
        return values

    for d, value in (await in_thread_to_the_end(load_all)).items():
        r = records[d]
        records[d] = TaskRecord(
            r.status, value, r.error, r.traceback, r.attempts, r.started, r.finished
        )


#: The most of a failed task's error message, and of its traceback, that a row keeps.
#: Past it the text is cut (saying how much): an error is not a result, and a message
#: the store cannot hold must not stop the run. Far below SQLite's limit for a row.
MAX_ERROR_TEXT = 100_000


def _type_name(error: BaseException) -> str:
    name = getattr(error, "type_name", None)
    return name if isinstance(name, str) else type(error).__name__


def _message(error: BaseException) -> str:
    message = getattr(error, "message", None)
    return message if isinstance(message, str) else str(error)


def _text(text: str) -> str:
    """Error text as a row can hold it: at most MAX_ERROR_TEXT characters, and UTF-8
    (a lone surrogate, as ``os.fsdecode`` makes of a file name that is not UTF-8, is
    written as its escape: SQLite takes UTF-8 only)."""
    if len(text) > MAX_ERROR_TEXT:
        cut = len(text) - MAX_ERROR_TEXT
        text = f"{text[:MAX_ERROR_TEXT]}... [{cut:,} more characters not stored]"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class StoreSink:
    """The store's side of one run (a :class:`~asyncgraph._ledger.Sink`).

    Rows go to a writer thread (``RunWriter``) as tasks end; each commit is reported
    back to the ledger (``ledger.durable``), which sends the ``done`` events of the
    tasks it holds only then, so whoever listens never hears of a result that a crash
    could still lose (``ended`` returns True for a done task: its event waits). No
    back-reference to the run: a failed write ends it through ``on_error``. Results
    are serialized on the loop as each task ends, so a result that cannot be stored
    (or is too big for the store) fails its own task before anything downstream uses
    it. A CPU task's result is not serialized again: the worker's cloudpickle bytes
    come first (``pre_serialized``) and are stored as they are, format ``pickle``.

    Every task this run will run that the store says is done (a reset task and its
    descendants, one whose code or upstream changed) gets a ``pending`` row in the
    writer's first transaction, ahead of every row of a task that ran: its stale "done"
    is gone before any new result of the run is committed, so a crash at any later
    point cannot leave a descendant looking reusable next to its rerun upstream. Any
    other task that a crash interrupts is already due to run again next time (new,
    failed, skipped, cancelled), so it costs no write until it ends.

    The run's counts are those of its committed rows: the writer counts them as it
    commits (in the same transaction, for a store that takes ``counts``).
    """

    stores = True

    def __init__(self, store: Store, loaded: Loaded) -> None:
        from .sqlite import SQLiteStore

        self.store = store
        self.digests = loaded.digests
        self.stored = loaded.stored
        self.origin = loaded.graph._origin
        records = loaded.graph._records  # read only here (graph.records is a view)
        # counted in C: a resume's graph has 10k records, 99 % of them done
        self.reused = list(map(_STATUS, records.values())).count(State.DONE)
        # Elements loaded as done (counted above) that a family reuses again as it expands
        # are not counted twice.
        self.done_before: frozenset[str] = (
            frozenset(n for n, r in records.items() if r.status is State.DONE)
            if loaded.graph._dag.fans
            else frozenset()
        )
        self.blobs: dict[str, tuple[str, bytes]] = {}
        self.ready: dict[str, tuple[str, bytes]] = {}  # pre_serialized, until kept
        self.vouches: dict[str, int] = {}  # fan-out: see _vouch_later
        self.unstorable_errors: dict[str, UnstorableResultError] = {}
        self.writer: RunWriter | None = None
        self.run_id = 0
        self.error: BaseException | None = None
        self.counts: dict[State, int] = {}  # tasks ended, by state (committed or not)
        self.room: int | None = None  # the largest result the store takes, in bytes
        self.limit: int | None = None  # the store's own limit for a row
        sqlite = isinstance(store, SQLiteStore)
        self.limit_name = " (SQLite's SQLITE_LIMIT_LENGTH)" if sqlite else ""
        self.none_fits = True  # whether a None result fits the store (see open)
        # Result keys: consecutive from a random start, one C call per result (see
        # new_result_id: no key is handed out twice, in this process or another).
        self.ids = itertools.count((new_result_id() & _BASE_MASK) + 1)
        self.ledger: Ledger
        self.on_error: Callable[[BaseException], None]

    async def open(
        self, ledger: Ledger, pending: Sequence[str], on_error: Callable[[BaseException], None]
    ) -> None:
        """Load the stored results the pending tasks need, then record the run's start."""
        from .sqlite import SQLiteStore

        self.ledger = ledger
        self.on_error = on_error
        records = ledger.records
        tasks = ledger.graph._dag.tasks
        stored = self.stored
        invalidate = (
            [n for n in pending if (s := stored.get(n)) is not None and s.status is State.DONE]
            if stored
            else []
        )
        self.limit = await in_thread_to_the_end(self.store.result_size_limit)
        if self.limit is not None:
            # The row holds more than the result: its name, times, digests and
            # SQLite's record header; what the room leaves is far more than those.
            self.room = self.limit - _ROW_OVERHEAD
            self.none_fits = len(NONE_BLOB[1]) <= self.room
        # Done in the graph but not from the store (mark_done, create_graph(done=...), a
        # run without a store): recorded as done now, so the next run reuses them too.
        # Not the ones a run on this store recorded already (same outcome, same time).
        given = {}
        # The records whose result is not in the store, picked in C (a resume's 10k are
        # nearly all StoredResults), then those done among them.
        results = map(type, map(_RESULT, records.values())) if self.reused else iter(())
        for n in itertools.compress(records, map(operator.is_not, results, _STORED)):
            r = records[n]
            if r.status is not State.DONE:
                continue
            if n not in self.digests and not self._given_element(n, records, tasks):
                continue  # an element: its family's expansion decides
            s = stored.get(n)
            if (
                s is not None
                and s.status is State.DONE
                and s.fingerprint == self.digests[n][1]
                and r.finished is not None
                and s.finished == r.finished
            ):
                continue
            given[n] = blob = serialize(n, r.result, "was marked done with")
            self._check_size(n, blob, "was marked done with")
        if self.reused:  # a stored input is a done task's
            await load_inputs(records, tasks, pending)

        def begin() -> None:
            graph = ledger.graph
            store = self.store
            if isinstance(store, SQLiteStore):  # it records both in the run's first commit
                store._described = (graph.name, graph.topological_order())
                store._known = known_of(graph)  # and the digests, for the next load
            self.run_id = store.begin_run()  # kept even if we are cancelled meanwhile
            if isinstance(store, SQLiteStore) and store._described is None:
                return  # described by begin_run
            describe = getattr(store, "describe_run", None)  # a store's own (issue 16)
            if describe is not None:
                describe(self.run_id, graph.name, graph.topological_order())

        await in_thread_to_the_end(begin)
        # The resets first, then the tasks marked done: one transaction, before any row
        # of a task that runs (see the class's docstring).
        first = [
            self._row(n, TaskRecord(State.PENDING, attempts=records[n].attempts), None)
            for n in invalidate
        ]
        first += [self._row(n, records[n], blob) for n, blob in given.items()]
        self.writer = RunWriter(
            self.store,
            self.run_id,
            asyncio.get_running_loop(),
            self._committed,
            self._write_failed,
            first=first,
            first_counts={"tasks": len(records), "reused": self.reused},
        )

    def _given_element(
        self, name: str, records: Mapping[str, TaskRecord], tasks: Mapping[str, Task]
    ) -> bool:
        """Whether ``name``, an element done in the graph with a result not from the
        store (``mark_done``), is recorded as given now, as a static task would be: its
        family does not expand in this run (it is done), so no expansion will; it keeps
        the fingerprint the store has for it (its family is unchanged). Else its
        family's expansion decides (and records it, see ``Ledger.given``)."""
        task = tasks.get(name)
        family = None if task is None else task.family
        fam = None if family is None else records.get(family)
        s = self.stored.get(name)
        if fam is None or fam.status in (State.PENDING, State.RUNNING) or s is None:
            return False
        if s.fingerprint is None:
            return False
        self.digests[name] = (s.code or "", s.fingerprint)
        return True

    def expanded(self, template: Task, elements: Sequence[Task]) -> dict[str, TaskRecord]:
        """A family expanded: take its elements' fingerprints (by their items' content,
        see ``_fingerprint.element_fingerprint``) and return the records of those the
        store holds done with the same fingerprint (reused: their results stay there)."""
        digests = self.digests
        own = digests[template.name][0]
        binding = repr((template.args, template.kwargs, template.skip_none)).encode()
        over = template.over
        stored = self.stored
        reused: dict[str, TaskRecord] = {}
        first = [e for e in elements if isinstance(e, Element) and e.input is not None]
        if first:  # mapped over a task's result: by each item's content, in one batch
            parent = first[0].input
            assert parent is not None
            others = [digests[d][1] for d in first[0].deps if d != parent]
            fps = element_fingerprints(
                (own, binding),
                others,
                digests[parent][1],
                zip(
                    (e.at for e in first),
                    input_digests(e.value for e in first),
                    (e.index for e in first),
                    strict=True,
                ),
            )
            done, store, get = State.DONE, self.store, stored.get
            for el, fp in zip(first, fps, strict=True):
                name = el.name
                digests[name] = (own, fp)
                s = get(name)
                if (
                    s is not None
                    and s.status is done
                    and s.fingerprint == fp
                    and s.result_id is not None
                ):
                    reused[name] = reused_record(store, s, name)
        for e in elements:
            if isinstance(e, Element) and e.input is not None:
                continue  # above
            fp = elementwise_fingerprint(
                (own, repr((over, e.deps)).encode() + binding),
                [self._fingerprint_of(d) for d in e.deps],
            )
            digests[e.name] = (own, fp)
            s = stored.get(e.name)
            if (
                s is not None
                and s.status is State.DONE
                and s.fingerprint == fp
                and s.result_id is not None
            ):
                reused[e.name] = reused_record(self.store, s, e.name)
        before = self.done_before
        self.reused += sum(1 for n in reused if n not in before)
        self._gone(template, {e.name for e in elements})
        if reused:
            self._vouch_later(elements, reused)
        return reused

    def _vouch_later(self, elements: Sequence[Task], reused: Mapping[str, TaskRecord]) -> None:
        """Note the reusable elements whose rows are older than one of their inputs (a
        parent that ran in this run or since they were written, a counterpart noted):
        if the run keeps them, their rows are re-stamped with its id at its end
        (``vouch``), so the next load does not take them for stale."""
        tries = self.ledger.tries
        stored = self.stored
        vouches = self.vouches
        first = elements[0] if elements else None
        if isinstance(first, Element) and first.input is not None:
            # Mapped over a task's result: every element has the family's deps.
            deps = first.deps
            if any(d in tries or d in vouches for d in deps):
                newer = math.inf  # a dep ran in this run: every kept element
            else:
                newer = max((sd.run_id for d in deps if (sd := stored.get(d))), default=0)
            for n in reused:
                s = stored[n]
                if newer > s.run_id:
                    assert s.result_id is not None
                    vouches[n] = s.result_id
            return
        for e in elements:
            n = e.name
            if n not in reused:
                continue
            s = stored[n]
            for d in e.deps:
                sd = stored.get(d)
                if d in tries or d in vouches or (sd is not None and sd.run_id > s.run_id):
                    assert s.result_id is not None
                    vouches[n] = s.result_id
                    break

    async def _vouch(self) -> None:
        """Re-stamp the rows of the elements this run kept by content (see
        ``_vouch_later``) on a store that can (``SQLiteStore.vouch``): only those that
        ended the run done with their stored result, after every row of the run."""
        vouch = getattr(self.store, "vouch", None)  # SQLiteStore's (issue 13)
        if vouch is None or not self.vouches or self.error is not None:
            return
        records = self.ledger.records
        stored = self.stored
        kept = {}
        for n, result_id in self.vouches.items():
            rec = records.get(n)
            if rec is not None and rec.status is State.DONE and rec.finished == stored[n].finished:
                kept[n] = result_id
        if kept:
            await in_thread_to_the_end(vouch, self.run_id, kept)

    def _fingerprint_of(self, name: str) -> str:
        """A task's fingerprint in this run; for an element of a family done before the
        run (not expanded in it), the one it was stored with."""
        digest = self.digests.get(name)
        if digest is not None:
            return digest[1]
        s = self.stored.get(name)
        return "" if s is None or s.fingerprint is None else s.fingerprint

    def _gone(self, template: Task, now: set[str]) -> None:
        """Record the stored elements of ``template`` its parent no longer produces as
        gone (kept in the history; ``load`` and ``plan`` leave them out)."""
        if self.writer is None:
            return
        prefix = template.name + "["
        why = f"{template.over!r} no longer returns it"
        for n, s in self.stored.items():
            if n.startswith(prefix) and n not in now and s.error_type != GONE:
                row = self._row(n, TaskRecord(State.PENDING), None)
                self.writer.put(row._replace(error_type=GONE, error_message=why))

    def _row(self, name: str, rec: TaskRecord, blob: tuple[str, bytes] | None) -> TaskRow:
        error = rec.error
        own, fp = self.digests.get(name) or _NO_DIGEST
        if blob is None:
            result_id = fmt = data = None
        else:
            result_id = next(self.ids)
            fmt, data = blob
        # tuple.__new__: a NamedTuple's own __new__ is Python code, and this runs per task.
        row: TaskRow = tuple.__new__(
            TaskRow,
            (
                name,
                self.run_id,
                _VALUE_OF[rec.status],
                rec.attempts,
                rec.started,
                rec.finished,
                None if error is None else _text(_type_name(error)),
                None if error is None else _text(_message(error)),
                None if rec.traceback is None else _text(rec.traceback),
                fp,
                own,
                result_id,
                fmt,
                data,
            ),
        )
        return row

    def pre_serialized(self, name: str, blob: tuple[str, bytes]) -> None:
        self.ready[name] = blob

    def keep(self, name: str, value: Any) -> bool:
        """Serialize a result (or take the bytes it came as, see ``pre_serialized``);
        False (and the reason kept) if it cannot be stored."""
        ready = self.ready
        if value is None and not ready and self.none_fits:  # a task run for its effects
            self.blobs[name] = NONE_BLOB
            return True
        try:
            blob = (ready.pop(name, None) if ready else None) or serialize(name, value)
            self.blobs[name] = blob
            if self.room is not None and len(blob[1]) > self.room:
                self._check_size(name, blob, "returned")
        except UnstorableResultError as exc:
            self.blobs.pop(name, None)
            self.unstorable_errors[name] = exc
            return False
        return True

    def _check_size(self, name: str, blob: tuple[str, bytes], what: str) -> None:
        """Raise UnstorableResultError if a serialized result does not fit the store."""
        size = len(blob[1])
        if self.room is None or size <= self.room:
            return
        raise UnstorableResultError(
            f"task {name!r} {what} a result of {size:,} bytes ({blob[0]}), too big for store "
            f"{self.store}: a row there holds at most {self.limit:,} bytes{self.limit_name}, "
            "and the result needs room beside it for the task's record; write large "
            "data to a file and return its path, or run without a store"
        )

    def refused(self, name: str) -> BaseException:
        return self.unstorable_errors.pop(name)

    def ended(self, name: str, rec: TaskRecord) -> bool:
        """Queue the row; True (the ledger sends no event now) for a done task, whose
        event waits for its commit, and for every task before the run began."""
        writer = self.writer
        if writer is None:
            return True
        status = rec.status
        counts = self.counts
        counts[status] = counts.get(status, 0) + 1
        blob = self.blobs.pop(name, None)
        if status is _DONE and blob is not None and rec.error is None:
            # _row, inline for the common case: a task done with its result
            own, fp = self.digests.get(name) or _NO_DIGEST
            fmt, data = blob
            row: TaskRow = tuple.__new__(
                TaskRow,
                (
                    name,
                    self.run_id,
                    "done",
                    rec.attempts,
                    rec.started,
                    rec.finished,
                    None,
                    None,
                    None,
                    fp,
                    own,
                    next(self.ids),
                    fmt,
                    data,
                ),
            )
            writer.put(row)
            return True
        writer.put(self._row(name, rec, blob))
        return status is _DONE

    def _committed(self, rows: list[TaskRow]) -> None:
        self.ledger.durable((row[0], row[5]) for row in rows if row[2] == "done")

    def _write_failed(self, exc: BaseException) -> None:
        self.error = StoreError(
            f"writing to store {self.store} failed ({type(exc).__name__}: {exc}); the run "
            "was stopped, and what was committed before is kept"
        )
        self.error.__cause__ = exc
        self.on_error(self.error)

    async def close(self) -> None:
        """Commit what is queued and record how the run ended (called on every way out)."""
        unvouched: StoreError | None = None
        if self.writer is not None:
            await in_thread_to_the_end(self.writer.close)
            try:
                await self._vouch()
            except Exception as exc:  # noqa: BLE001 - raised once the run's end is recorded
                unvouched = StoreError(
                    f"re-stamping the elements this run kept in store {self.store} failed "
                    f"({type(exc).__name__}: {exc}); every result of the run is committed, "
                    "and the next run computes those elements again"
                )
                unvouched.__cause__ = exc
        if self.error is not None:
            self.ledger.lost(self.error)
        if self.run_id:
            records = self.ledger.records
            c = self.counts
            if self.error is not None:
                status = "failed"  # a write failed: the store stopped the run
            elif c.get(State.CANCELLED) or self.writer is None:
                status = "cancelled"  # also: cancelled before its first task started
            elif c.get(State.FAILED) or c.get(State.SKIPPED):
                status = "failed"
            else:
                status = "done"
            # What the store holds: the rows committed, not the tasks that ended (after
            # a failed write, the last ones never reached the store).
            committed = {} if self.writer is None else self.writer.committed
            counts = {"tasks": len(records), "reused": self.reused, **committed}
            try:
                await in_thread_to_the_end(self.store.end_run, self.run_id, status, counts)
            except Exception:
                if self.error is None:  # a failed write says more than this follow-up
                    raise
        if self.error is not None:
            raise self.error
        if unvouched is not None:
            raise unvouched


@contextlib.asynccontextmanager
async def hold(
    given: str | os.PathLike[str] | Store, graph: BaseGraph
) -> AsyncIterator[tuple[Store, Loaded]]:
    """The store of a run, held for its length, and ``graph`` as the store has it.

    The store is opened (from a path) or taken as given, checked against the graph's
    origin, then held: its lock is taken in a thread waited for to the end (a cancelled
    caller still knows whether it holds it) and released however the run ends. A store
    opened here is closed after, so SQLite folds its WAL file back into it (the run's
    StoredResults read it again if they are ever loaded); the caller's own store object
    is the caller's to close.
    """
    from .resume import check_origin, for_run
    from .sqlite import SQLiteStore, open_store

    graph.topological_order()  # a cycle is reported before the store is touched
    store = await in_thread_to_the_end(open_store, given)
    check_origin(graph, store)  # and a graph of another store, before it is held
    held = False

    def take() -> None:
        nonlocal held
        store.acquire()
        held = True  # set in the thread: a cancelled caller still knows to let go
        if isinstance(store, SQLiteStore):
            store._held_by_run = True  # its close() is refused until the run ends

    try:
        await in_thread_to_the_end(take)
        yield store, await in_thread_to_the_end(for_run, graph, store)
    finally:
        if held:
            store.release()  # the lock goes, and the run's connection
        if store is not given:
            store.close()
