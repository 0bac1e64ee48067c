"""The async runner: ``_Run``, one run of one graph. It owns every task of the run.

``run()`` and its kin build one and run it (``_lifetime``, ``_sync``, ``_open_run``).

The runner is the "caller" of the synchronous :class:`~asyncgraph._scheduler.Scheduler`:
it starts what ``get_ready()`` hands out, each attempt through the executor of its lane
(:mod:`asyncgraph._executors`), in an asyncio task of the run's own task set
(:mod:`asyncgraph._taskset`, which says why not an anyio task group); every record,
event and store row goes through its ledger (:mod:`asyncgraph._ledger`). Each child's
done-callback applies its outcome and starts what became ready; the run itself awaits
one future that the last outcome resolves. A completion is what moves the run; nothing
ever sleeps and checks.
Every change to the scheduler and to the records happens in those callbacks, on the
loop's thread, one at a time, so there is no locking. No child outlives the run,
however it ends.

Per-run resources (the executors' process pool and threads) are created by the run and
closed by it, under a shield, whatever way the run ends. Before that, a run that returns
its graph has each executor ``settle``: results it left elsewhere (on a Dask cluster)
come into the records, so the graph holds values.

State it keeps
    A ``_Run`` is a record of collaborators, each keeping its own state (see their
    modules): ``core`` (the Scheduler), ``ledger`` (records, attempts, events, rows),
    ``executors`` by lane, ``children`` (the task set and its retry timers) and
    ``clock``; of its own, only ``failure`` (the task that ended a fail_fast run) and
    ``fatal`` (a task's KeyboardInterrupt or SystemExit, raised once the run is over).
"""

from __future__ import annotations

import asyncio
import functools
import operator
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from . import _fan
from ._clock import SYSTEM_CLOCK, Clock
from ._clock import backoff as _backoff
from ._events import Emit
from ._exceptions import (
    InvalidTaskError,
    MissingResultError,
    TaskCancelled,
    UnpicklingError,
    UnstorableResultError,
)
from ._executors import Executor, default_executors
from ._executors.base import Outcome, cancelled_from_inside, failed, route, traceback_of
from ._fused import fused
from ._graph import BaseGraph
from ._ledger import Ledger, NullSink, Sink
from ._nogc import paused
from ._observe import _Progress
from ._options import STOPPED_BY as _STOPPED_BY
from ._options import RunOptions
from ._scheduler import Lane, Scheduler, fresh_start, survey, unit_paths
from ._shield import in_thread_to_the_end
from ._shield import wait_to_the_end as _to_the_end
from ._state import NO_RESULT, ResultRef, State, StoredResult, TaskRecord
from ._task import Task
from ._taskset import TaskSet

__all__: list[str] = []  # package-internal: _Run is for _lifetime and the tests

_SKIPPED = TaskRecord(State.SKIPPED)
_ALL_PENDING = {State.PENDING}
_status_of = operator.attrgetter("status")

#: The reason a task cancelled by name gives (``OpenRun.cancel(name)``).
_BY_NAME = "r.cancel({!r}) was called on its open run; the rest of the run went on"


class _Requeue(NamedTuple):
    """A retry's backoff delay has passed."""

    name: str


class _CancelOne(NamedTuple):
    """A running task the caller cancelled by name (``OpenRun.cancel(name)``) ended."""

    name: str


class _InputsIn(NamedTuple):
    """The stored results ``deps`` that elements ``held`` take are in memory."""

    held: tuple[str, ...]
    deps: tuple[str, ...]


class _Fetched(NamedTuple):
    """The stored results a template's expansion or collection reads are in memory
    (read in a thread, see ``_Run._fetch``): it can expand or collect now."""

    name: str


#: A dispatch that starts this many tasks or more pauses the cycle collector (_dispatch).
_MANY = 64


