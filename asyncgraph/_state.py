"""Task states and the per-task record a Graph carries."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FINISHED_BADLY",
    "NO_RESULT",
    "RecordBody",
    "ResultRef",
    "State",
    "StoredResult",
    "TERMINAL",
    "TaskRecord",
]


class State(enum.Enum):
    """The state of one task. The values are persisted: never change them."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"  # an upstream task failed or was cancelled
    CANCELLED = "cancelled"

    # Members are singletons: identity hashing, in C, instead of Enum's Python __hash__.
    __hash__ = object.__hash__

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        """True for the states a run ends a task in: done, failed, skipped, cancelled."""
        return self in TERMINAL


TERMINAL = frozenset({State.DONE, State.FAILED, State.SKIPPED, State.CANCELLED})
#: States that ``reset_failed`` sends back to pending.
FINISHED_BADLY = frozenset({State.FAILED, State.SKIPPED, State.CANCELLED})


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What is known about one task after (part of) a run.

    ``error`` is the exception the task raised (or a :class:`~asyncgraph.TaskError` that
    stands in for it); ``traceback`` is its formatted text, kept even when the exception
    object came from another process.
    """

    status: State = State.PENDING
    result: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    attempts: int = 0
    started: float | None = None  # seconds since the epoch (time.time())
    finished: float | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from ``started`` to ``finished``, or None while either is unknown."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


PENDING_RECORD = TaskRecord()


class RecordBody:
    """A :class:`TaskRecord` being built on a hot path: the same slots as one, set with
    plain stores (each a slot write the interpreter specializes), then made a
    TaskRecord with ``body.__class__ = TaskRecord`` (allowed between classes of the same
    layout). TaskRecord's own ``__init__`` (a frozen dataclass's) goes through
    ``object.__setattr__`` by name for every field, about three times slower; the
    slots' descriptors called one by one, about twice. What comes out is an ordinary
    TaskRecord: the same type, fields, equality, hash, pickling and immutability
    (``tests/test_hot_path.py``; ``_task._constructor`` does the same for a Task).

    A run builds one per task that ends done (the ledger's done record, the fused
    path's). Every field must be set before the ``__class__`` assignment.
    """

    __slots__ = TaskRecord.__slots__

    status: State
    result: Any
    error: BaseException | None
    traceback: str | None
    attempts: int
    started: float | None
    finished: float | None


def _check_record_body() -> None:
    body: Any = RecordBody()
    body.status, body.result, body.error, body.traceback = State.DONE, 1, None, None
    body.attempts, body.started, body.finished = 1, 2.0, 3.0
    body.__class__ = TaskRecord
    if type(body) is not TaskRecord or body != TaskRecord(State.DONE, 1, None, None, 1, 2.0, 3.0):
        raise ImportError("asyncgraph needs CPython's __class__ assignment between slotted classes")


_check_record_body()


class _NoResult:
    """The type of :data:`NO_RESULT`; there is one instance."""

    __slots__ = ()

    def __new__(cls) -> _NoResult:
        return NO_RESULT

    def __repr__(self) -> str:
        return "<no result: marked done without one>"

    def __reduce__(self) -> str:
        # Pickled by reference (a store keeps the mark): unpickling gives NO_RESULT again.
        return "NO_RESULT"


#: The result of a task marked done without one (``mark_done`` without ``results``,
#: ``mark_done_except``, ``create_graph(done=...)`` without ``results``). A task that
#: depends on it fails with :class:`~asyncgraph.MissingResultError` instead of being
#: handed ``None``; ``None`` given on purpose (``results={name: None}``) is passed.
NO_RESULT: _NoResult = object.__new__(_NoResult)


class ResultRef:
    """A done task's result that is somewhere else until something needs it.

    A record's ``result`` may hold one instead of the value: ``graph.results[name]``
    calls :meth:`load` (which keeps what it loaded), and a run loads the refs its tasks
    need. The value never asks where a ref points (a store, a cluster, bytes).

    A base class, not a structural Protocol, on purpose: a task's own result may well
    have a ``load`` method, and it must be handed over as it is, never "loaded".
    """

    __slots__ = ()

    def load(self) -> Any:
        """The value (fetched once, then kept)."""
        raise NotImplementedError

    @property
    def loaded(self) -> bool:
        """True once :meth:`load` has the value in memory (printing never loads)."""
        raise NotImplementedError


class StoredResult(ResultRef):
    """A done task's result that stays in its store until something needs it.

    :func:`asyncgraph.load` puts one in the record of every task that is done in the
    store: reading status never unpickles anything. A run loads the results its pending
    tasks need; ``graph.results[name]`` loads (and keeps) one on demand.
    """

    __slots__ = ("_loaded", "_value", "result_id", "store", "task")

    def __init__(self, store: Any, result_id: int, task: str) -> None:
        self.store = store
        self.result_id = result_id
        self.task = task
        self._loaded = False
        self._value: Any = None

    def load(self) -> Any:
        if not self._loaded:
            self._value = self.store.load_result(self.result_id, self.task)
            self._loaded = True
        return self._value

    @property
    def loaded(self) -> bool:
        return self._loaded

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return f"<StoredResult of task {self.task!r} in {self.store} ({state})>"
