"""The synchronous scheduling core: no I/O, no event loop, testable on its own.

It has :mod:`graphlib`'s shape. The caller (the async runner) asks :meth:`get_ready` for
the tasks it may start now, starts them, and reports each outcome with :meth:`done`,
:meth:`failed` or :meth:`retry`, then asks again; it stops when :meth:`is_active` is false.

State it keeps
    ``_waiting[name]``  number of dependencies not yet done, for each task still to run;
    ``_lanes[kind]``    per kind: a heap of ready ``(key, name)`` and the capacity used;
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
from collections.abc import Mapping, Sequence

from ._exceptions import GraphError
from ._state import State
from ._task import Kind, Task

__all__ = ["Scheduler", "critical_paths"]

_Key = tuple[float, int, int]
_RUNNABLE = (State.PENDING, State.RUNNING)


def critical_paths(
    tasks: Mapping[str, Task],
    order: Sequence[str],
    children: Mapping[str, Sequence[str]],
    among: Mapping[str, object] | None = None,
    weights: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, _Key]]:
    """Longest remaining path of each task (``among`` only, if given) and its queue key.

    Computed from the terminals up, with plain loops: this runs for every run that cannot
    reuse the graph's cached copy, and generators would cost more than the work.
    """
    w = weights or {}
    path: dict[str, float] = {}
    keys: dict[str, _Key] = {}
    for i in range(len(order) - 1, -1, -1):
        n = order[i]
        if among is not None and n not in among:
            continue
        below = 0.0
        for c in children.get(n, ()):
            p = path.get(c)
            if p is not None and p > below:
                below = p
        p = w.get(n, 1.0) + below
        path[n] = p
        keys[n] = (-p, -tasks[n].priority, i)
    return path, keys


class _Lane:
    """The ready queue and capacity of one kind of task."""

    __slots__ = ("capacity", "heap", "used")

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.used = 0
        self.heap: list[tuple[_Key, str]] = []


class Scheduler:
    def __init__(
        self,
        tasks: Mapping[str, Task],
        order: Sequence[str],
        status: Mapping[str, State],
        *,
        max_io: int | None = None,
        cpu_slots: int = 1,
        limits: Mapping[str, int] | None = None,
        weights: Mapping[str, float] | None = None,
        children: Mapping[str, Sequence[str]] | None = None,
        unit_paths: tuple[dict[str, float], dict[str, _Key]] | None = None,
    ) -> None:
        """Prepare to run every task whose status is PENDING or RUNNING.

        RUNNING counts as pending: it is what a task that never finished looks like.
        A pending task with a failed, skipped or cancelled dependency is skipped at once
        (see :attr:`initially_skipped`); one with a pending dependency waits for it.

        ``children`` (every task's dependents) and ``unit_paths`` (the result of
        :func:`critical_paths` over the whole graph with unit weights) may be passed in
        by a caller that caches them; ``unit_paths`` is used only when every task is to
        run and no ``weights`` are given, since otherwise the paths differ.
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
        self._lanes = {Kind.IO: _Lane(max_io), Kind.CPU: _Lane(cpu_slots)}
        self._res_used = dict.fromkeys(self._limits, 0)
        self._blocked: dict[tuple[str, Kind], list[tuple[_Key, str]]] = {
            (r, k): [] for r in self._limits for k in Kind
        }
        self._running: set[str] = set()
        self._retrying: set[str] = set()
        self._woken = False
        if children is None:
            acc: dict[str, list[str]] = {}
            for t in tasks.values():
                for d in t.deps:
                    acc.setdefault(d, []).append(t.name)
            children = acc
        # The whole graph's child lists are fine here: done() and _skip_below() pass over
        # children that are not waiting, and the path pass over those without a path.
        self._children = children

        waiting: dict[str, int] = {}
        skipped: list[str] = []
        for n in order:  # dependencies first, so a skip propagates in one pass
            if status[n] not in _RUNNABLE:
                continue
            left = 0
            for d in tasks[n].deps:
                if d in waiting:
                    left += 1
                elif status[d] is not State.DONE:  # failed, skipped, cancelled, or
                    break  # a runnable dependency that was itself skipped just now
            else:
                waiting[n] = left
                continue
            skipped.append(n)
        self._waiting = waiting
        self.initially_skipped: tuple[str, ...] = tuple(skipped)

        if unit_paths is not None and weights is None and len(waiting) == len(order):
            self._keys = unit_paths[1]
        else:
            _, self._keys = critical_paths(tasks, order, children, waiting, weights)
        keys = self._keys
        for n, left in waiting.items():
            if left == 0:
                self._lanes[tasks[n].kind].heap.append((keys[n], n))
        for lane in self._lanes.values():
            heapq.heapify(lane.heap)

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
        io = self._lanes[Kind.IO]
        cpu = self._lanes[Kind.CPU]
        if not io.heap and not cpu.heap:
            return out
        # Parking a CPU task can wake an IO task parked on another limit, so scan the
        # lanes again until a pass changes nothing (at most a few passes).
        self._woken = True
        while self._woken:
            self._woken = False
            if io.heap:
                self._fill(Kind.IO, io, out)
            if cpu.heap:
                self._fill(Kind.CPU, cpu, out)
        return out

    def _fill(self, kind: Kind, lane: _Lane, out: list[Task]) -> None:
        heap = lane.heap
        cap = lane.capacity
        tasks = self._tasks
        running = self._running
        while heap and (cap is None or lane.used < cap):
            key, name = heapq.heappop(heap)
            task = tasks[name]
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
            lane.used += 1
            running.add(name)
            out.append(task)

    def _wake(self, resource: str, kind: Kind) -> None:
        parked = self._blocked[resource, kind]
        if parked:
            heapq.heappush(self._lanes[kind].heap, heapq.heappop(parked))
            self._woken = True

    def done(self, name: str) -> None:
        """``name`` finished: free its capacity and make ready what waited only on it."""
        task = self._tasks[name]
        if task.resources:
            self._release(name)
        else:  # the common case, inlined
            self._running.remove(name)
            self._lanes[task.kind].used -= 1
        waiting = self._waiting
        del waiting[name]
        children = self._children.get(name)
        if children:
            tasks = self._tasks
            lanes = self._lanes
            keys = self._keys
            for c in children:
                left = waiting.get(c)
                if left is not None:
                    waiting[c] = left = left - 1
                    if left == 0:
                        heapq.heappush(lanes[tasks[c].kind].heap, (keys[c], c))

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
        heapq.heappush(self._lanes[self._tasks[name].kind].heap, (self._keys[name], name))

    def cancel(self) -> tuple[list[str], list[str]]:
        """Stop everything: return (tasks that were running, tasks never started).

        After this the scheduler is inactive and hands out nothing.
        """
        running = sorted(self._running)
        rest = [n for n in self._waiting if n not in self._running]
        self._running.clear()
        self._waiting.clear()
        for lane in self._lanes.values():
            lane.heap.clear()
        for parked in self._blocked.values():
            parked.clear()
        self._retrying.clear()
        return running, rest

    # -- internals ---------------------------------------------------------------------

    def _release(self, name: str) -> None:
        self._running.remove(name)
        task = self._tasks[name]
        self._lanes[task.kind].used -= 1
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
