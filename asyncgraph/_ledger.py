"""The ledger of one run: its records, and the one path out for events and store rows.

Every change to a task's record in a run happens here, and every event and store row
leaves from here: to the run's listener (``emit``, None when nobody listens) and to its
:class:`Sink` (the store's side of the run, or :class:`NullSink`). The run itself never
asks whether it has a store or a listener.

The rule for ``done``: with a store, a ``done`` event is sent only once the commit that
holds the task's result is reported back (:meth:`Ledger.durable`), so whoever listens
never hears of a result that a crash could still lose. The sink says so: its
``ended()`` returns True when it takes the event over.

State it keeps
    ``records[name]``     every task's record: the snapshot's own copy, the working set
                          of the run (the result is derived from it at the end);
    ``tries[name]``       attempts in this run, for each task that started;
    ``started_at[name]``  the start of its first attempt in this run;
    ``last_error[name]``  the error (and traceback) of the attempt before a retry;
    ``reported``          the tasks whose ``done`` event was sent after its commit;
    ``families``          fan-out: each template expanded (or failed to) in this run,
                          and its elements now: the result's Dag has these instead of
                          the elements it had before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._events import Emit, Event, EventKind
from ._exceptions import TaskCancelled
from ._fan import aggregate
from ._state import PENDING_RECORD, RecordBody, State, TaskRecord

if TYPE_CHECKING:
    from ._dag import Dag
    from ._graph import BaseGraph
    from ._task import Task

__all__ = ["Ledger", "NullSink", "Sink"]

# Events on the hot paths are built with tuple.__new__: a NamedTuple's own __new__ is
# Python code, and a watched run builds about three events per task.
_new = tuple.__new__
_QUEUED, _STARTED, _DONE = EventKind.QUEUED, EventKind.STARTED, EventKind.DONE
_SKIPPED, _CANCELLED = EventKind.SKIPPED, EventKind.CANCELLED
# A done record built with plain stores into a RecordBody, then retyped (see there): a
# run builds one per task. The fields are pinned here, so a field added to TaskRecord
# fails at import instead of leaving a slot unset.
assert TaskRecord.__slots__ == (
    "status",
    "result",
    "error",
    "traceback",
    "attempts",
    "started",
    "finished",
), "TaskRecord's fields changed: update the ledger's done record (and _fused's)"
_DONE_STATE = State.DONE
_EVENT_OF = {
    State.DONE: EventKind.DONE,
    State.FAILED: EventKind.FAILED,
    State.CANCELLED: EventKind.CANCELLED,
}


class Sink(Protocol):
    """Where a run's rows go (a store), and who confirms its ``done`` events."""

    #: False for a run without a store: the ledger then skips the sink on its hot paths.
    stores: bool
    #: What the run's result graph records as its origin (the store's key), or None.
    origin: str | None

    async def open(
        self, ledger: Ledger, pending: Sequence[str], on_error: Callable[[BaseException], None]
    ) -> None:
        """Before any task starts: load what the pending tasks need, begin the run.
        ``on_error`` ends the run (a write that failed later, say)."""
        ...

    def keep(self, name: str, value: Any) -> bool:
        """Take a done task's result; False if it cannot be stored (see ``refused``)."""
        ...

    def pre_serialized(self, name: str, blob: tuple[str, bytes]) -> None:
        """The next ``keep(name, ...)`` stores ``blob`` (format, data) as it is instead
        of serializing the value: a CPU task's result, as its worker pickled it."""
        ...

    def refused(self, name: str) -> BaseException:
        """Why ``keep(name, ...)`` said False (the error the task fails with)."""
        ...

    def ended(self, name: str, rec: TaskRecord) -> bool:
        """A task's final record of this run; True if the sink takes its event over."""
        ...

    async def close(self) -> None:
        """On every way out: commit what is queued and record how the run ended."""
        ...

    def expanded(self, template: Task, elements: Sequence[Task]) -> dict[str, TaskRecord]:
        """Fan-out: ``template`` expanded into ``elements``; the records of those whose
        results the sink holds already (reused, not run)."""
        ...


class NullSink:
    """The sink of a run without a store: it keeps nothing and defers nothing."""

    stores = False
    origin: str | None = None

    async def open(
        self, ledger: Ledger, pending: Sequence[str], on_error: Callable[[BaseException], None]
    ) -> None:
        return None

    def keep(self, name: str, value: Any) -> bool:
        return True

    def pre_serialized(self, name: str, blob: tuple[str, bytes]) -> None:
        return None

    def refused(self, name: str) -> BaseException:
        raise AssertionError("the null sink refuses nothing")

    def ended(self, name: str, rec: TaskRecord) -> bool:
        return False

    async def close(self) -> None:
        return None

    def expanded(self, template: Task, elements: Sequence[Task]) -> dict[str, TaskRecord]:
        return {}