class _Run:
    """One run of one graph: the caller of the Scheduler. Everything on the loop's thread.

    State it keeps
        core       the Scheduler: what may start, what is running
        ledger     records, attempts, the one path for events and store rows
        executors  the executors, in lane order (loop, threads, processes), and
                   ``route``: which one runs each kind of task
        children   the run's own task set: its asyncio tasks (no child outlives the
                   run) and its retry timers, by task name
        clock      wall time, timers and time limits; ``uniform``: the backoff jitter
        failure    the task that ended a fail_fast run; ``fatal``: a task's
                   KeyboardInterrupt/SystemExit, raised when the run is over
        fan-out    only for a graph with a mapped task (see ``_fan_out``): each
                   family's keys and shape this run, when it expanded, the templates
                   over each template, the elements the graph had before the run,
                   those kept failed (their families end at once) and those reused
                   by content from the store
        cancelled_by_name  running tasks ``cancel_task`` cancelled (OpenRun.cancel(name)):
                   their cancellation is recorded, not taken for one from inside
    """

    #: Whether a run may take the fused path (see _fused); the tests turn it off to
    #: hold the two ways against each other.
    fuse = True

    def __init__(
        self,
        graph: BaseGraph,
        options: RunOptions,
        *,
        emit: Emit | None = None,
        weights: Mapping[str, float] | None = None,
        executors: Sequence[Executor] | None = None,
        sink: Sink | None = None,
        bar: _Progress | None = None,
    ) -> None:
        clock: Clock = options.clock or SYSTEM_CLOCK
        rng = options.rng
        max_io, cpu_workers, limits = options.max_io, options.cpu_workers, options.limits
        fail_fast, deadline = options.fail_fast, options.deadline
        cancel_grace = options.cancel_grace
        # The run works on a snapshot: a task added to the caller's graph while this run
        # goes on must not appear in its result without a record. The snapshot shares
        # the (now frozen) Dag, whose caches serve the caller's next run too.
        graph = graph._derive()
        dag = graph._dag
        order = dag.topological_order()  # raises CycleError / MissingDependencyError
        fans = dag.fans
        if fans:  # elements run only when their template expands (see _fan_out)
            dag = dag.static()
            order = dag.topological_order()
        self.tasks: Mapping[str, Task] = dag.tasks
        self.fail_fast = fail_fast
        self.deadline = deadline
        self.cancel_grace = cancel_grace
        self.clock = clock
        self.now = clock.time
        self.uniform = (rng or random.Random()).uniform  # the backoff's jitter
        self.ledger = ledger = Ledger(graph, emit, sink or NullSink(), clock.time)
        if executors is None:
            if options.backend is None:
                executors = default_executors(max_io, cpu_workers, clock, ledger.pickled)
            else:
                executors = options.backend.executors(
                    max_io=max_io, cpu_workers=cpu_workers, clock=clock, pickled=ledger.pickled
                )
        self.executors = executors
        self.route, lanes = route(self.executors)
        # The fused path (_fused) for a run with no fan-out, named limits or store.
        self._fusable = self.fuse and not fans and not limits and not ledger.stores
        found = survey(dag)  # the tasks' kinds, resources, in-degrees: one pass per Dag
        self.core = Scheduler(
            self.tasks,
            order,
            limits=limits,
            children=dag.child_map(),
            # computed when first needed, and only without weights (a resume on a
            # store has its own)
            unit_paths=functools.partial(unit_paths, dag) if weights is None else None,
            weights=weights,
            lanes=[Lane(*lane) for lane in lanes],
            survey=found,
            lazy_keys=self._fusable,
        )
        records = ledger.records
        if fans:
            self.core.prepare({n: records[n].status for n in order})
        elif set(map(_status_of, records.values())) == _ALL_PENDING:
            self.core.prepare_fresh(fresh_start(dag))  # every task runs
        else:
            self.core.prepare({n: r.status for n, r in records.items()})
        ledger.skip(self.core.initially_skipped)
        # Check that every task can go where it runs before anything starts (a CPU
        # task's function pickles, and names no module a worker could not import):
        # an executor that serves no kind of task this graph has is given none to check
        # (a pass over 100k tasks that are not its own costs more than the rest of the
        # set-up).
        pending = self.core.pending()
        table = self.route
        used = {id(ex) for pair in table.values() for ex in pair}
        serving = {id(table[kind][is_async]) for kind, is_async in found.kinds}
        for ex in self.executors:
            if id(ex) in used:
                ex.check(self.tasks, pending if id(ex) in serving else ())
            later = getattr(ex, "values_at_end", None)  # it may leave results remote:
            if later is not None:  # _cleanup settles them
                later()
        self.children = TaskSet(cancel_grace)
        if bar is not None and not fans and not ledger.stores:
            # The run's only listener is a progress bar: it reads the counts (on a loop
            # timer) instead of three events a task (see _Progress.follow).
            ledger.hot = None
            running = self.children.running
            bar.follow(
                self.core.left(),
                len(self.core.initially_skipped),
                self.core.left,
                running.values,
            )
        # Bound once: the dispatch hands these to every child, and a bound method
        # made per dispatch is an allocation per task on a chain.
        self._began = ledger.began
        self._on_done: Callable[[asyncio.Future[Any]], None] = self._child_done
        # kind -> (plain, coroutine) executors' ``start``, bound once for the same reason.
        self._starts = {k: (pair[0].start, pair[1].start) for k, pair in self.route.items()}
        # Starts what the scheduler hands out: _start, or the fused path's (see run()).
        self._launch: Callable[[list[Task]], None] = self._start
        self._plain = found.plain
        self.failure: str | None = None  # the task that ended a fail_fast run
        self.fatal: BaseException | None = None  # a task's KeyboardInterrupt/SystemExit
        self.cancelled_by_name: set[str] = set()  # running tasks cancel_task() cancelled
        # Fan-out (see _fan_out): only a run whose graph has a mapped task uses these.
        self._fanned = False
        self._keys: dict[str, list[str]] = {}  # template -> its element keys, this run
        self._shape: dict[str, tuple[bool, list[Any]]] = {}  # mapped a Mapping; its keys
        self._began_at: dict[str, float] = {}  # template -> when it expanded
        self._over_me: dict[str, list[str]] = {}  # template -> templates over it
        self._old_elements: frozenset[str] = frozenset()
        self._bad: set[str] = set()  # elements kept failed or skipped from before
        self._refreshed: set[str] = set()  # elements reused by content in this run
        self._static_names: Mapping[str, Task] = {}
        self._cancel_on_expand: set[str] = set()  # elements cancelled before they exist
        self._fetching: set[str] = set()  # templates whose stored inputs a thread reads
        self._held: dict[str, Task | None] = {}  # elements waiting for those (and, once
        self._released: list[Task] = []  # handed out, their tasks); those free to start
        if fans:
            self._static_names = dag.tasks
            full = graph._dag
            self._old_elements = frozenset(
                m for members in full.families().values() for m in members
            )
            for t in dag.tasks.values():
                if t.over is not None and t.over in dag.tasks and dag.tasks[t.over].over:
                    if t.key is not None:
                        raise InvalidTaskError(
                            t.name,
                            f"key= has no use over a mapped task: its elements take the "
                            f"keys of {t.over!r}'s ({t.name}[k] for {t.over}[k]); remove key=",
                        )
                    self._over_me.setdefault(t.over, []).append(t.name)

    # -- the children ------------------------------------------------------------------
    #
    # Each task runs in an asyncio task owned by this run (``self.children``, see
    # _taskset for why not an anyio task group); it reports back through
    # ``_child_done``, a done-callback, which applies the outcome at once (``_post``).

    def _post(self, message: Outcome | _Requeue | _CancelOne | _Fetched | _InputsIn) -> None:
        """Apply a child's report at once and start what it made ready.

        Called from done-callbacks and timers, so on the loop's thread and never
        concurrently with anything else here: no locking, and no extra trip through the
        loop to wake a coordinator (a chain of tasks costs what a hand-written runner
        costs). Once the run is stopping, reports only queue up for ``_close``.
        """
        if self.children.stopping:
            self.children.inbox.append(message)
            return
        try:
            self._apply(message)
            self._continue()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting run
            # A bug here, or a task's KeyboardInterrupt: a callback must not swallow it
            # (the loop would only log it and the run would wait forever).
            self.children.end(exc)

    def _continue(self) -> None:
        """After an outcome: start what became ready, or end the run if nothing is left
        (or a fail_fast failure ends it)."""
        if self.failure is None and self.core.is_active():
            self._dispatch()
        else:
            self.children.end(None)

    def _child_done(self, child: asyncio.Future[Any]) -> None:
        children = self.children
        name = children.running.pop(child)
        if child.cancelled() or child.exception() is not None:
            self._child_ended_badly(name, child)
            return
        value = child.result()
        if children.stopping:
            children.inbox.append(Outcome(name, True, value, None, self.now()))
            return
        # The common case, fused (no Outcome, no _post/_apply hop): it runs once per
        # task, and each Python call here is a measurable share of a no-op task.
        try:
            if not self.ledger.done(name, value, self.now()):
                self._post(self._refused(name))
                return
            core = self.core
            if self.failure is not None:  # a fail_fast run is ending: start nothing
                core.done(name)
                children.end(None)
                return
            ready = core.done_ready(name)  # done(name), then get_ready()
            if core.expanding:
                ready = self._fan_out(ready)
            if self._held or self._released:  # fan-out: inputs still in the store
                ready = self._hold(ready)
            if ready:
                self._start(ready)
            elif not core.is_active():
                children.end(None)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting run
            children.end(error)

    def _child_ended_badly(self, name: str, child: asyncio.Future[Any]) -> None:
        """A child that was cancelled or raised (``_child_done``'s other cases)."""
        children = self.children
        if child.cancelled():
            if children.stopping:
                return  # the run cancelled it; _close() records it
            if name in self.cancelled_by_name:  # cancel_task(name): the rest goes on
                self._post(_CancelOne(name))
                return
            # The task cancelled itself:
            #     async def t(): raise asyncio.CancelledError
            # nobody else will report it, so it fails (a retry may still follow).
            self._post(cancelled_from_inside(name, self.now()))
            return
        exc = child.exception()
        assert exc is not None
        self._post(failed(name, exc, self.now()))

    def _refused(self, name: str) -> Outcome:
        """The outcome of a task whose result the store cannot keep: it fails."""
        exc = self.ledger.refused(name)
        return Outcome(name, False, exc, traceback_of(exc), self.now())

    # -- the loop ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        ready = self.core.get_ready()
        if self.core.expanding:
            ready = self._fan_out(ready)
        if self._held or self._released:  # fan-out: inputs still in the store
            ready = self._hold(ready)
        if len(ready) >= _MANY:
            # Many starts at once (a wide graph's roots): each makes a Task, a coroutine
            # and the run's entries, all kept alive, so the cycle collector would walk
            # them again and again while they are made (for 100k roots, most of the
            # dispatch). No user code runs here but a listener's on_event.
            with paused():
                self._launch(ready)
        elif ready:
            self._launch(ready)

    def _start(self, ready: list[Task]) -> None:
        """Start ``ready`` (handed out by the core): each attempt through its executor."""
        ledger = self.ledger
        ledger.started(ready, self.now())
        records = ledger.records
        children = self.children.running
        starts = self._starts
        began = self._began
        done = self._on_done
        for task in ready:
            child: asyncio.Future[Any]
            if task.deps:
                try:
                    args, kwargs = task.bind(records)
                except MissingResultError as exc:  # a dependency marked done without one
                    child = asyncio.get_running_loop().create_future()
                    child.set_exception(exc)
                    children[child] = task.name
                    child.add_done_callback(done)
                    continue
            else:
                args, kwargs = [], {}
            child = starts[task.kind][task.is_async](task, args, kwargs, began)
            children[child] = task.name
            child.add_done_callback(done)

    # -- fan-out -------------------------------------------------------------------------

    def _fan_out(self, ready: list[Task]) -> list[Task]:
        """Expand the templates that came up in line, collect the families that are
        done, and return ``ready`` with what that made ready (see :mod:`._fan`)."""
        core = self.core
        with paused():  # a family of 10k builds 10k elements and records at once
            ready = self._fan_out_all(ready)
        if not ready and not core.is_active():
            self.children.end(None)
        return ready

    def _fan_out_all(self, ready: list[Task]) -> list[Task]:
        core = self.core
        while core.expanding:
            names, core.expanding = core.expanding, []
            for t in names:
                if self._fetch(t):  # its stored inputs are read in a thread first
                    continue
                if core.is_expanded(t):
                    if core.waits(t):  # else its family ended with a failed element
                        self._collect(t)
                else:
                    self._expand(t)
            ready = [*ready, *core.get_ready()]  # not in place: the core's may be shared
        return ready

    def _own_tasks(self) -> dict[str, Task]:
        tasks = self.tasks
        if not isinstance(tasks, dict) or not self._fanned:
            tasks = self.tasks = dict(tasks)
            self._fanned = True
        return tasks

    def _expand(self, template: str) -> None:
        task = self.tasks[template]
        records = self.ledger.records
        over = task.over
        assert over is not None
        try:
            parent = self.tasks[over]
            if parent.over is not None:  # over a template: element-wise
                if over in self._keys:
                    keys = self._keys[over]
                    mapping, originals = self._shape[over]
                else:  # its family is done from before: its keys are in the Dag
                    keys, mapping, originals = self._old_family_keys(over)
                found = _fan.Items(keys, [], mapping, originals)
                elements: list[Task] = list(_fan.elementwise(task, keys))
            else:
                value = records[over].result
                if isinstance(value, ResultRef):
                    value = value.load()
                found = _fan.items(task, value)
                elements = list(_fan.elements(task, found))
            self._check_element_names(template, elements)
        except Exception as exc:  # noqa: BLE001 - the template fails, not the run
            now = self.now()
            self.ledger.expanded(template, [], {})
            self.ledger.template_failed(template, exc, traceback_of(exc), now)
            self.ledger.skipped(self.core.fail_template(template), now)
            if self.fail_fast and self.failure is None:
                self.failure = template
            return
        self._register(template, elements, found)

    def _register(self, template: str, elements: list[Task], found: _fan.Items) -> None:
        """The family of ``template`` is ``elements``: tell the ledger and the core, then
        expand the templates over it (element-wise) that wait in the core too. A family
        with an element that stays failed (or skipped) is ended at once: its reducers
        are skipped, as below any failed task."""
        doomed: list[str] = []
        self._register_chain(template, elements, found, doomed)
        now = self.now()
        for t in doomed:
            if self.core.waits(t):
                self.ledger.skipped([t, *self.core.fail_template(t)], now)
        if self._cancel_on_expand:
            self._cancel_expanded()

    def _register_chain(
        self, template: str, elements: list[Task], found: _fan.Items, doomed: list[str]
    ) -> None:
        ledger = self.ledger
        old = ledger.records
        tasks = self._own_tasks()
        for e in elements:
            tasks[e.name] = e
        reusable = ledger.reusable(tasks[template], elements)  # by content (a store)
        kept: dict[str, TaskRecord] = {}
        done: set[str] = set()
        ran = ledger.tries
        bad = self._bad
        stores = ledger.stores
        fresh = not (reusable or bad or self._old_elements)  # a first expansion: all run
        # An item's content vouches for the mapped input only: an element whose other
        # dependency ran in this run (reset, or failed last time), or whose counterpart
        # did (element-wise), takes that one's new result, which its fingerprint (code,
        # not data) cannot tell from the old one: it runs.
        t = tasks[template]
        others_ran = any(d in ran for d in t.deps if d != t.over)
        wise = t.over is not None and tasks[t.over].over is not None
        for e in () if fresh else elements:
            n = e.name
            rec = old.get(n)
            if any(d in bad for d in e.deps):  # below an element that stays failed
                kept[n] = rec if rec is not None and rec.status is State.SKIPPED else _SKIPPED
                bad.add(n)
            elif (
                n in reusable
                and not others_ran
                and not (wise and any(d in ran for d in e.deps))
                # not an element the caller sent back to pending (reset) on its inputs
                and (
                    rec is None
                    or rec.status is State.DONE
                    or n not in self._old_elements
                    or any(d in ran or d in self._refreshed for d in e.deps)
                )
            ):
                kept[n] = reusable[n]
                done.add(n)
                self._refreshed.add(n)
            elif (
                rec is not None
                and rec.status.is_terminal
                and n in self._old_elements
                and not any(d in ran for d in e.deps)
            ):
                # It ended before, on the same inputs: as a static task would, it
                # keeps its record (with a store, a done one only if it is stored with
                # this fingerprint, or was given a result since: mark_done).
                if rec.status is not State.DONE:
                    kept[n] = rec
                    bad.add(n)
                elif not stores or (not isinstance(rec.result, ResultRef) and ledger.given(n, rec)):
                    kept[n] = rec
                    done.add(n)
        if len(done) != len(kept):
            doomed.append(template)
        self._keys[template] = found.keys
        self._shape[template] = (found.mapping, found.originals)
        self._began_at[template] = self.now()
        ledger.expanded(template, elements, kept)
        self.core.expand(template, elements, kept)
        if stores:
            self._load_refs(e for e in elements if e.name not in kept)
        for child in self._over_me.get(template, ()):
            if self.core.waits(child) and not self.core.is_expanded(child):
                ctask = tasks[child]
                children: list[Task] = list(_fan.elementwise(ctask, found.keys))
                self._register_chain(child, children, found, doomed)

    def _load_refs(self, pending: Iterable[Task]) -> None:
        """Load the stored results pending elements take from reused elements (their
        element-wise parents), before they start: those still in the store are read in
        a thread, and the elements that take them are held until they are in (see
        ``_hold``)."""
        pending = list(pending)
        records = self.ledger.records
        unread = {
            d
            for e in pending
            for d in e.deps
            if type(ref := records[d].result) is StoredResult and not ref.loaded
        }
        if unread:
            held = [e.name for e in pending if not unread.isdisjoint(e.deps)]
            for n in held:
                self._held[n] = None
            refs = [records[d].result for d in unread]
            child = asyncio.get_running_loop().create_task(self._read_stored(refs))
            self.children.running[child] = f"<the stored inputs of {held[0]!r}>"
            child.add_done_callback(functools.partial(self._inputs_in, held, unread))
        self._load_refs_of({d for e in pending for d in e.deps if d not in unread})

    def _inputs_in(self, held: list[str], deps: set[str], child: asyncio.Future[Any]) -> None:
        self.children.running.pop(child, None)
        if child.cancelled() or self.children.stopping:
            return
        child.exception()  # seen: a failed read is read again (and reported) on the loop
        self._post(_InputsIn(tuple(held), tuple(deps)))

    def _hold(self, ready: list[Task]) -> list[Task]:
        """``ready`` without the elements whose stored inputs a thread still reads
        (they start once those are in), with those whose inputs came in since."""
        out, self._released = self._released, []
        held = self._held
        for t in ready:
            if t.name in held:
                held[t.name] = t
            else:
                out.append(t)
        return out

    def _load_refs_of(self, names: Iterable[str]) -> None:
        """Replace the stored results of ``names`` in the records by their values, one
        query per store (a family of reused elements is collected)."""
        records = self.ledger.records
        by_store: dict[int, tuple[Any, dict[str, int]]] = {}
        for n in names:
            ref = records[n].result
            if type(ref) is StoredResult and not ref.loaded:  # else read in a thread (_fetch)
                by_store.setdefault(id(ref.store), (ref.store, {}))[1][n] = ref.result_id
            elif isinstance(ref, ResultRef):
                by_store.setdefault(0, (None, {}))[1][n] = 0
        for store, wanted in by_store.values():
            if store is None:
                values = {n: records[n].result.load() for n in wanted}
            else:
                values = store.load_results(wanted)
            for n, v in values.items():
                r = records[n]
                records[n] = TaskRecord(
                    r.status, v, r.error, r.traceback, r.attempts, r.started, r.finished
                )

    # -- store reads off the loop (issue 13) ----------------------------------------------

    def _fetch(self, template: str) -> bool:
        """Whether the stored results that expanding or collecting ``template`` reads
        (its parent's, or the root parent's of an element-wise chain expanded before
        the run; the family's elements reused from the store) were sent to a thread: the
        loop never waits on the store. The template comes back to ``core.expanding``
        once they are in memory (``_Fetched``). A read that fails is left to the step
        itself, which reads again on the loop and fails as it always did."""
        if template in self._fetching:
            self._fetching.discard(template)  # back from its thread: go on
            return False
        wanted = self._stored_inputs(template)
        if not wanted:
            return False
        self._fetching.add(template)
        child = asyncio.get_running_loop().create_task(self._read_stored(wanted))
        # Stopped and waited for as a child; named so that no task's cancel finds it.
        self.children.running[child] = f"<the stored inputs of {template!r}>"
        child.add_done_callback(functools.partial(self._fetched, template))
        return True

    def _stored_inputs(self, template: str) -> list[StoredResult]:
        """The stored results not in memory yet that ``template``'s step would read."""
        records = self.ledger.records
        tasks = self.tasks
        if self.core.is_expanded(template):  # collecting: its members' results
            if not self.core.waits(template):
                return []
            names = [e.name for e in self.ledger.families.get(template, ())]
        else:
            over = tasks[template].over
            assert over is not None
            if tasks[over].over is not None:  # element-wise
                if over in self._keys:
                    return []  # its keys are this run's: nothing to read
                while (up := tasks[over].over) is not None:
                    over = up  # the root parent, whose result gives the keys
            names = [over]
        refs = []
        for n in names:
            rec = records.get(n)
            if rec is not None and type(rec.result) is StoredResult and not rec.result.loaded:
                refs.append(rec.result)
        return refs

    async def _read_stored(self, refs: list[StoredResult]) -> None:
        """Load ``refs`` in a thread, one query per store (each keeps its value)."""

        def read() -> None:
            with paused():  # a family's 10k results, on a heap of its 10k elements
                read_all()

        def read_all() -> None:
            by_store: dict[int, tuple[Any, dict[str, StoredResult]]] = {}
            for ref in refs:
                by_store.setdefault(id(ref.store), (ref.store, {}))[1][ref.task] = ref
            for store, wanted in by_store.values():
                if len(wanted) == 1:
                    next(iter(wanted.values())).load()
                    continue
                values = store.load_results({n: r.result_id for n, r in wanted.items()})
                for n, ref in wanted.items():
                    if n in values:
                        ref._value, ref._loaded = values[n], True

        await in_thread_to_the_end(read)  # not abandoned: a stopped run waits for it

    def _fetched(self, template: str, child: asyncio.Future[Any]) -> None:
        self.children.running.pop(child, None)
        if child.cancelled() or self.children.stopping:
            return
        child.exception()  # seen: a failed read is read again (and reported) on the loop
        self._post(_Fetched(template))

    def _old_family_keys(self, template: str) -> tuple[list[str], bool, list[Any]]:
        """The keys of a family expanded before this run, in its parent's order, and its
        shape: found again from the result of the parent at the root of its chain (the
        keys a store holds are in the order its elements ended, not their parent's)."""
        t = self.tasks[template]
        over = t.over
        assert over is not None
        if self.tasks[over].over is not None:
            return self._old_family_keys(over)
        value = self.ledger.records[over].result
        if isinstance(value, ResultRef):
            value = value.load()
        found = _fan.items(t, value)
        return found.keys, found.mapping, found.originals

    def _check_element_names(self, template: str, elements: Sequence[Task]) -> None:
        static = self._static_names
        for e in elements:
            if e.name in static:
                raise ValueError(
                    f"mapped task {template!r}: its element {e.name!r} has the name of "
                    "another task of the graph; rename that task or make key= give "
                    "other keys"
                )

    def _collect(self, template: str) -> None:
        ledger = self.ledger
        records = ledger.records
        members = ledger.families[template]
        mapping, originals = self._shape[template]
        self._load_refs_of([e.name for e in members])
        now = self.now()
        missing = [e.name for e in members if records[e.name].result is NO_RESULT]
        if missing:  # elements marked done without a result: nothing to collect
            exc: BaseException = MissingResultError(template, missing)
            ledger.template_failed(template, exc, traceback_of(exc), now)
            ledger.skipped(self.core.fail_template(template), now)
            return
        value = _fan.collected((records[e.name].result for e in members), mapping, originals)
        if ledger.family_done(template, value, self._began_at.get(template), now):
            self.core.collect(template)
            return
        exc = ledger.refused(template)
        ledger.template_failed(template, exc, traceback_of(exc), now)
        ledger.skipped(self.core.fail_template(template), now)

    def _apply(self, msg: Outcome | _Requeue | _CancelOne | _Fetched | _InputsIn) -> None:
        if isinstance(msg, _InputsIn):
            self._load_refs_of(msg.deps)  # in memory now (or read again, to fail here)
            for n in msg.held:
                task = self._held.pop(n, None)
                if task is not None:  # handed out meanwhile: it starts now
                    self._released.append(task)
            return
        if isinstance(msg, _Fetched):
            if self.core.waits(msg.name):  # not cancelled meanwhile
                self.core.expanding.append(msg.name)
            else:
                self._fetching.discard(msg.name)
            return
        if isinstance(msg, _Requeue):
            self.core.requeue(msg.name)
            return
        if isinstance(msg, _CancelOne):
            now = self.now()
            why = TaskCancelled(f"task {msg.name!r} was cancelled: {_BY_NAME.format(msg.name)}")
            self.ledger.ended(msg.name, State.CANCELLED, why, None, now)
            self.ledger.skipped(self.core.failed(msg.name), now)
            return
        name = msg.name
        ledger = self.ledger
        if msg.ok:
            if ledger.done(name, msg.value, msg.finished):
                self.core.done(name)
                return
            msg = self._refused(name)
        task = self.tasks[name]
        tries = ledger.tries[name]
        if (
            tries <= task.retries
            and self.failure is None
            and not self.children.stopping
            and name not in self.cancelled_by_name  # it caught the cancel, then failed
            # these would fail again
            and not isinstance(
                msg.value, (UnstorableResultError, MissingResultError, UnpicklingError)
            )
        ):
            self.core.retry(name)
            ledger.retrying(name, msg.value, msg.traceback, msg.finished)
            delay = _backoff(task, tries, self.uniform)
            self.children.timers[name] = self.clock.call_later(delay, self._requeue, name)
            return
        ledger.ended(name, State.FAILED, msg.value, msg.traceback, msg.finished)
        ledger.skipped(self.core.failed(name), msg.finished)
        if isinstance(msg.value, (KeyboardInterrupt, SystemExit)):
            raise msg.value
        if self.fail_fast and self.failure is None:
            self.failure = name

    # -- cancelling one task (OpenRun.cancel(name)) -------------------------------------

    def cancel_task(self, name: str) -> bool:
        """Cancel one task while the rest goes on: recorded ``cancelled``, its
        descendants ``skipped``. False if it has ended already (or the run has, or is
        stopping): nothing to do. Called on the loop's thread, between callbacks."""
        core = self.core
        if self.children.stopping or not core.is_active() or name in self.cancelled_by_name:
            return False
        if self._static_names:  # a graph with a mapped task: a family, or an element
            fanned = self._cancel_fanned(name)
            if fanned is not None:
                return fanned
        if name in core.running:
            for child, n in self.children.running.items():
                if n == name and not child.done():
                    self.cancelled_by_name.add(name)
                    child.cancel()  # its done-callback records it (see _child_done)
                    return True
            return False  # ended, its report still to come: it stands as it ended
        if not core.waits(name):
            return False  # done, failed, skipped or cancelled already
        timer = self.children.timers.pop(name, None)
        if timer is not None:  # waiting out a retry's backoff
            timer.cancel()
        skipped = core.drop(name)
        ledger = self.ledger
        ledger.cancel((), (name,), _BY_NAME.format(name), set(), self.cancel_grace)
        ledger.skipped(skipped, self.now())
        self._post_cancel()
        return True

    def _cancel_fanned(self, name: str) -> bool | None:
        """``cancel_task`` of a mapped task (its family: each element not ended yet) or
        of an element its family has not expanded into yet (cancelled as it expands);
        None for any other task (the plain way)."""
        core = self.core
        if self._held.get(name) is not None:  # handed out, its stored inputs being read
            return self._cancel_held(name)
        task = self.tasks.get(name)
        if task is not None and task.over is not None:
            if not core.is_expanded(name):
                return None  # waiting for its parent: dropped as any task
            hit = False
            for e in self.ledger.families.get(name, ()):
                n = e.name
                if core.waits(n) and n not in self.cancelled_by_name:
                    hit = self.cancel_task(n) or hit
            return hit
        if task is not None:
            return None
        parsed = _fan.family_of(name)
        template = self.tasks.get(parsed[0]) if parsed is not None else None
        if template is None or template.over is None:
            return None
        if core.is_expanded(template.name) or not core.waits(template.name):
            return False  # its family has no such element, or it ended without one
        self._cancel_on_expand.add(name)
        return True

    def _cancel_held(self, name: str) -> bool:
        """``cancel_task`` of an element the core handed out that waits for its stored
        inputs (``_hold``): it never started, so it is cancelled as a task in line is
        (recorded "did not start", its descendants skipped) and does not start when its
        inputs come in."""
        del self._held[name]
        skipped = self.core.failed(name)  # handed out: the core counts it as running
        ledger = self.ledger
        ledger.cancel((), (name,), _BY_NAME.format(name), set(), self.cancel_grace)
        ledger.skipped(skipped, self.now())
        self._post_cancel()
        return True

    def _cancel_expanded(self) -> None:
        """Cancel the elements asked for (by name) before their family expanded."""
        core = self.core
        for n in list(self._cancel_on_expand):
            parsed = _fan.family_of(n)
            if parsed is None or not core.is_expanded(parsed[0]):
                continue
            self._cancel_on_expand.discard(n)
            if core.waits(n) and n not in core.running:
                skipped = core.drop(n)
                self.ledger.cancel((), (n,), _BY_NAME.format(n), set(), self.cancel_grace)
                self.ledger.skipped(skipped, self.now())

    def _post_cancel(self) -> None:
        try:
            self._continue()  # the run may have nothing left now
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting run
            self.children.end(exc)

    def snapshot(self) -> BaseGraph:
        """The Graph so far (``RunRecords``: what an open run reads)."""
        return self.ledger.snapshot()

    def result(self, name: str) -> Any:
        """A done task's result (``RunRecords``)."""
        return self.ledger.result(name)

    def _requeue(self, name: str) -> None:
        # A retry's backoff timer fired (call_later: one wake-up, no polling).
        del self.children.timers[name]
        self._post(_Requeue(name))

    async def _loop(self) -> None:
        # Wait until the last report (or a fail_fast failure) resolves ``finished``; all
        # the work happens in _post, driven by the children's completions.
        self._dispatch()
        if self.core.is_active():
            await self.children.wait()

    def _close(
        self, reason: str, began: Mapping[str, tuple[float | None, str]] | None = None
    ) -> None:
        """Record every task that has not ended as cancelled, with ``reason``;
        ``began``: tasks the run had not started that began elsewhere all the same
        (sent ahead to a Dask cluster: :meth:`DaskExecutor.stopped`)."""
        # Children that ended while the run was being stopped count as they ended: a
        # result is kept, a failure recorded as one (its descendants skipped), no retry.
        inbox = self.children.inbox
        while inbox:
            msg = inbox.popleft()
            if isinstance(msg, Outcome) and msg.name in self.core.running:
                try:
                    self._apply(msg)
                except (KeyboardInterrupt, SystemExit) as exc:
                    self.fatal = exc
        running, rest = self.core.cancel()
        self.ledger.cancel(running, rest, reason, self.children.abandoned, self.cancel_grace, began)

    def want_values(self) -> None:
        """Someone reads results while the run goes on (an open run): no executor may
        leave one elsewhere (a Dask cluster) until the run's end."""
        for ex in self.executors:
            want = getattr(ex, "want_values", None)
            if want is not None:
                want()

    async def _cleanup(self, reason: str, settle: bool) -> None:
        await self.children.stop()
        if self.core.is_active():
            began: dict[str, tuple[float | None, str]] = {}
            for ex in self.executors:
                ask = getattr(ex, "stopped", None)  # what went ahead to a cluster
                if ask is not None:
                    began.update(await ask())
            self._close(reason, began)
        try:
            if settle and self.fatal is None:  # the run returns its graph: values in it
                for ex in self.executors:
                    fetch = getattr(ex, "settle", None)  # results left on a cluster
                    if fetch is not None:
                        await fetch(self.ledger.records)
        finally:
            for ex in self.executors:
                await ex.aclose()
            await self.ledger.close()

    async def run(self) -> BaseGraph:
        reason = "the run was cancelled"
        ledger = self.ledger
        core = self.core
        settle = False  # whether the run ends with its graph (not cancelled, no error)
        try:
            self.children.open()
            for ex in self.executors:  # issue 15: a CPU pool starts now, beside the IO tasks
                begin = getattr(ex, "begin", None)
                if begin is not None:
                    begin()
            pending = core.pending()  # one list for both (100k names at 100k tasks)
            await ledger.open(pending, self.children.end)
            ledger.write_skipped(core.initially_skipped)
            if ledger.emit is not None:
                ledger.announce(core.pending(), core.initially_skipped)
            if self._fusable:
                paths = fused(self, self._plain)
                if paths is not None:  # the children's done-callback, and the start
                    self._on_done, self._launch = paths
            if core.is_active():
                if self.deadline is None:
                    await self._loop()
                else:
                    with self.clock.move_on_after(self.deadline):
                        await self._loop()
                    reason = f"the run's deadline of {self.deadline}s passed"
            if self.failure is not None:
                reason = f"task {self.failure!r} failed and fail_fast=True"
            settle = True
        except asyncio.CancelledError as exc:
            # run_sync's signal handler says which signal it was (see _Signals).
            if exc.args and exc.args[0] in _STOPPED_BY.values():
                reason = f"the run was stopped by {exc.args[0]}"
            raise
        finally:
            # However the run ends (done, fail_fast, deadline, or cancelled from outside:
            #     task = asyncio.create_task(ag.run(g)); task.cancel()
            # ) no child outlives it: cancel them, record them cancelled, stop the
            # workers, and let a cancellation continue.
            await _to_the_end(self._cleanup(reason, settle))
        if self.fatal is not None:
            raise self.fatal
        result = ledger.snapshot()
        if self.failure is not None:
            group = result._failures(
                (State.FAILED,),
                f"task {self.failure!r} failed (fail_fast=True); the rest was cancelled",
            )
            assert group is not None
            raise group
        return result
