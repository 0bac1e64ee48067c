"""The synchronous scheduling core: no I/O, no event loop, testable on its own.

It has :mod:`graphlib`'s shape. The caller (the async runner) asks :meth:`get_ready` for
the tasks it may start now, starts them, and reports each outcome with :meth:`done`,
:meth:`failed` or :meth:`retry`, then asks again; it stops when :meth:`is_active` is false.

State it keeps
    ``_waiting[name]``  number of dependencies not yet done, for each task still to run;
    ``_heaps[kind]``    ready tasks per kind, each a heap of ``(key, name)``;
    ``_blocked[r, k]``  ready tasks of kind ``k`` parked because named limit ``r`` is
                        exhausted;
    ``_running``        tasks handed out and not yet reported back.

Selection policy
    1. IO before CPU: :meth:`get_ready` hands out every IO task it can before any CPU
       task, so the loop starts waiting on the network while the processes compute.
    2. Longest remaining path to a terminal task first (the critical path): a task with a
       long chain behind it is started before a leaf. Path lengths are sums of weights:
       1 per task unless the caller knows durations.
    3. The user's ``priority`` (higher first), then definition order.

Capacity: IO tasks are limited by ``max_io``, CPU tasks by ``cpu_slots``, and a task
declaring ``resources=("db",)`` also takes one unit of ``limits["db"]``. A task that is
first in line but whose named limit is exhausted is parked on that limit and does not
hold up tasks behind it. When a unit of a limit frees, the best parked task *of each
kind* goes back into line: one kind's lane may be full while the other's is not, so
waking only the overall best could leave a free unit unused. For the same reason, a task
parked on one limit passes its turn on the others to the next task parked there.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from ._exceptions import GraphError
from ._state import State
from ._task import Kind, Task

__all__ = ["Scheduler"]

_Key = tuple[float, int, int]


class Scheduler:
    def __init__(
        self,
        tasks: Mapping[str, Task],
        order: Iterable[str],
        status: Mapping[str, State],
        *,
        max_io: int | None = None,
        cpu_slots: int = 1,
        limits: Mapping[str, int] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        """Prepare to run every task whose status is PENDING or RUNNING.

        RUNNING counts as pending: it is what a task that never finished looks like.
        A pending task with a failed, skipped or cancelled dependency is skipped at once
        (see :attr:`initially_skipped`); one with a pending dependency waits for it.
        """
        self._tasks = tasks
        self._limits = dict(limits or {})
        for t in tasks.values():
            for r in t.resources:
                if r not in self._limits:
                    raise GraphError(
                        f"task {t.name!r} declares resource {r!r} but no limit is set for "
                        f"it; pass limits={{{r!r}: N}} (limits set: {sorted(self._limits)})"
                    )
        self._capacity = {Kind.IO: max_io, Kind.CPU: cpu_slots}
        self._used = {Kind.IO: 0, Kind.CPU: 0}
        self._res_used = dict.fromkeys(self._limits, 0)
        self._heaps: dict[Kind, list[tuple[_Key, str]]] = {Kind.IO: [], Kind.CPU: []}
        self._blocked: dict[tuple[str, Kind], list[tuple[_Key, str]]] = {
            (r, k): [] for r in self._limits for k in Kind
        }
        self._running: set[str] = set()
        self._retrying: set[str] = set()
        self._waiting: dict[str, int] = {}
        self._children: dict[str, list[str]] = {}
        self._keys: dict[str, _Key] = {}
        self._woken = False

        order = list(order)
        to_run = {n for n in order if status[n] in (State.PENDING, State.RUNNING)}
        skipped: list[str] = []
        for n in order:  # dependencies first, so a skip propagates in one pass
            if n not in to_run:
                continue
            t = tasks[n]
            left = 0
            for d in t.deps:
                if d in to_run:
                    left += 1
                    self._children.setdefault(d, []).append(n)
                elif status[d] is not State.DONE:
                    break
            else:
                self._waiting[n] = left
                continue
            to_run.discard(n)
            skipped.append(n)
        # Dependencies come first in ``order``, so a task below a skipped one finds that
        # dependency out of ``to_run`` and is skipped in the same pass. It may already
        # sit in ``_children`` of an earlier dependency: done() and _skip_below() pass
        # over names that are no longer waiting.
        self.initially_skipped: tuple[str, ...] = tuple(skipped)

        # Longest remaining path, computed from the terminals up.
        w = weights or {}
        path: dict[str, float] = {}
        position = {n: i for i, n in enumerate(order)}
        for n in reversed(order):
            if n in self._waiting:
                below = max((path[c] for c in self._children.get(n, ()) if c in path), default=0.0)
                path[n] = w.get(n, 1.0) + below
                self._keys[n] = (-path[n], -tasks[n].priority, position[n])
        self.remaining_path = path
        for n, left in self._waiting.items():
            if left == 0:
                self._push(n)

    # -- queries ---------------------------------------------------------------------

    def is_active(self) -> bool:
        """True while some task is still to run, running or waiting to retry."""
        return bool(self._waiting)

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)

    def pending(self) -> list[str]:
        """Tasks still to run that are not running now (including those awaiting retry)."""
        return [n for n in self._waiting if n not in self._running]

    # -- the protocol ----------------------------------------------------------------

    def get_ready(self) -> list[Task]:
        """Tasks to start now, IO first; their capacity is taken until reported back."""
        out: list[Task] = []
        # Parking a CPU task can wake an IO task parked on another limit, so scan the
        # lanes again until a pass changes nothing (at most a few passes).
        self._woken = True
        while self._woken:
            self._woken = False
            for kind in (Kind.IO, Kind.CPU):
                self._fill(kind, out)
        return out

    def _fill(self, kind: Kind, out: list[Task]) -> None:
        heap = self._heaps[kind]
        cap = self._capacity[kind]
        used = self._used
        while heap and (cap is None or used[kind] < cap):
            key, name = heapq.heappop(heap)
            task = self._tasks[name]
            if task.resources:
                res_used = self._res_used
                full = [r for r in task.resources if res_used[r] >= self._limits[r]]
                if full:
                    heapq.heappush(self._blocked[full[0], kind], (key, name))
                    for r in task.resources:  # pass its turn on the limits it skipped
                        if res_used[r] < self._limits[r]:
                            self._wake(r, kind)
                    continue
                for r in task.resources:
                    res_used[r] += 1
            used[kind] += 1
            self._running.add(name)
            out.append(task)

    def _wake(self, resource: str, kind: Kind) -> None:
        parked = self._blocked[resource, kind]
        if parked:
            heapq.heappush(self._heaps[kind], heapq.heappop(parked))
            self._woken = True

    def done(self, name: str) -> None:
        """``name`` finished: free its capacity and make ready what waited only on it."""
        self._release(name)
        del self._waiting[name]
        waiting = self._waiting
        for c in self._children.get(name, ()):
            if c in waiting:
                waiting[c] -= 1
                if waiting[c] == 0:
                    self._push(c)

    def failed(self, name: str) -> list[str]:
        """``name`` failed for good: free its capacity; return the descendants to skip."""
        self._release(name)
        del self._waiting[name]
        return self._skip_below(name)

    def retry(self, name: str) -> None:
        """``name`` failed but will try again: free its capacity until :meth:`requeue`."""
        self._release(name)
        self._retrying.add(name)

    def requeue(self, name: str) -> None:
        """A task's retry delay has passed: put it back in line."""
        self._retrying.remove(name)
        self._push(name)

    def cancel(self) -> tuple[list[str], list[str]]:
        """Stop everything: return (tasks that were running, tasks never started).

        After this the scheduler is inactive and hands out nothing.
        """
        running = sorted(self._running)
        rest = [n for n in self._waiting if n not in self._running]
        self._running.clear()
        self._waiting.clear()
        for heap in (*self._heaps.values(), *self._blocked.values()):
            heap.clear()
        self._retrying.clear()
        return running, rest

    # -- internals ---------------------------------------------------------------------

    def _push(self, name: str) -> None:
        heapq.heappush(self._heaps[self._tasks[name].kind], (self._keys[name], name))

    def _release(self, name: str) -> None:
        self._running.remove(name)
        task = self._tasks[name]
        self._used[task.kind] -= 1
        for r in task.resources:
            self._res_used[r] -= 1
            for kind in Kind:
                self._wake(r, kind)

    def _skip_below(self, name: str) -> list[str]:
        out = []
        stack = [name]
        while stack:
            for c in self._children.get(stack.pop(), ()):
                if c in self._waiting:
                    del self._waiting[c]
                    out.append(c)
                    stack.append(c)
        return out