class Ledger:
    """One run's records and attempts; sends its events and rows (on the loop's thread)."""

    def __init__(
        self,
        graph: BaseGraph,
        emit: Emit | None,
        sink: Sink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.graph = graph  # the run's snapshot: its tasks, and the result's base
        self.records: dict[str, TaskRecord] = graph._record_copy()
        self.emit = emit
        #: Where the per-task ``queued``, ``started`` and ``done`` events go: ``emit``,
        #: or None when the only listener is a progress bar that reads the run's counts
        #: instead (``_observe._Progress.follow``); the rest always go to ``emit``.
        self.hot = emit
        self.sink = sink
        self.stores = sink.stores
        self.now = clock
        self.tries: dict[str, int] = {}
        self.started_at: dict[str, float] = {}
        self.last_error: dict[str, tuple[BaseException, str | None]] = {}
        self.reported: set[str] = set()
        self.families: dict[str, list[Task]] = {}

    # -- before the tasks start ----------------------------------------------------------

    async def open(self, pending: Sequence[str], on_error: Callable[[BaseException], None]) -> None:
        """Open the sink (a store loads inputs and begins the run) before any task starts."""
        await self.sink.open(self, pending, on_error)

    async def close(self) -> None:
        """Close the sink (commit, record the run's end); on every way out of the run."""
        await self.sink.close()

    def skip(self, names: Iterable[str]) -> None:
        """Record tasks skipped from the start (an ancestor failed earlier)."""
        for n in names:
            self.records[n] = TaskRecord(status=State.SKIPPED)

    def write_skipped(self, names: Iterable[str]) -> None:
        # A run on a store records the tasks it skips from the start (an ancestor failed
        # and the graph was not reset), so the store says why they did not run.
        if self.stores:
            for n in names:
                self.sink.ended(n, self.records[n])

    def announce(self, pending: Iterable[str], skipped: Iterable[str]) -> None:
        """The first events: what this run is going to run, and what it skips."""
        emit = self.emit
        if emit is None:
            return
        now = self.now()
        hot = self.hot
        if hot is not None:
            for n in pending:
                hot(_new(Event, (_QUEUED, n, 0, now, None)))
        for n in skipped:
            emit(Event(_SKIPPED, n, 0, now))

    # -- attempts -----------------------------------------------------------------------

    def started(self, ready: Sequence[Task], now: float) -> None:
        """Attempts of ``ready`` begin. Running tasks keep their old record until they
        end: the frozen record is written once per task."""
        tries = self.tries
        emit = self.hot
        for task in ready:
            name = task.name
            if name in tries:
                tries[name] += 1
            else:
                tries[name] = 1
                self.started_at[name] = now
            if emit is not None:
                emit(_new(Event, (_STARTED, name, tries[name], now, None)))

    def began(self, name: str, when: float) -> None:
        """An executor began ``name``'s attempt at ``when``, by its own clock.

        The record (and stored row) is timed from its first attempt's start there, not
        from its dispatch, so a worker's start-up (a fresh interpreter: 100 ms and more)
        is not counted as the task's own time. The ``started`` event stays at the
        dispatch: the attempt began then, for whoever watches the run.
        """
        if self.tries.get(name) == 1:
            self.started_at[name] = min(max(when, self.started_at[name]), self.now())

    def pickled(self, name: str, data: bytes) -> None:
        """An executor's attempt of ``name`` is about to return a value it loaded from
        ``data`` (cloudpickle's bytes, a worker's): a store keeps those bytes as they
        are, with no second serialization on the loop (the sink's ``keep`` uses them)."""
        if self.stores:
            self.sink.pre_serialized(name, ("pickle", data))

    def done(self, name: str, value: Any, end: float) -> bool:
        """``name`` returned ``value``; False if the sink cannot keep it (see refused)."""
        stores = self.stores
        if stores and not self.sink.keep(name, value):
            return False
        records = self.records
        tries = self.tries[name]
        new: Any = RecordBody()  # TaskRecord(DONE, value, None, None, ...), faster
        new.status = _DONE_STATE
        new.result = value
        new.error = None
        new.traceback = None
        new.attempts = records[name].attempts + tries
        new.started = self.started_at[name]
        new.finished = end
        new.__class__ = TaskRecord
        records[name] = new
        if stores and self.sink.ended(name, new):
            return True  # its event waits for the commit (durable)
        emit = self.hot
        if emit is not None:
            emit(_new(Event, (_DONE, name, tries, end, None)))
        return True

    def refused(self, name: str) -> BaseException:
        return self.sink.refused(name)

    def retrying(self, name: str, error: BaseException, tb: str | None, when: float) -> None:
        self.last_error[name] = (error, tb)
        if self.emit is not None:
            self.emit(Event(EventKind.RETRYING, name, self.tries[name], when, error))

    def ended(
        self, name: str, status: State, error: BaseException, tb: str | None, end: float
    ) -> None:
        """The final record of a task that ran (or tried to) in this run: failed or
        cancelled."""
        rec = self.records[name]
        tries = self.tries[name]
        new = self.records[name] = TaskRecord(
            status, None, error, tb, rec.attempts + tries, self.started_at[name], end
        )
        if self.stores and self.sink.ended(name, new):
            return
        if self.emit is not None:
            self.emit(_new(Event, (_EVENT_OF[status], name, tries, end, error)))

    def skipped(self, names: Iterable[str], when: float) -> None:
        """Descendants of a failed task: skipped (a family with a failed element: failed,
        with a cancelled one: cancelled, as its aggregate status says, with no error of
        its own)."""
        families = self.families
        for name in names:
            status = State.SKIPPED
            if families and name in families:
                records = self.records
                statuses = {records[e.name].status for e in families[name]}
                if State.FAILED in statuses:
                    status = State.FAILED
                elif State.CANCELLED in statuses:  # an element cancelled by name
                    status = State.CANCELLED
            self.records[name] = rec = TaskRecord(status)
            if self.stores:
                self.sink.ended(name, rec)
            if self.emit is not None:
                # A family's own event stays "skipped": its failed element has its own.
                self.emit(Event(_SKIPPED, name, 0, when))

    def cancel(
        self,
        running: Iterable[str],
        rest: Iterable[str],
        reason: str,
        abandoned: set[str],
        cancel_grace: float,
        began: Mapping[str, tuple[float | None, str]] | None = None,
    ) -> None:
        """Record every task that has not ended as cancelled, with ``reason``.
        ``began``: tasks of ``rest`` that began elsewhere all the same (sent ahead to a
        cluster), with when they were sent (None: not known whether they began) and
        what the record adds to its reason."""
        now = self.now()
        for n in running:
            if n in abandoned:
                why = TaskCancelled(
                    f"task {n!r} was cancelled: {reason}; it did not end within "
                    f"cancel_grace={cancel_grace}s and was abandoned"
                )
            else:
                why = TaskCancelled(f"task {n!r} was cancelled: {reason}")
            self.ended(n, State.CANCELLED, why, None, now)
        for n in rest:
            if n in self.tries:  # waiting out a retry's backoff
                error, _ = self.last_error[n]
                why = TaskCancelled(
                    f"task {n!r} was cancelled while waiting to retry after "
                    f"{type(error).__name__}: {error}; {reason}"
                )
                self.ended(n, State.CANCELLED, why, None, now)
                continue
            rec = self.records[n]
            elsewhere = began.get(n) if began else None
            if elsewhere is None:
                why = TaskCancelled(f"task {n!r} did not start: {reason}")
                new = TaskRecord(
                    State.CANCELLED, None, why, None, rec.attempts, rec.started, rec.finished
                )
            else:
                at, how = elsewhere
                why = TaskCancelled(f"task {n!r} was cancelled: {reason}; {how}")
                if at is None:  # not known whether it began
                    new = TaskRecord(State.CANCELLED, None, why, None, rec.attempts)
                else:
                    new = TaskRecord(State.CANCELLED, None, why, None, rec.attempts + 1, at, now)
            self.records[n] = new
            if self.stores and self.sink.ended(n, new):
                continue
            if self.emit is not None:
                self.emit(Event(_CANCELLED, n, 0, now, why))

    # -- fan-out -----------------------------------------------------------------------

    def expanded(
        self, template: str, elements: Sequence[Task], kept: Mapping[str, TaskRecord]
    ) -> list[str]:
        """``template`` became a family of ``elements``: their records (``kept``: those
        that stay as they were), in place of the family it had; return the elements to
        run, each announced with a ``queued`` event."""
        records = self.records
        old = self.families.get(template)
        if old is None:
            old_names: Iterable[str] = self.graph._dag.families().get(template, ())
        else:
            old_names = [t.name for t in old]
        for n in old_names:
            records.pop(n, None)
        self.families[template] = list(elements)
        run = []
        for e in elements:
            n = e.name
            rec = kept.get(n)
            if rec is None:
                records[n] = PENDING_RECORD
                run.append(n)
            else:
                records[n] = rec
        emit = self.emit
        if emit is not None and run:
            now = self.now()
            for n in run:
                emit(_new(Event, (_QUEUED, n, 0, now, None)))
        return run

    def reusable(self, template: Task, elements: Sequence[Task]) -> dict[str, TaskRecord]:
        """The elements whose results the store holds for their fingerprints (a run
        without a store: none)."""
        if not self.stores:
            return {}
        return self.sink.expanded(template, elements)

    def given(self, name: str, rec: TaskRecord) -> bool:
        """A done element kept from before the run, its result in memory: recorded in the
        store too (False if it cannot be), so the next run reuses it."""
        if not self.stores:
            return True
        if not self.sink.keep(name, rec.result):
            return False
        self.sink.ended(name, rec)
        return True

    def family_done(self, template: str, value: Any, began: float | None, end: float) -> bool:
        """``template``'s family is done and ``value`` is the collected result; False if
        the sink cannot keep it (see ``refused``)."""
        if self.stores and not self.sink.keep(template, value):
            return False
        rec = self.records[template]
        self.tries[template] = 0
        self.started_at[template] = end if began is None else began
        new = self.records[template] = TaskRecord(
            State.DONE, value, None, None, rec.attempts, self.started_at[template], end
        )
        if self.stores and self.sink.ended(template, new):
            return True
        if self.emit is not None:
            self.emit(_new(Event, (_DONE, template, 0, end, None)))
        return True

    def template_failed(
        self, template: str, error: BaseException, tb: str | None, when: float
    ) -> None:
        """``template`` could not be expanded (or its family's result kept): failed."""
        self.families.setdefault(template, [])
        rec = self.records[template]
        new = self.records[template] = TaskRecord(
            State.FAILED, None, error, tb, rec.attempts, when, when
        )
        if self.stores and self.sink.ended(template, new):
            return
        if self.emit is not None:
            self.emit(Event(EventKind.FAILED, template, 0, when, error))

    # -- from the sink -------------------------------------------------------------------

    def durable(self, done: Iterable[tuple[str, float | None]]) -> None:
        """The sink committed these done tasks' rows: (name, finished). Their ``done``
        events go now (not for tasks marked done before the run: they did not run)."""
        emit = self.emit
        if emit is None:
            return
        tries = self.tries
        reported = self.reported
        for name, finished in done:
            if name in tries:
                reported.add(name)
                emit(_new(Event, (_DONE, name, tries[name], finished or 0.0, None)))

    def lost(self, error: BaseException) -> None:
        """A write failed: tasks that ended done but were never committed get their
        terminal event now, a failed one, since their result is not durable."""
        if self.emit is None:
            return
        now = self.now()
        records = self.records
        for name, tries in self.tries.items():
            rec = records.get(name)
            if rec is not None and rec.status is State.DONE and name not in self.reported:
                self.emit(Event(EventKind.FAILED, name, tries, now, error))

    # -- reading --------------------------------------------------------------------------

    def snapshot(self) -> BaseGraph:
        """The Graph as it stands: every record so far (the run's result, at its end)."""
        origin = self.sink.origin
        records: Mapping[str, TaskRecord] = self.records
        if self.families:
            records = families_settled(self.graph, self.families, records)
        if origin is None:
            out = self.graph._derive(records)
        else:
            out = self.graph._derive(records, origin=origin)
        if self.families:
            return out._with_dag(with_families(self.graph._dag, self.families), records)
        return out

    def result(self, name: str) -> Any:
        """A done task's result."""
        return self.records[name].result


def with_families(dag: Dag, families: Mapping[str, Sequence[Task]]) -> Dag:
    """``dag`` with each template's elements replaced by those of ``families``."""
    old = dag.families()
    drop = [m for t in families for m in old.get(t, ())]
    return dag.with_elements(drop, [e for els in families.values() for e in els])


def families_settled(
    graph: BaseGraph, families: Mapping[str, Sequence[Task]], records: Mapping[str, TaskRecord]
) -> dict[str, TaskRecord]:
    """The records with each expanded template's status the aggregate of its elements'
    (unless it is done or failed on its own), and the elements of a template that was
    skipped or cancelled before it expanded taking its status."""
    out = dict(records)
    for template, elements in families.items():
        rec = out[template]
        if not elements or rec.status is State.DONE or rec.error is not None:
            continue  # done, or failed on its own (its error says why)
        status = aggregate(out[e.name].status for e in elements)
        if status is State.DONE:  # the run stopped between the last element and it
            status = State.PENDING
        if status is not rec.status:
            out[template] = TaskRecord(
                status, None, rec.error, rec.traceback, rec.attempts, rec.started, rec.finished
            )
    for template, members in graph._dag.families().items():
        if template in families:
            continue
        st = out[template].status
        if st is State.SKIPPED or st is State.CANCELLED:
            for m in members:
                if not out[m].status.is_terminal:
                    out[m] = TaskRecord(st)
    return out
