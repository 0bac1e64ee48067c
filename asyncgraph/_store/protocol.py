"""What a run needs from a store: the ``Store`` protocol and the records it speaks in.

:class:`~asyncgraph.SQLiteStore` (``_store/sqlite.py``) is the embedded store; any object
with these methods is a store too (``tests/memory_store.py`` is one, kept in memory). The
protocol is complete: the library calls nothing on a store that is not declared here, and
probes for nothing (a store without one of these methods is not a ``Store``).

The records:

    StoredTask   what ``tasks()`` says of a task: its latest record, without its result
    TaskRow      what ``write`` records: one task's record, with its serialized result
    Batch        the rows of one ``write`` (a list), with what they add to the counts
    RunInfo      what ``runs()`` says of a run
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .._state import State

__all__ = [
    "COUNTS",
    "Batch",
    "RunInfo",
    "Store",
    "StoredTask",
    "TaskRow",
    "check_store",
    "new_result_id",
    "not_a_store",
]

#: The counts of a run (``end_run``'s, ``Batch.counts``' keys), in the order of
#: ``RunInfo``'s fields.
COUNTS = ("tasks", "reused", "done", "failed", "skipped", "cancelled")

#: Result keys: random (seeded from the OS), so no key is handed out again for another
#: result, in this process or another.
_random = random.Random()


@dataclass(frozen=True, slots=True)
class StoredTask:
    """What the store knows about one task (its result stays in the store)."""

    name: str
    run_id: int
    status: State
    attempts: int
    started: float | None
    finished: float | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    fingerprint: str | None
    code: str | None  # the digest of the task's own code and options
    result_id: int | None  # a random key of the stored result (None: no result)


class TaskRow(NamedTuple):
    """One write: a task's record at the end (or the start) of its attempts in a run.

    Its fields are the columns of the ``state`` table, in order, so a batch goes to
    SQLite as it is. A NamedTuple: one is built per task on the loop's thread.
    """

    name: str
    run_id: int
    status: str  # a State's value
    attempts: int
    started: float | None
    finished: float | None
    error_type: str | None
    error_message: str | None
    traceback: str | None
    fingerprint: str | None
    code: str | None
    result_id: int | None  # a new random key (new_result_id()) for a done task's result
    result_format: str | None
    result: bytes | None


class Batch(list[TaskRow]):
    """The rows of one ``write``, in the order they were queued, and ``counts``: what
    they add to the run's counts (how many of its tasks ended in each state with these
    rows; with a run's first batch also ``tasks`` and ``reused``). A list, so a store
    that does not keep counts as it goes takes it as the plain rows it is."""

    __slots__ = ("counts",)

    def __init__(self, rows: Iterable[TaskRow] = (), counts: Mapping[str, int] | None = None):
        super().__init__(rows)
        self.counts: Mapping[str, int] = {} if counts is None else counts


def new_result_id() -> int:
    """A key for a new result: random, so no key is ever handed out twice."""
    return _random.getrandbits(62) + 1


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run in a store's history."""

    id: int
    started: float
    finished: float | None
    status: str  # running, done, failed, cancelled, crashed
    pid: int
    host: str
    tasks: int
    reused: int
    done: int
    failed: int
    skipped: int
    cancelled: int
    #: The graph's name (``Graph(name=...)``), for a store that records it; else None.
    graph: str | None = None


