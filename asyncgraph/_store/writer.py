"""The writer of one run: its rows go to the store from a thread, in batches.

State it keeps (one ``RunWriter`` per run, from the run's start to its end):

    _queue      rows put on the loop's thread, not yet taken by the writer thread
    _uncounted  how many of the first rows taken are not counted (a run's resets)
    _extra      counts to add with the next batch (``tasks`` and ``reused``, once)
    committed   tasks that ended in each state with a committed row
    failed      the exception a write raised (the writer stopped there), or None
"""

from __future__ import annotations

import collections
import contextlib
import operator
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .protocol import Batch, Store, TaskRow

__all__ = ["RunWriter"]

#: The states a task's last row in a run can count as (the runs table's columns).
_ENDED = ("done", "failed", "skipped", "cancelled")
_STATUS = operator.itemgetter(2)  # a TaskRow's status


class RunWriter:
    """Writes one run's rows from a thread, in batches, and reports each commit.

    ``put`` is called on the loop's thread and never blocks: an append to a deque, and
    a wake-up only when the writer is asleep. The thread takes everything queued, writes
    it in one transaction, then calls ``on_commit(rows)`` on the loop (via
    ``call_soon_threadsafe``). A failed write is handed to ``on_error`` the same way and
    the writer stops: nothing later is reported durable.

    ``first`` rows are queued before the thread starts, so they are in the first
    transaction, ahead of every row ``put`` later (a run's resets: see ``_Session``).
    They are not counted; each later row that ends a task (done, failed, skipped,
    cancelled) is, and ``committed`` holds the counts of the rows committed so far
    (read it once ``close`` returned). Each batch goes to ``store.write`` as a
    :class:`Batch` with its counts (and ``first_counts`` with the first batch), which
    the store adds in the same transaction as its rows.
    """

    def __init__(
        self,
        store: Store,
        run_id: int,
        loop: Any,
        on_commit: Callable[[list[TaskRow]], None],
        on_error: Callable[[BaseException], None],
        *,
        first: Sequence[TaskRow] = (),
        first_counts: Mapping[str, int] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.loop = loop
        self.on_commit = on_commit
        self.on_error = on_error
        self._queue: collections.deque[TaskRow] = collections.deque(first)
        self._uncounted = len(first)  # the first rows the thread takes are not counted
        self._extra: dict[str, int] = dict(first_counts or {})
        #: Tasks that ended in each state with a committed row (done, failed, ...).
        self.committed: dict[str, int] = dict.fromkeys(_ENDED, 0)
        self._wake = threading.Event()
        self._asleep = False  # read without a lock: a spare wake-up costs nothing
        self._closing = False
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="asyncgraph-store", daemon=True)
        self._thread.start()

    def put(self, row: TaskRow) -> None:
        self._queue.append(row)  # deque.append is atomic
        if self._asleep:
            self._wake.set()

    def _work(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                # Say we sleep, then look once more: a put() in between either sees the
                # flag and wakes us, or its row is seen here.
                self._asleep = True
                if not queue and not self._closing:
                    self._wake.wait()
                self._asleep = False
                self._wake.clear()
                continue
            take = queue.popleft
            batch = Batch([take() for _ in range(len(queue))])  # what is queued now
            batch.counts = counts = self._extra
            self._extra = {}
            skip = min(self._uncounted, len(batch))
            self._uncounted -= skip
            # Counted in C: the status of each row (a task's last row ends it).
            for status, n in Counter(map(_STATUS, batch[skip:] if skip else batch)).items():
                if status in _ENDED:
                    counts[status] = counts.get(status, 0) + n
            try:
                self.store.write(self.run_id, batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the run
                self.failed = exc
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    self.loop.call_soon_threadsafe(self.on_error, exc)
                return
            committed = self.committed
            for status in _ENDED:
                committed[status] += counts.get(status, 0)
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.on_commit, batch)

    def close(self) -> None:
        """Write what is queued and stop the thread (blocking: call it in a thread)."""
        self._closing = True
        self._wake.set()
        self._thread.join()