@runtime_checkable
class Store(Protocol):
    """What the library needs from a store. :class:`SQLiteStore` is the embedded one.

    Every method may block: a run calls them in threads, never on the event loop, and
    ``load``, ``plan`` and ``history`` call them on the caller's thread. ``str(store)``
    names the store in messages. The contract, method by method (the cases of
    ``tests/test_store_contract.py`` hold both stores of the package to it):

    Reading (at any time, also while a run holds the store; never changes it):
    ``tasks``, ``runs``, ``load_result``, ``load_results``, ``result_size_limit``.

    One run: ``acquire`` -> ``begin_run`` -> ``write`` ... -> ``end_run`` -> ``release``
    (``release`` also when ``acquire`` succeeded but a later step did not).

    Then ``close``, only by whoever opened the store: the library closes the stores it
    opened from a path, never a store object it was given.
    """

    def tasks(self) -> dict[str, StoredTask]:
        """The latest record of every task (name -> record, in the order they were last
        written), without loading any result; ``{}`` for a store with nothing in it yet."""
        ...

    def runs(self) -> list[RunInfo]:
        """Every run, oldest first (``[]`` for a new store). A run that began and never
        ended shows ``status`` ``"running"`` and the counts of its committed batches (or
        ``"crashed"``, once a later run began and found it so: SQLiteStore says that)."""
        ...

    def load_result(self, result_id: int, task: str) -> Any:
        """The value of the result ``task``'s row was written with under ``result_id``
        (deserialized from the row's ``result_format`` and ``result``). StoreError if
        that result is not there any more (a later row of the task replaced it, or the
        store is gone): never another result in its place."""
        ...

    def load_results(self, wanted: Mapping[str, int]) -> dict[str, Any]:
        """``load_result`` for several tasks at once (task name -> result id): the value
        of each, or StoreError as ``load_result`` raises it. A run calls it once, before
        any task starts, for the stored inputs of the tasks it will run."""
        ...

    def result_size_limit(self) -> int | None:
        """The largest serialized result a row can hold, in bytes, or None (no limit). A
        run asks once before any task starts, and fails a task whose result would not fit
        with UnstorableResultError, before the row reaches ``write`` (which would fail
        the write, and so stop the run)."""
        ...

    def acquire(self) -> None:
        """Hold the store for one run, or raise StoreLockedError naming who holds it:
        another run, of this process (on this same object too) or of another."""
        ...

    def release(self) -> None:
        """Let go of the store (idempotent; also when no run began): the next
        ``acquire`` succeeds."""
        ...

    def begin_run(self) -> int:
        """Record that a run starts (the store is held): status ``"running"``, counts 0.
        Returns its id, larger than every id handed out before: resuming compares run
        ids to tell which of two results was computed later."""
        ...

    def write(self, run_id: int, rows: Batch) -> None:
        """Record ``rows`` durably, all or none (one transaction): each row becomes its
        task's latest record (a task's later row in the batch replaces its earlier one),
        with its result bytes kept as they are, and ``rows.counts`` are added to the
        run's counts in the same transaction (so a run killed before ``end_run`` shows
        the counts of what it committed). Called from one thread at a time, between
        ``begin_run`` and ``end_run``; it raises if the rows cannot be recorded."""
        ...

    def end_run(self, run_id: int, status: str, counts: Mapping[str, int]) -> None:
        """Record how the run ended: ``status`` (``"done"``, ``"failed"`` or
        ``"cancelled"``), the end time, and ``counts`` (the keys of ``COUNTS``; a
        missing one is 0), which replace the counts the batches added up."""
        ...

    def close(self) -> None:
        """Let go of what the store keeps open (idempotent). A store may refuse it with
        StoreError while a run holds it (closing would let another run in)."""
        ...


#: The members of the Store protocol, in its order (for the error saying which lack):
#: read from the class, so the list cannot drift from it.
_MEMBERS = tuple(n for n, v in vars(Store).items() if not n.startswith("_") and callable(v))


def check_store(store: Any, parameter: str = "store") -> Store:
    """``store``, if it is a Store object (an instance, with every member of the
    protocol); else the TypeError of :func:`not_a_store`."""
    if not isinstance(store, Store) or isinstance(store, type):
        raise not_a_store(store, parameter)
    return store


def not_a_store(store: Any, parameter: str = "store") -> TypeError:
    """The error for ``parameter=store`` that is neither a path nor a :class:`Store`,
    saying what is missing: the class itself instead of an instance, or the members of
    the protocol it lacks (an object written to an older, shorter protocol)."""
    if isinstance(store, type):
        return TypeError(
            f"{parameter} must be a file path or a Store object, not the class "
            f"{store.__name__} itself: pass an instance, e.g. {store.__name__}(...), "
            "or the store file's path"
        )
    members = [m for m in _MEMBERS if callable(getattr(type(store), m, None))]
    missing = [m for m in _MEMBERS if m not in members]
    if members and missing:
        return TypeError(
            f"{parameter}: {type(store).__name__} is not a complete Store: it lacks "
            f"{', '.join(missing)} (see asyncgraph.Store for what each must do); add "
            "them, or pass the store file's path"
        )
    return TypeError(
        f"{parameter} must be a file path or a Store object (see asyncgraph.Store), "
        f"not {type(store).__name__} {store!r}"
    )
