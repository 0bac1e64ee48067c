"""The Dask backend: a run's ``kind="cpu"`` tasks on a Dask distributed cluster.

``DaskBackend()`` starts a ``LocalCluster`` of the run's own and closes it when the run
ends; ``DaskBackend("tcp://host:8786")`` connects a client of the run's own to an
existing scheduler (the client is closed, the cluster never); ``DaskBackend(client)``
uses a ``Client(asynchronous=True)`` made on the run's loop, and never closes it.
Coroutines and IO threads stay on the driver (a cluster round trip costs milliseconds);
only CPU tasks go to the cluster, exactly the ones that otherwise go to the process pool.

``distributed`` is imported when the first CPU task starts, never by ``import asyncgraph``.

How an attempt maps to Dask (the traps are in ``shared/design/backends.md``):

- each attempt is one Dask task with a key of its own, ``f"{task}-{run}-{attempt}"``:
  Dask hands back the *old* future for a key its client still holds, so a retry under
  the same key would return the old error. ``pure=False`` (asyncgraph, not Dask, decides
  what is reusable) and ``retries=0`` (asyncgraph's retries keep their backoff, attempts
  and events). The attempts started in one turn of the loop go out together, one
  ``client.map`` (one message to the scheduler) per function and resource need, and the
  results ready together are fetched together, one ``gather`` (the driver paid one
  message and one round trip per task before). An owned cluster is started with
  ``allowed_failures=0`` and a worker saturation of 1.0: a task that kills its worker
  kills one worker and fails with :class:`WorkerDiedError` (retried under the task's
  ``retries``), instead of being rerun on three more workers first. It keeps every
  worker it was started with: a dead worker's nanny restarts it however long that
  takes under load (a plain LocalCluster gives up after 15 s and never replaces the
  worker, which left a run with no worker and its tasks queued for ever).
- Dask blames every task that was on a dead worker, also one only waiting there (a
  dependent placed next to its input). On an owned cluster the shim notes each
  attempt's key in a journal before it calls the task (a file per worker process, one
  unbuffered write, which survives the worker's death); an attempt Dask blames that is
  not in the journal never started, and is submitted once more under
  ``f"{key}-again"``, free (not an attempt, not counted against ``retries``).
- ``priority`` is the run's dispatch order: the scheduler hands out ready tasks in its
  critical-path order (with learned durations), and an earlier dispatch gets a higher
  Dask priority, so that order survives any queueing on the cluster.
- the function is pickled once per run (cloudpickle: lambdas and notebook functions
  travel by value), and the check before the run reports every one that cannot travel.
  The worker shim (``_dask_worker``, stdlib and cloudpickle only) goes by reference, so
  the workers need asyncgraph importable (any version with that module): shipping it by
  value cost ~8 ms of driver CPU per task (cloudpickle walks its modules every submit).
- a result that a later CPU task needs stays on the cluster: the run keeps its Dask
  future and passes that future, not the value, to the dependent's submit, so the data
  goes worker to worker and is not sent back out from the driver. A kept future is
  released once every CPU dependent has finished (and the value is on the driver).
- a result is fetched only when the driver needs it. The rule (``_takes_futures``):
  without a store and an open run, a plain CPU task whose every pending dependent is a
  plain CPU task (not fan-out, ``skip_none`` or a stream stage) is done once Dask has
  its result, unfetched: its record holds a :class:`RemoteResult`, its dependents get
  its future, and :meth:`DaskExecutor.settle` fetches every one still there in one
  ``gather`` when the run ends with its graph, before the run's cluster closes (a
  chain paid one fetch round trip per link before). Any other result is fetched as
  its task ends, in the batched gathers. ``keep_remote=True`` (a user's client only)
  leaves the handles in the result graph instead of that last fetch.
- with a store, the result's bytes are made on the worker (a second tiny task next to
  the data), fetched as bytes, loaded here once and handed to the ledger as they are
  (``pickled``), so the store commits them before ``done`` is reported.
- failures come back as data with the worker's traceback text; ``KilledWorker`` becomes
  :class:`WorkerDiedError`.
- cancellation (the run's cancel, deadline, fail_fast, a timeout) cancels the attempt's
  Dask future at once; the run closes what it started (client, cluster) on every way
  out, after cancelling every future it still holds, so no future of the run is left on
  the scheduler. A Dask worker cannot stop a thread that is running a task: on an owned
  cluster the workers go with the cluster; on a user's cluster a cancelled or timed-out
  call may run on, and a timeout's error says so.

State it keeps
    ``DaskBackend``   only its description (address or client, cluster options,
                      resource mapping): a run makes its own executor from it;
    ``DaskExecutor``  ``client``/``cluster`` (with whether it owns each) and
                      ``_opening``, the task that connects them; ``fn_bytes`` (each CPU
                      task's pickled function); ``live`` (key -> Dask future of each
                      attempt in flight); ``kept`` (task -> future of a done result a CPU
                      dependent still needs) with ``uses`` (how many CPU dependents have
                      yet to finish); ``attempts`` per task (for the keys); ``_order``
                      (the dispatch counter behind ``priority``); ``_cancels`` (the
                      cancel messages sent and not yet acknowledged); ``_to_submit``
                      and ``_to_fetch`` (this turn's submissions and fetches, sent
                      together) with ``_fetches`` (the gathers out, at most two);
                      ``_out`` (attempts on the cluster) and ``_held`` (attempts with
                      a timeout, and those after them, waiting until at most
                      ``window`` are out); ``journal`` (the started-journal's
                      directory, on an owned cluster); ``lazy`` (the tasks whose
                      result may stay on the cluster), ``values_wanted`` (True unless
                      the run settles at its end and nothing reads values meanwhile)
                      and ``remote`` (task -> the RemoteResult of a result left there,
                      whose future it holds until ``settle`` or ``aclose``).
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import cloudpickle

from .._clock import SYSTEM_CLOCK, Clock
from .._exceptions import PicklingError, WorkerDiedError
from .._shield import shielded, wait_to_the_end
from .._state import State
from .._task import Kind, Task
from . import _dask_worker
from .base import Began, Executor
from .process import shipping_problem

__all__ = ["DaskBackend", "DaskExecutor", "RemoteResult"]

_INLINE = 4096  # result bytes up to this many are loaded on the loop, bigger in a thread
_SCATTER = 8 << 20  # a driver value above this many bytes is scattered, not embedded


class RemoteResult:
    """A task's result left on the Dask cluster, held by your client.

    With ``DaskBackend(client, keep_remote=True)``, the result graph holds one of these
    instead of the value of each task whose result no driver-side task needed::

        done = await ag.run(g, backend=ag.DaskBackend(client, keep_remote=True))
        handle = done.results["last"]    # RemoteResult of task 'last': ndarray on ...
        value = await handle.fetch()     # the value, fetched once (Dask caches nothing)
        later = client.submit(f, handle.future)   # or pass the Dask future on

    ``future`` is the ``distributed.Future`` (of your client); ``type`` the result's
    type name as Dask reported it. The data stays on the cluster while the handle (or
    its future) lives; :meth:`release` lets Dask forget it at once.
    """

    __slots__ = ("future", "task")

    def __init__(self, task: str, future: Any) -> None:
        self.task = task
        self.future = future

    async def fetch(self) -> Any:
        """The value, from the cluster (each call fetches it again)."""
        return await self.future

    def release(self) -> None:
        """Let Dask forget the result (a later :meth:`fetch` fails)."""
        self.future.release()

    @property
    def type(self) -> str | None:
        """The result's type name, as Dask reported it when the task finished."""
        kind = getattr(self.future, "type", None)
        if kind is None:
            return None
        return kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))

    def __repr__(self) -> str:
        kind = self.type or "a result"
        key = self.future.key
        return f"<RemoteResult of task {self.task!r}: {kind} on the Dask cluster, key {key!r}>"


class DaskBackend:
    """Run the ``kind="cpu"`` tasks of a run on a Dask distributed cluster.

    ::

        done = await ag.run(g, backend=ag.DaskBackend())                    # own LocalCluster
        done = await ag.run(g, backend=ag.DaskBackend("tcp://sched:8786"))  # a running cluster
        done = await ag.run(g, backend=ag.DaskBackend(client))              # your async Client

    ``cluster`` is one of:

    - ``None`` (the default): each run starts a ``distributed.LocalCluster`` of its own
      (``n_workers`` processes, default the run's ``cpu_workers``, each with
      ``threads_per_worker`` threads; ``processes=False`` for threads in this process)
      and closes it when the run ends, so nothing it started outlives the run. A task
      that kills its worker fails with :class:`~asyncgraph.WorkerDiedError` and kills
      one worker only (``allowed_failures``, default 0). A script that uses it needs an
      ``if __name__ == "__main__":`` guard, as any Dask LocalCluster of processes does.
    - a scheduler address (``"tcp://host:8786"``): the run connects a client of its own
      (closed when the run ends; the cluster never is). ``capacity`` caps the run's
      tasks in flight on the cluster (default: no cap; Dask queues the rest in the
      run's priority order; with a client or an owned cluster, the default is 32 per
      worker thread). A task with a ``timeout`` waits on the driver, its clock not
      started, until at most two per worker thread are on the cluster.
    - a ``distributed.Client(asynchronous=True)`` made on the loop the run runs on (or
      a ``Cluster``): used as it is and never closed. A client made on another loop, or
      a synchronous one, is refused: pass the scheduler address instead.

    ``resources`` maps an asyncgraph resource name to Dask worker resources: with
    ``resources={"gpu": {"GPU": 1}}`` a task declaring ``resources=("gpu",)`` still
    counts against the run's ``limits["gpu"]`` and also asks Dask for a worker with a
    free ``GPU`` (workers declare theirs: ``dask worker --resources GPU=2``, or
    ``cluster_kwargs={"resources": {"GPU": 2}}`` for an owned cluster).
    ``cluster_kwargs`` go to the owned ``LocalCluster``; ``connect_timeout`` bounds
    the connection to a scheduler.

    ``eager`` (default True) sends a CPU task whose inputs are all CPU tasks (and which has no
    ``timeout``, ``resources``, ``skip_none``, ``after`` or fan-out) to the cluster
    with its inputs' futures as soon as they are submitted: Dask starts it the moment
    they finish, worker to worker, as a plain Dask graph does, instead of after Dask's
    "finished" report and a submission per link (a chain of small tasks runs at about
    plain Dask's speed; without it, about 1.7x under load). Only behind inputs that
    are done the moment Dask has their results: inputs without a ``timeout`` whose
    results stay on the cluster (see below: no store, no open run, no driver-side
    reader). An input whose value the driver loads can fail here after Dask finished
    it (a value that does not unpickle on the driver, a store that refuses it), and a
    task sent behind it would have run on the cluster though recorded skipped; those
    go when the run starts them, as without ``eager``. Results, failures, retries and
    events are as without it; a failed input takes what was sent with it back (the
    run skips or retries as always). A task sent ahead may begin on the cluster as its
    inputs finish even when the run stops before it starts the task (Dask's cancel is
    a message that can arrive after that): a stopped run closes the workers' gate
    (after that nothing it sent ahead begins anywhere) and asks them, and records such
    a task as begun and cancelled, or as not started; workers that cannot be asked
    leave it "may have begun". On by default (session 19; it was opt-in while a stop
    could not say what had begun): ``eager=False`` sends each task only when the run
    starts it. Each run that sent something ahead ends with one more message to every
    worker (its gate forgotten), and the workers need an asyncgraph as new as the
    driver's for it.

    A result only other cluster tasks take stays on the cluster while the run goes on
    (no store, no open run, every dependent a plain CPU task of the run): the task is
    done once Dask has its result, its dependents get its Dask future, and every such
    result still there is fetched in one ``gather`` when the run ends, before the
    run's own cluster closes (the result graph holds values). ``keep_remote=True``
    (only with your own ``Client``, which holds them) skips that last fetch: the
    result graph holds a :class:`RemoteResult` for each of those results, whose
    ``await r.fetch()`` gives the value, and the data stays on the cluster until you
    release it (``r.release()``) or drop the graph.

    Differences from the process pool: a running Dask task cannot be stopped, so a
    timeout (or a cancel) on a cluster the run does not own leaves the call running
    there; ``started`` is the moment of submission, so a duration and a timeout include
    queueing on the cluster; the workers need asyncgraph importable (its worker shim).
    On the run's own cluster, a task Dask fails only because it waited on a worker that
    another task killed is submitted again, free; on yours, Dask's ``allowed-failures``
    decides.
    """

    def __init__(
        self,
        cluster: Any = None,
        *,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        processes: bool = True,
        resources: Mapping[str, Mapping[str, float]] | None = None,
        allowed_failures: int = 0,
        capacity: int | None = None,
        cluster_kwargs: Mapping[str, Any] | None = None,
        connect_timeout: float = 10.0,
        eager: bool = True,
        keep_remote: bool = False,
    ) -> None:
        self.address: str | None = None
        self.client: Any = None
        self.cluster: Any = None
        if isinstance(cluster, str):
            if not cluster.strip():
                raise ValueError(
                    "DaskBackend: the scheduler address is empty; pass one such as "
                    "'tcp://127.0.0.1:8786', or nothing for a LocalCluster of the run's own"
                )
            self.address = cluster
        elif cluster is not None:
            kind = _dask_kind(cluster)
            if kind is None:
                raise TypeError(
                    "DaskBackend: cluster must be a scheduler address (str), a "
                    "distributed.Client(asynchronous=True), a distributed Cluster or None "
                    f"for a LocalCluster of the run's own; not {type(cluster).__name__} "
                    f"{cluster!r}"
                )
            if kind == "client":
                if not getattr(cluster, "asynchronous", False):
                    raise ValueError(
                        "DaskBackend: the Client is synchronous; asyncgraph needs a "
                        "Client(asynchronous=True) made on the run's loop, or pass its "
                        f"scheduler address instead: DaskBackend({_address_of(cluster)!r})"
                    )
                self.client = cluster
            else:
                self.cluster = cluster
        for name, value in (("n_workers", n_workers), ("capacity", capacity)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"DaskBackend: {name} must be an int >= 1 or None, not {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"DaskBackend: {name} must be >= 1 or None, not {value!r}")
        if isinstance(threads_per_worker, bool) or not isinstance(threads_per_worker, int):
            raise TypeError(
                f"DaskBackend: threads_per_worker must be an int >= 1, not {threads_per_worker!r}"
            )
        if threads_per_worker < 1:
            raise ValueError(
                f"DaskBackend: threads_per_worker must be >= 1, not {threads_per_worker!r}"
            )
        if (
            isinstance(allowed_failures, bool)
            or not isinstance(allowed_failures, int)
            or allowed_failures < 0
        ):
            raise ValueError(
                f"DaskBackend: allowed_failures must be an int >= 0, not {allowed_failures!r}"
            )
        if not isinstance(eager, bool):
            raise TypeError(f"DaskBackend: eager must be True or False, not {eager!r}")
        if not isinstance(keep_remote, bool):
            raise TypeError(f"DaskBackend: keep_remote must be True or False, not {keep_remote!r}")
        if keep_remote and self.client is None:
            given = "a scheduler address" if self.address is not None else "a Cluster"
            if self.owns_cluster:
                given = "no cluster (the run's own LocalCluster)"
            raise ValueError(
                f"DaskBackend(keep_remote=True) with {given}: the results it leaves on the "
                "cluster are held by the client, and the run's own client (and cluster) "
                "closes when the run ends, losing them. Pass your own client, "
                "DaskBackend(client, keep_remote=True) with a "
                "distributed.Client(asynchronous=True) made on the run's loop, or drop "
                "keep_remote to have every result fetched when the run ends"
            )
        if not isinstance(connect_timeout, (int, float)) or connect_timeout <= 0:
            raise ValueError(
                "DaskBackend: connect_timeout must be a number of seconds > 0, "
                f"not {connect_timeout!r}"
            )
        self.resources = _check_resources(resources)
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.processes = bool(processes)
        self.allowed_failures = allowed_failures
        self.capacity = capacity
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.connect_timeout = float(connect_timeout)
        self.eager = eager
        self.keep_remote = keep_remote

    @property
    def owns_cluster(self) -> bool:
        """Whether each run starts (and closes) a LocalCluster of its own."""
        return self.address is None and self.client is None and self.cluster is None

    def executors(
        self,
        *,
        max_io: int | None,
        cpu_workers: int,
        clock: Clock,
        pickled: Callable[[str, bytes], None] | None,
    ) -> list[Executor]:
        """The run's executors: the loop and threads for IO, this cluster for CPU."""
        from .local import LoopExecutor, ThreadExecutor

        return [
            LoopExecutor(max_io, clock),
            ThreadExecutor(max_io, clock),
            DaskExecutor(self, cpu_workers, clock, pickled),
        ]

    def __repr__(self) -> str:
        if self.client is not None:
            return f"DaskBackend({self.client!r})"
        if self.cluster is not None:
            return f"DaskBackend({self.cluster!r})"
        if self.address is not None:
            return f"DaskBackend({self.address!r})"
        return "DaskBackend()"


def _dask_kind(obj: Any) -> str | None:
    """``"client"``, ``"cluster"`` or None, without importing distributed (if ``obj`` is
    a Client or a Cluster, distributed is imported already)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    if isinstance(obj, distributed.Client):
        return "client"
    from distributed.deploy.cluster import Cluster

    if isinstance(obj, Cluster):
        return "cluster"
    return None


def _address_of(client: Any) -> str:
    try:
        return str(client.scheduler.address)
    except Exception:  # noqa: BLE001 - only for the message
        return "tcp://host:8786"


def _check_resources(
    resources: Mapping[str, Mapping[str, float]] | None,
) -> dict[str, dict[str, float]]:
    if resources is None:
        return {}
    if not isinstance(resources, Mapping):
        raise TypeError(
            "DaskBackend: resources must map an asyncgraph resource name to Dask worker "
            f"resources, such as {{'gpu': {{'GPU': 1}}}}; not {resources!r}"
        )
    out: dict[str, dict[str, float]] = {}
    for name, need in resources.items():
        if not isinstance(name, str) or not isinstance(need, Mapping) or not need:
            raise TypeError(
                f"DaskBackend: resources[{name!r}] must be a non-empty mapping of Dask "
                f"resource names to amounts, such as {{'GPU': 1}}; not {need!r}"
            )
        for dask_name, amount in need.items():
            if (
                not isinstance(dask_name, str)
                or isinstance(amount, bool)
                or not isinstance(amount, (int, float))
                or amount <= 0
            ):
                raise ValueError(
                    f"DaskBackend: resources[{name!r}] asks for {dask_name!r}: {amount!r}; "
                    "each amount must be a number > 0 under a str name"
                )
        out[name] = {str(k): float(v) for k, v in need.items()}
    return out


class DaskExecutor:
    """Tasks of kind CPU, each attempt one Dask future on the backend's cluster; one
    per run (made by :meth:`DaskBackend.executors`)."""

    lane = "cpu"

    def __init__(
        self,
        backend: DaskBackend,
        cpu_workers: int,
        clock: Clock = SYSTEM_CLOCK,
        pickled: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.backend = backend
        self.clock = clock
        self.n_workers = backend.n_workers or cpu_workers
        capacity = backend.capacity
        # 32 tasks in flight per worker thread: a dispatch's attempts go out in one
        # message, and Dask queues them in the run's order (measured on 2 threads: a
        # wide graph at 4 in flight 2.9x plain Dask's time, at 16 1.8x, at 64 1.2x).
        # An attempt with a timeout waits until at most ``window`` (two per thread) are
        # out, so that its clock does not count a long queue (see ``_turn``).
        if backend.owns_cluster:
            threads = self.n_workers * backend.threads_per_worker
        elif backend.client is not None:
            threads = _cached_threads(backend.client)
        else:
            threads = 0  # known once connected
        if capacity is None and threads:
            capacity = 32 * threads
        self.capacity: int | None = capacity
        self.window = 2 * threads if threads else 2
        self._out = 0  # attempts on the cluster (admitted by _turn)
        self._held: collections.deque[tuple[bool, asyncio.Future[None]]] = collections.deque()
        self.pickled = pickled
        self.stores = _stores(pickled)
        self.token = uuid.uuid4().hex[:8]
        self.fn_bytes: dict[str, bytes] = {}
        self.tasks: Mapping[str, Task] = {}
        self.uses: dict[str, int] = {}
        self.kept: dict[str, Any] = {}
        self.live: dict[str, Any] = {}
        self.attempts: dict[str, int] = {}
        self._order = itertools.count()
        self._cancels: set[asyncio.Future[Any]] = set()
        self._runners: set[asyncio.Task[None]] = set()
        self.client: Any = None
        self.cluster: Any = None
        self.owns_client = False
        self.owns_cluster = False
        self.worker_resources: dict[str, float] | None = None  # the cluster's, summed
        self._opening: asyncio.Task[Any] | None = None
        self._closed = False
        self._tracker_was_running = True  # multiprocessing's, before the run's cluster
        self._loads: Any = None  # Threads for loading big results, made on demand
        # Submissions and fetches of this turn of the loop, sent together.
        self._to_submit: list[Any] = []
        self._submit_soon = False
        self._to_fetch: list[tuple[Any, asyncio.Future[Any]]] = []
        self._fetch_soon = False
        self._fetches: set[asyncio.Future[Any]] = set()
        self.journal: str | None = None  # the started-journal's directory (owned cluster)
        self.feeds: dict[str, int] = {}  # task -> its pending CPU dependents
        self.scattered: dict[str, asyncio.Future[Any]] = {}  # task -> its value, scattered
        # Eager submission (see ``_ahead_from``).
        self.eager_children: dict[str, list[Task]] = {}  # task -> its eager CPU dependents
        self.current: dict[str, Any] = {}  # task -> the Dask future of its attempt out
        self.ahead: dict[str, _Ahead] = {}  # task -> its attempt 1, submitted ahead
        self.withdrawn: dict[str, _Ahead] = {}  # those dropped with a cancelled input
        self.gated = False  # whether anything went ahead (through the workers' gate)
        self.gate_timeout = 10.0  # seconds to ask the workers about their gate
        self._gate_closed = False  # whether the run's stop closed it (``stopped``)
        self.dropped: dict[str, int] = {}  # task -> how many of those were dropped
        self.ahead_window = 2 * capacity if capacity else 256
        # Results left on the cluster (see ``_remote_rule``).
        self.lazy: set[str] = set()  # tasks whose result may stay there
        # True unless the run settles its results at its end (``values_at_end``, the
        # runner's promise) and nobody reads them meanwhile (``want_values``).
        self.values_wanted = True
        self.remote: dict[str, RemoteResult] = {}  # task -> its result left there

    # -- before the run --------------------------------------------------------------

    def serves(self, kind: Kind, is_async: bool) -> bool:
        return kind is Kind.CPU

    def check(self, tasks: Mapping[str, Task], pending: Iterable[str]) -> None:
        """Pickle every pending CPU task's function once (all that cannot travel in one
        error), count each CPU task's pending CPU dependents (how long its future is
        kept), and refuse a client made on another loop when the loop is known."""
        self.tasks = tasks
        problems: dict[str, str] = {}
        verdicts: dict[bytes, str | None] = {}
        by_fn: dict[int, bytes] = {}
        shipped: dict[bytes, bytes] = {}  # pickled -> as it goes in a task (_shippable)
        modules: dict[str, str | None] = {}
        first_error: Exception | None = None
        lazy = self.lazy
        blocked: set[str] = set()  # their value is needed on the driver
        ahead: list[Task] = []  # eager candidates (see _ahead_from)
        for n in pending:
            t = tasks[n]
            if not _takes_futures(t):
                blocked.update(t.deps)
            elif not self.stores:
                lazy.add(n)
            if t.kind is not Kind.CPU:
                continue
            for d in () if t.over is not None else t.deps:  # a mapped task never starts
                if tasks[d].kind is Kind.CPU:
                    self.uses[d] = self.uses.get(d, 0) + 1
                self.feeds[d] = self.feeds.get(d, 0) + 1
            if self.backend.eager and _eager(t, tasks):
                ahead.append(t)
            # Pickled once per function object, not per task: tasks made from one
            # function share it (cloudpickle of a __main__ function by value cost about
            # 1 ms of driver CPU a task, most of a wide run's). The tasks hold the
            # objects, so no id is reused while this runs.
            data = by_fn.get(id(t.fn))
            if data is None:
                try:
                    data = by_fn[id(t.fn)] = cloudpickle.dumps(t.fn)
                except Exception as exc:  # noqa: BLE001 - whatever stops pickling
                    first_error = first_error or exc
                    problems[n] = PicklingError(n, f"{type(exc).__name__}: {exc}").problems[n]
                    continue
            if data not in verdicts:
                verdicts[data] = shipping_problem(data, modules)
            verdict = verdicts[data]
            if verdict is not None:
                problems[n] = verdict.replace("a worker process", "a Dask worker")
                continue
            self.fn_bytes[n] = shipped.get(data) or shipped.setdefault(data, _shippable(data))
        if problems:
            raise PicklingError.for_tasks(problems) from first_error
        lazy -= blocked
        for t in ahead:
            # Only behind inputs whose results stay on the cluster: such an input is done
            # the moment Dask has its result, so what went ahead starts only once its
            # inputs are done. An input whose value the driver loads (a store's bytes, a
            # driver-side reader) can still fail here after Dask finished it, and what
            # went ahead would have run on the cluster behind a failed input, recorded
            # skipped.
            if all(d in lazy for d in t.deps):
                for d in t.deps:
                    self.eager_children.setdefault(d, []).append(t)
        if self.backend.client is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # run_sync makes its loop later: checked when the first task starts
            _check_client_loop(self.backend.client, loop)

    # -- an attempt ------------------------------------------------------------------

    def start(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if self._opening is None and self.backend.client is not None:
            # The first CPU task: a client of another loop ends the run here, with what
            # to pass instead, before anything is submitted.
            _check_client_loop(self.backend.client, loop)
        call = self._call(task, args, kwargs, began)
        # The run watches a plain future that the attempt's task resolves: a task's
        # SystemExit or KeyboardInterrupt raised inside an asyncio task would leave the
        # loop at once, tearing down a cluster that runs on it; set on the future, it
        # ends the run as on the process pool, after the cleanup.
        child: asyncio.Future[Any] = loop.create_future()
        runner = loop.create_task(_resolve(child, call), name=task.name)
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        child.add_done_callback(functools.partial(_stop_runner, runner))
        return child

    # -- how many attempts are out -----------------------------------------------------
    #
    # The lane lets many attempts out at once (bulk submission needs them), and Dask
    # queues them in the run's order. A timeout counts from the submission, though, so
    # an attempt with one waits here, its clock not started, until at most
    # ``self.window`` (two per worker thread) are on the cluster; the attempts after it
    # wait behind it, so it is never starved by later ones.

    async def _turn(self, timed: bool) -> None:
        """Wait until this attempt may go to the cluster (and count it as out)."""
        if not self._held and not (timed and self._out >= self.window):
            self._out += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held.append((timed, waiter))
        try:
            await waiter  # _left() counted it as out
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._left()  # let out, then cancelled before it went
            raise

    def _left(self) -> None:
        """An attempt that was out ended: let the next held ones go."""
        self._out -= 1
        held = self._held
        while held:
            timed, waiter = held[0]
            if waiter.done():  # cancelled while it waited
                held.popleft()
                continue
            if timed and self._out >= self.window:
                return
            held.popleft()
            self._out += 1
            waiter.set_result(None)

    async def _call(self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began) -> Any:
        if self.client is None:
            # A cluster's start (or connection) is not the task's time: a timeout
            # counts from the submission, as the pool's counts from the worker's start.
            await self._open()
        timeout = task.timeout
        await self._turn(timeout is not None)
        try:
            if timeout is None:
                return await self._attempt(task, args, kwargs, began)
            with self.clock.move_on_after(timeout) as scope:
                return await self._attempt(task, args, kwargs, began)
        finally:
            self._left()
        assert scope.cancelled_caught
        owned = (
            "its worker is stopped when the run's own cluster closes"
            if self.owns_cluster
            else "the call may still be running on the cluster, whose worker thread "
            "stays busy until it returns"
        )
        raise TimeoutError(
            f"task {task.name!r} did not finish within timeout={task.timeout}s; its Dask "
            f"future was cancelled, but a Dask worker cannot stop a running thread: {owned}"
        )

    async def _attempt(
        self, task: Task, args: list[Any], kwargs: dict[str, Any], began: Began
    ) -> Any:
        name = task.name
        attempt = self.attempts[name] = self.attempts.get(name, 0) + 1
        sent = (args, kwargs)  # as given: for the message if they cannot be serialized
        ahead = self.ahead.pop(name, None) if attempt == 1 and self.ahead else None
        inputs = ahead is None  # the arguments as they go to the cluster
        if inputs and task.deps and not task.skip_none:
            args, kwargs = await self._inputs(task, args, kwargs)
        fn = self.fn_bytes.get(name)
        if fn is None and task.family is not None:  # fan-out: an element is its template's
            fn = self.fn_bytes[task.family]
        fn = fn or self.fn_bytes[name]
        resources = self._resources_of(task)
        order = next(self._order)
        base = f"{name}-{self.token}-{attempt}"
        journal = self.journal
        key = base  # then f"{base}-again": one free resubmission of a blamed bystander
        first = True
        while True:
            fetching: asyncio.Future[Any] | None = None
            if ahead is not None:  # submitted with its inputs (``_ahead_from``)
                key, future, fetching, ahead = ahead.key, ahead.future, ahead.fetching, None
            else:
                note = None if journal is None else (journal, key)
                submit = (_dask_worker.run_attempt, (fn, task.is_async, args, kwargs, note))
                try:
                    future = await self._submit(key, submit, resources, order, name)
                except asyncio.CancelledError:
                    self._cancel([key])  # if it went out meanwhile
                    raise
                except TypeError as exc:
                    if "serialize" in str(exc):
                        raise _unserializable(name, sent, exc) from exc
                    raise
            if first:
                first = False
                began(name, self.clock.time())
            try:
                value, data = await self._outcome(name, key, future, sent, fetching)
            except _NeverStartedError:
                # Dask failed every task that was on a worker that died, also the ones
                # only waiting there: this attempt never began, so it goes again, under
                # a key of its own, and does not count against the task's retries.
                self._drop_ahead(name)
                self._cancel([key, f"{key}-bytes"])
                key = f"{base}-again"
                if not inputs:  # it went ahead: its inputs' futures, as a first submission
                    inputs = True
                    if task.deps and not task.skip_none:
                        args, kwargs = await self._inputs(task, args, kwargs)
                continue
            except BaseException as exc:
                self.current.pop(name, None)
                # They took this attempt's future as an input.
                self._drop_ahead(name, maybe_ran=isinstance(exc, asyncio.CancelledError))
                raise
            break
        self.current.pop(name, None)
        if data is not None and self.pickled is not None:
            self.pickled(name, data)
        if type(value) is RemoteResult:
            self.remote[name] = value  # it holds the future until the run's end
        self._finished(task, future)
        if task.deps:
            self._unfeed(task)  # a task that fails for good leaves them to aclose
        return value

    async def _outcome(
        self,
        name: str,
        key: str,
        future: Any,
        sent: tuple[list[Any], dict[str, Any]],
        fetching: asyncio.Future[Any] | None = None,
    ) -> tuple[Any, bytes | None]:
        """The attempt's value (and its bytes, with a store) once Dask has it; raises
        the attempt's error in asyncgraph's terms, or :class:`_NeverStartedError`.
        ``fetching``: the value (or bytes) already being fetched, for an attempt that
        was submitted ahead."""
        blob_key = None
        data: bytes | None = None
        live = self.live
        try:
            if self.stores:
                blob_key = f"{key}-bytes"
                if fetching is None:
                    dumps = (_dask_worker.dumps, (future,))
                    blob = await self._submit(blob_key, dumps, None, None)
                    fetching = asyncio.ensure_future(self._value(blob))
                data = await fetching
                value = await self._load(name, data)
                live.pop(blob_key, None)  # kept until then: a failed load cancels it below
            elif fetching is not None:
                value = await fetching
            elif name in self.lazy and not self.values_wanted:
                value = await self._landed(name, future)
            else:
                value = await self._value(future)
        except asyncio.CancelledError:
            self._cancel([key, blob_key])
            raise
        except BaseException as exc:  # the attempt's error, translated
            self._cancel([key, blob_key])
            if isinstance(exc, TypeError) and "serialize" in str(exc):
                raise _unserializable(name, sent, exc) from exc
            journal = self.journal
            if (
                journal is not None
                and _killed(exc)
                and not key.endswith("-again")
                and not _dask_worker.journal_has(journal, key)
            ):
                raise _NeverStartedError from exc
            translated = _translated(name, exc)
            if translated is exc:
                raise
            raise translated from exc
        live.pop(key, None)
        return value, data

    async def _inputs(
        self, task: Task, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """The arguments as they go to the cluster: a dependency's result still there
        as its future (the data moves worker to worker, not out from the driver
        again); a value of the driver's above 8 MB scattered to the workers once and
        passed as its future (embedded in the task, it would go through the
        scheduler with every task that takes it)."""
        kept = self.kept
        mapped = getattr(task, "input", None)  # an element's item is not the future
        args = list(args)
        for i, d in enumerate(task.args):
            if d == mapped:
                continue
            future = kept.get(d)
            if future is None and type(args[i]) is RemoteResult:
                future = args[i].future
            if future is None and d in self.feeds:
                future = await self._scattered(d, args[i])
            if future is not None:
                args[i] = future
        if task.kwargs:
            kwargs = dict(kwargs)
            for p, d in task.kwargs:
                if d == mapped:
                    continue
                future = kept.get(d)
                if future is None and type(kwargs[p]) is RemoteResult:
                    future = kwargs[p].future
                if future is None and d in self.feeds:
                    future = await self._scattered(d, kwargs[p])
                if future is not None:
                    kwargs[p] = future
        return args, kwargs

    async def _scattered(self, name: str, value: Any) -> Any:
        """The Dask future of the driver's ``value`` of ``name`` if it is over 8 MB
        (scattered once, released when its last CPU dependent ends), else None."""
        sending = self.scattered.get(name)
        if sending is None:
            from dask.sizeof import sizeof

            if sizeof(value) <= _SCATTER:
                return None
            direct = True if self.owns_cluster else None
            sending = asyncio.ensure_future(self.client.scatter(value, direct=direct, hash=False))
            self.scattered[name] = sending
        return await asyncio.shield(sending)

    def _unfeed(self, task: Task) -> None:
        """``task`` ended: release the scattered values no other CPU task needs."""
        feeds = self.feeds
        for d in task.deps:
            left = feeds.get(d)
            if left is None:
                continue
            if left > 1:
                feeds[d] = left - 1
                continue
            del feeds[d]
            sending = self.scattered.pop(d, None)
            if sending is not None:
                sending.add_done_callback(_release_scattered)

    # -- many attempts, few messages ---------------------------------------------------
    #
    # The attempts a dispatch starts are submitted together (one ``client.map`` per
    # function and resource need, one message to the scheduler), and the results that
    # are ready together are fetched together (one ``gather``): the driver's cost per
    # task was one message and one round trip each.

    def _submit(
        self,
        key: str,
        call: tuple[Callable[..., Any], tuple[Any, ...]],
        resources: dict[str, float] | None,
        order: int | None,
        name: str | None = None,
    ) -> asyncio.Future[Any]:
        """The Dask future of ``call`` under ``key``, submitted with the others of this
        turn of the loop; ``order`` is the dispatch order behind ``priority`` (None:
        the next); ``name``: the task whose attempt it is (its eager dependents go out
        after it, with its future)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        if order is None:
            order = next(self._order)
        self._to_submit.append((key, call, resources, order, waiter, name))
        if not self._submit_soon:
            self._submit_soon = True
            loop.call_soon(self._submit_all)
        return waiter

    def _submit_all(self) -> None:
        self._submit_soon = False
        batch, self._to_submit = self._to_submit, []
        groups: dict[Any, list[Any]] = {}
        for item in batch:
            if item[4].done():  # cancelled before it went out
                continue
            res = item[2]
            group = (item[1][0], None if res is None else tuple(sorted(res.items())))
            groups.setdefault(group, []).append(item)
        client = self.client
        for items in groups.values():
            try:
                futures = self._map(client, items)
            except Exception:  # noqa: BLE001 - one bad item: each alone says which
                for item in items:
                    try:
                        f = self._map(client, [item])[0]
                    except Exception as exc:  # noqa: BLE001 - the attempt's error
                        item[4].set_exception(exc)
                    else:
                        self.live[item[0]] = f
                        item[4].set_result(f)
                continue
            for item, f in zip(items, futures, strict=True):
                self.live[item[0]] = f
                item[4].set_result(f)
        if self.eager_children and not self.values_wanted:
            # (Values read as they come, an open run's: each input's value is loaded
            # here, which can fail after Dask finished it: nothing goes ahead.)
            roots = []
            for item in batch:
                name = item[5]
                if name is not None and item[0] in self.live:
                    self.current[name] = self.live[item[0]]
                    if name in self.eager_children:
                        roots.append(name)
            if roots:
                self._ahead_from(roots)

    # -- eager submission ----------------------------------------------------------------
    #
    # A CPU task whose inputs are all CPU tasks on the cluster (no resources, timeout,
    # skip_none, order-only dependency or fan-out) goes to the cluster as soon as every
    # input has a Dask future, with those futures as its arguments: Dask starts it the
    # moment its inputs finish, worker to worker, as a plain Dask graph does, instead of
    # after Dask's "finished" report and a submission round trip per link. Its value is
    # fetched as soon as Dask has it (unless it may stay on the cluster: ``_landed``).
    # When the run starts the task (its inputs done, in the scheduler's order), the
    # attempt takes over that submission. An input's attempt that fails (or is
    # cancelled) takes its eager dependents with it: they are cancelled, and the run
    # skips or retries as it always does.

    def _ahead_from(self, roots: list[str]) -> None:
        """Submit the eager dependents of ``roots`` whose inputs all have a Dask future
        (one map per level), then theirs, up to ``ahead_window`` submitted ahead."""
        level = roots
        while level and len(self.ahead) < self.ahead_window:
            ready: list[tuple[Task, list[Any], dict[str, Any]]] = []
            seen: set[str] = set()
            for parent in level:
                for child in self.eager_children.get(parent, ()):
                    c = child.name
                    if c in seen or c in self.ahead or c in self.attempts:
                        continue
                    inputs = self._input_futures(child)
                    if inputs is not None:
                        seen.add(c)
                        ready.append((child, *inputs))
            del ready[max(0, self.ahead_window - len(self.ahead)) :]
            if not ready:
                return
            self._submit_ahead(ready)
            level = [child.name for child, _, _ in ready if child.name in self.ahead]

    def _input_futures(self, task: Task) -> tuple[list[Any], dict[str, Any]] | None:
        current, kept = self.current, self.kept
        found: dict[str, Any] = {}
        for d in task.deps:
            f = current.get(d)
            if f is None:
                f = kept.get(d)
                if f is None:
                    return None
            found[d] = f
        args = [found[d] for d in task.args]
        kwargs = {p: found[d] for p, d in task.kwargs} if task.kwargs else {}
        return args, kwargs

    def _submit_ahead(self, ready: list[tuple[Task, list[Any], dict[str, Any]]]) -> None:
        journal = self.journal
        items = []
        for child, args, kwargs in ready:
            name = child.name
            fn = self.fn_bytes.get(name)
            if fn is None:
                continue
            # Attempt 1's key; one sent ahead before (and dropped with an input's
            # failed attempt) is still known to the client: Dask would hand it back.
            dropped = self.dropped.get(name, 0)
            key = f"{name}-{self.token}-1" if not dropped else f"{name}-{self.token}-1-{dropped}"
            note = None if journal is None else (journal, key)
            gated = (self.token, key, fn, child.is_async, args, kwargs, note)
            items.append(
                (key, (_dask_worker.run_ahead, gated), None, next(self._order), None, name)
            )
        if not items:
            return
        try:
            futures = self._map(self.client, items)
        except Exception:  # noqa: BLE001 - not ahead, then: each goes when it starts
            return
        blobs: list[Any] = [None] * len(items)
        if self.stores:  # the result's bytes, made on the worker that holds it
            blob_items = [
                (f"{it[0]}-bytes", (_dask_worker.dumps, (f,)), None, it[3], None, None)
                for it, f in zip(items, futures, strict=True)
            ]
            try:
                blobs = self._map(self.client, blob_items)
            except Exception:  # noqa: BLE001 - as above
                self._cancel_futures(futures)
                return
            for blob_item, b in zip(blob_items, blobs, strict=True):
                self.live[blob_item[0]] = b
        self.gated = True
        at = self.clock.time()
        for item, f, b in zip(items, futures, blobs, strict=True):
            key, name = item[0], item[5]
            self.live[key] = f
            self.current[name] = f
            fetching: asyncio.Future[Any] | None = None
            if b is not None or name not in self.lazy or self.values_wanted:
                # Its value (or bytes) fetched as soon as Dask has it. A result left on
                # the cluster has nothing to fetch: the attempt that takes it over waits
                # for it (``_landed``), one task a link less on a chain.
                fetching = asyncio.ensure_future(self._value(f if b is None else b))
                fetching.add_done_callback(_retrieved)
            self.ahead[name] = _Ahead(key, f, fetching, at)

    def _cancel_futures(self, futures: list[Any]) -> None:
        client = self.client
        if client is not None and client.status in ("running", "connecting"):
            sent = asyncio.ensure_future(client.cancel(futures, force=True))
            self._cancels.add(sent)
            sent.add_done_callback(_quietly_discard(self._cancels))

    def _drop_ahead(self, name: str, maybe_ran: bool = False) -> None:
        """``name``'s attempt ended without a value: cancel its dependents submitted
        ahead with its future (and theirs). ``maybe_ran``: the attempt was cancelled, so
        it may have finished on the cluster and they may have begun (the run's stop asks
        the workers: :meth:`stopped`); an attempt that failed on the cluster took them
        with it before they could."""
        if not self.ahead:
            return
        stack = [name]
        while stack:
            parent = stack.pop()
            for child in self.eager_children.get(parent, ()):
                gone = self.ahead.pop(child.name, None)
                if gone is None:
                    continue
                self.current.pop(child.name, None)
                if maybe_ran:
                    self.withdrawn[child.name] = gone
                self.dropped[child.name] = self.dropped.get(child.name, 0) + 1
                if gone.fetching is not None:
                    gone.fetching.cancel()
                self._cancel([gone.key, f"{gone.key}-bytes"])
                stack.append(child.name)

    def _map(self, client: Any, items: list[Any]) -> list[Any]:
        first = items[0]
        fn = first[1][0]
        columns = list(zip(*(item[1][1] for item in items), strict=True))
        # Dask orders by (-priority, submission, position in the map): the earliest
        # dispatch of the batch gives the batch its priority, the map keeps the rest
        # in order, so the scheduler's critical-path order survives on the cluster.
        futures: list[Any] = client.map(
            fn,
            *columns,
            key=[item[0] for item in items],
            pure=False,
            retries=0,
            priority=-first[3],
            resources=first[2],
            batch_size=None,
        )
        return futures

    async def _value(self, future: Any) -> Any:
        """``future``'s value: its error at once (Dask reports errors to the client),
        its value fetched with the others ready in the same turn of the loop."""
        await future._state.wait()  # what Future.result awaits: no message
        if future.status != "finished":
            return await future  # raises the error, or the cancellation
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._to_fetch.append((future, waiter))
        if not self._fetch_soon:
            self._fetch_soon = True
            loop.call_soon(self._fetch_all)
        return await waiter

    async def _landed(self, name: str, future: Any) -> RemoteResult:
        """``future``'s result left on the cluster, once Dask has it (its error at once,
        as :meth:`_value` gives it): nothing is fetched (see ``settle``)."""
        await future._state.wait()  # what Future.result awaits: no message
        if future.status != "finished":
            await future  # raises the error, or the cancellation
        return RemoteResult(name, future)

    def _fetch_all(self) -> None:
        """Fetch what is ready: while two fetches are out, the rest waits for one of
        them to end and then goes in one (so a wide graph's results come in batches
        as large as the round trip makes them, a chain's one at a time at once)."""
        self._fetch_soon = False
        if len(self._fetches) >= 2:
            return  # the next to end starts the rest
        batch, self._to_fetch = self._to_fetch, []
        batch = [item for item in batch if not item[1].done()]
        if batch:
            fetch = asyncio.ensure_future(self._fetch(batch))
            self._fetches.add(fetch)
            fetch.add_done_callback(self._fetched)

    def _fetched(self, fetch: asyncio.Future[Any]) -> None:
        self._fetches.discard(fetch)
        if not fetch.cancelled():
            fetch.exception()  # retrieved: its waiters have the outcome
            if self._to_fetch and not self._closed:
                self._fetch_all()

    async def _fetch(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            # From the workers straight to the driver on the run's own (local) cluster; on
            # another, as the client says (its workers may not be reachable from here).
            direct = True if self.owns_cluster else None
            values = await self.client.gather([f for f, _ in batch], direct=direct)
        except Exception:  # noqa: BLE001 - one lost or cancelled: each alone
            for f, waiter in batch:
                try:
                    value = await f
                except Exception as exc:  # noqa: BLE001 - the attempt's outcome
                    if not waiter.done():
                        waiter.set_exception(exc)
                else:
                    if not waiter.done():
                        waiter.set_result(value)
            return
        for (_, waiter), value in zip(batch, values, strict=True):
            if not waiter.done():
                waiter.set_result(value)

    def _finished(self, task: Task, future: Any) -> None:
        """Keep ``future`` while a CPU dependent still needs it; release what this
        task's own dependencies no longer need."""
        name = task.name
        remote = self.remote
        if self.uses.get(name):
            self.kept[name] = future
        elif name not in remote:
            future.release()
        for d in task.deps:
            left = self.uses.get(d)
            if left is None:
                continue
            if left <= 1:
                del self.uses[d]
                f = self.kept.pop(d, None)
                if f is not None and d not in remote:
                    f.release()
            else:
                self.uses[d] = left - 1

    async def _load(self, name: str, data: bytes) -> Any:
        from .process import _unpickled

        if len(data) <= _INLINE:
            return _unpickled(name, data)
        if self._loads is None:
            from .threads import Threads

            self._loads = Threads(anyio.CapacityLimiter(2))
        return await self._loads.run(functools.partial(_unpickled, name, data))

    def _resources_of(self, task: Task) -> dict[str, float] | None:
        mapping = self.backend.resources
        if not mapping or not task.resources:
            return None
        need: dict[str, float] = {}
        for r in task.resources:
            for k, v in mapping.get(r, {}).items():
                need[k] = need.get(k, 0.0) + v
        if not need:
            return None
        have = self.worker_resources
        if have is not None:
            missing = {k: v for k, v in need.items() if have.get(k, 0.0) < v}
            if missing:
                raise ValueError(
                    f"task {task.name!r} asks Dask for worker resources {need} (from "
                    f"DaskBackend(resources=...)), but no worker of the cluster has "
                    f"{missing}: start workers with them (dask worker --resources "
                    "'GPU=1'; for the run's own cluster, "
                    "DaskBackend(cluster_kwargs={'resources': {...}})), or drop the mapping"
                )
        return need

    def _cancel(self, keys: list[str | None]) -> None:
        """Cancel these attempts' futures on the scheduler, without waiting here (a
        cancelled attempt must end at once); ``aclose`` waits for the messages."""
        futures = [f for k in keys if k is not None and (f := self.live.pop(k, None)) is not None]
        client = self.client
        if not futures or client is None or client.status not in ("running", "connecting"):
            return
        sent = asyncio.ensure_future(client.cancel(futures, force=True))
        self._cancels.add(sent)
        sent.add_done_callback(_quietly_discard(self._cancels))

    # -- the connection --------------------------------------------------------------

    async def _open(self) -> Any:
        """The client (connected once; every attempt waits on the same connection)."""
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._connect())
        client = await asyncio.shield(self._opening)
        return client

    async def _connect(self) -> Any:
        try:
            import distributed
        except ImportError as exc:  # pragma: no cover - the test extra installs it
            raise ImportError(
                "DaskBackend needs the distributed package: pip install 'asyncgraph[dask]'"
            ) from exc
        backend = self.backend
        loop = asyncio.get_running_loop()
        if backend.client is not None:
            _check_client_loop(backend.client, loop)
            self.client = backend.client
        elif backend.owns_cluster:
            options: dict[str, Any] = {
                "n_workers": self.n_workers,
                "threads_per_worker": backend.threads_per_worker,
                "processes": backend.processes,
                "dashboard_address": ":0",
                # asyncgraph reports every failure itself; Dask's own log lines (a worker
                # heartbeat racing the close, "Compute Failed") would only repeat them.
                "silence_logs": logging.CRITICAL,
                "scheduler_kwargs": {"allowed_failures": backend.allowed_failures},
            }
            options.update(backend.cluster_kwargs)
            options["asynchronous"] = True
            import dask

            # A worker holds only the root tasks it runs (Dask's default, 1.1, queues
            # one more on each one-thread worker): when a task kills its worker, a task
            # merely waiting there would be blamed too under allowed_failures=0.
            self._tracker_was_running = _tracker_running()
            with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
                self.cluster = await _start_cluster(options)
            self.owns_cluster = True
            import tempfile

            self.journal = tempfile.mkdtemp(prefix="asyncgraph-dask-")
            try:
                self.client = await distributed.Client(  # type: ignore[no-untyped-call]
                    self.cluster, asynchronous=True, set_as_default=False
                )
            except BaseException:
                await wait_to_the_end(self.cluster.close())
                raise
            self.owns_client = True
        else:
            target = backend.cluster if backend.cluster is not None else backend.address
            try:
                self.client = await distributed.Client(  # type: ignore[no-untyped-call]
                    target,
                    asynchronous=True,
                    set_as_default=False,
                    timeout=backend.connect_timeout,
                )
            except OSError as exc:
                raise OSError(
                    f"DaskBackend could not connect to the Dask scheduler at {target!r} "
                    f"within {backend.connect_timeout}s ({exc}); check the address and "
                    "that the scheduler runs, or pass DaskBackend() for a LocalCluster"
                ) from exc
            self.owns_client = True
        if not backend.owns_cluster and backend.client is None:
            self.window = 2 * _cached_threads(self.client) or 2
        if backend.resources:
            identity = await self.client.scheduler.identity(n_workers=-1)
            have: dict[str, float] = {}
            for w in identity.get("workers", {}).values():
                for k, v in (w.get("resources") or {}).items():
                    have[k] = max(have.get(k, 0.0), float(v))
            self.worker_resources = have
        return self.client

    # -- the run's end -----------------------------------------------------------------

    def values_at_end(self) -> None:
        """The run calls :meth:`settle` before it closes: a result may stay on the
        cluster until then (a stream, which never settles, does not call this)."""
        self.values_wanted = False

    def want_values(self) -> None:
        """Something reads this run's results as they come (an open run's
        ``as_completed``, its ``graph``): every result is fetched as its task ends."""
        self.values_wanted = True

    async def settle(self, records: dict[str, Any]) -> None:
        """The run ends with a result graph (called before :meth:`aclose`, with the
        run's records): fetch every result left on the cluster in one ``gather`` and
        put the values in their records; with ``keep_remote``, leave the records'
        :class:`RemoteResult` handles as they are, the user's client holding them."""
        remote = self.remote
        if not remote or self.client is None:
            return
        names = [n for n, h in remote.items() if getattr(records.get(n), "result", None) is h]
        if self.backend.keep_remote:
            for n in names:  # the handle's now: aclose neither cancels nor releases it
                del remote[n]
                self.kept.pop(n, None)
            return
        futures = [remote[n].future for n in names]
        direct = True if self.owns_cluster else None
        try:
            values = await self.client.gather(futures, direct=direct)
        except Exception:  # noqa: BLE001 - one lost: each alone, to say which
            values = []
            for f in futures:
                try:
                    values.append(await f)
                except Exception as exc:  # noqa: BLE001 - recorded on its task
                    values.append(_Lost(exc))
        for n, value in zip(names, values, strict=True):
            rec = records[n]
            if type(value) is _Lost:
                error = RuntimeError(
                    f"task {n!r} was done on the Dask cluster, but its result could not "
                    f"be fetched when the run ended: {type(value.exc).__name__}: {value.exc}"
                )
                records[n] = dataclasses.replace(
                    rec, status=State.FAILED, result=None, error=error, traceback=None
                )
            else:
                records[n] = dataclasses.replace(rec, result=value)

    async def stopped(self) -> dict[str, tuple[float | None, str]]:
        """The run stops with tasks it has not started: of those sent ahead (and not
        taken over by an attempt), the ones that began on the cluster anyway, as
        ``{task: (when it was sent, what to add to its record's reason)}``.

        Each is cancelled first (so the scheduler gives it to no worker that joins
        later), then every worker's gate is closed (``_dask_worker.close_gate``): after
        that no attempt the run sent ahead begins anywhere, and each worker says which
        began before. On the run's own cluster the journal also answers for a worker
        that died. If the workers cannot be asked, each such task "may have begun"."""
        sent = {**self.withdrawn, **self.ahead}
        self.withdrawn.clear()
        client = self.client
        if not sent or client is None:
            return {}
        for name, gone in self.ahead.items():
            if gone.fetching is not None:
                gone.fetching.cancel()
            self.current.pop(name, None)
        self.ahead.clear()
        keys = [k for a in sent.values() for k in (a.key, f"{a.key}-bytes")]
        futures = [f for k in keys if (f := self.live.pop(k, None)) is not None]
        began: set[str] | None = None
        why = ""
        with shielded():
            try:
                if futures:
                    await asyncio.wait_for(client.cancel(futures, force=True), self.gate_timeout)
                if self._cancels:  # those dropped with a cancelled input went before
                    await asyncio.wait(list(self._cancels), timeout=self.gate_timeout)
                replies = await asyncio.wait_for(
                    client.run(_dask_worker.close_gate, self.token), self.gate_timeout
                )
                self._gate_closed = True
                began = {k for ks in replies.values() for k in ks}
            except Exception as exc:  # noqa: BLE001 - recorded as what is not known
                why = f"{type(exc).__name__}: {exc}"
        journal = self.journal
        runs_on = (
            "its worker stopped with the run's own cluster"
            if self.owns_cluster
            else "its call may run on there until it returns"
        )
        found: dict[str, tuple[float | None, str]] = {}
        for name, a in sent.items():
            if began is None:
                found[name] = (
                    None,
                    "it had been sent to the Dask cluster ahead of its inputs' results "
                    "(eager=True) and may have begun there: the workers could not be asked "
                    f"({why})",
                )
            elif a.key in began or (
                journal is not None and _dask_worker.journal_has(journal, a.key)
            ):
                found[name] = (
                    a.at,
                    "it had begun on the Dask cluster, sent there ahead of its inputs' "
                    f"results (eager=True); {runs_on}",
                )
        return found

    async def aclose(self) -> None:
        """Cancel every future of the run still held, then close what the run started
        (its client, its cluster); a user's client or cluster is left open."""
        with shielded():
            client = self.client
            if self.gated and not self._gate_closed and client is not None:
                # What the workers noted of this run's attempts sent ahead.
                with contextlib.suppress(Exception):
                    if client.status == "running":
                        await asyncio.wait_for(
                            client.run(_dask_worker.forget_gate, self.token), self.gate_timeout
                        )
            if self._runners:  # attempts the run cancelled, ending their cancel path
                await asyncio.wait(list(self._runners))
            if self._loads is not None:
                self._loads.close()
            if self._opening is not None and not self._opening.done():
                await asyncio.wait([self._opening])
            client = self.client
            for gone in self.ahead.values():
                if gone.fetching is not None:
                    gone.fetching.cancel()
            self.ahead.clear()
            self.current.clear()
            remote = self.remote
            # Results left on the cluster have finished: released, not cancelled (a
            # forced cancel also cancels their dependents, and the scheduler asserts
            # when one of those is in the same message).
            futures = [*self.live.values()]
            futures += [f for n, f in self.kept.items() if n not in remote]
            finished = [h.future for h in remote.values()]
            remote.clear()
            for sending in self.scattered.values():
                if sending.done() and not sending.cancelled() and sending.exception() is None:
                    futures.append(sending.result())
                else:
                    sending.cancel()
            self.scattered.clear()
            self.live.clear()
            self.kept.clear()
            if client is not None and futures and client.status == "running":
                # A connection already gone holds nothing on the scheduler.
                with contextlib.suppress(Exception):
                    await client.cancel(futures, force=True)
            for f in futures:
                f.release()
            for f in finished:
                f.release()
            if self._cancels:
                await asyncio.wait(list(self._cancels))
            for fetch in list(self._fetches):  # nobody waits for these any more
                fetch.cancel()
            if self._fetches:
                await asyncio.wait(list(self._fetches))
            if self.owns_client and client is not None:
                await client.close()
            if self.owns_cluster and self.cluster is not None:
                if not self.backend.processes:
                    # Worker threads of this process: a call the run abandoned (a
                    # timeout, a cancel) cannot be stopped, and a worker's close would
                    # wait 30 s for it. The run does not wait: its thread ends on its own.
                    for worker in list(getattr(self.cluster, "workers", {}).values()):
                        with contextlib.suppress(Exception):
                            await worker.close(executor_wait=False, reason="run ended")
                await self.cluster.close()
                if not self._tracker_was_running:
                    _stop_tracker()  # started by the cluster's spawn: it goes with it
            if self.journal is not None:
                import shutil

                _dask_worker.forget_journal(self.journal)  # worker threads of this process
                shutil.rmtree(self.journal, ignore_errors=True)
            self._closed = True


_RUN_CLUSTER: Any = None


def _run_cluster_class() -> Any:
    """The LocalCluster a run owns, which keeps every worker it was started with.

    A worker process that dies (a task's ``os._exit``, a signal) is restarted by its
    nanny. A plain ``LocalCluster`` (``SpecCluster``) also closes the nanny of a worker
    that has not registered again within ``distributed.deploy.lost-worker-timeout``
    (15 s), and never starts another: under load a restart took 20 s, so the cluster
    lost that worker for good, the restarted worker was stopped under the task it ran
    (a retry, a free resubmission), and once every worker was gone the run's tasks
    waited in Dask's queue forever. Here a lost worker's nanny is left to its restart,
    however long it takes, and a nanny that is gone itself is replaced.
    """
    global _RUN_CLUSTER
    if _RUN_CLUSTER is not None:
        return _RUN_CLUSTER
    from distributed import LocalCluster
    from distributed.core import Status
    from distributed.deploy.cluster import Cluster

    running = (Status.init, Status.starting, Status.running)

    class RunCluster(LocalCluster):
        def _update_worker_status(self, op: str, msg: Any) -> None:
            if op != "remove":
                super()._update_worker_status(op, msg)  # type: ignore[no-untyped-call]
                return
            name = self.scheduler_info["workers"].get(msg, {}).get("name")
            # The bookkeeping, without SpecCluster's delayed close of the nanny.
            Cluster._update_worker_status(self, op, msg)  # type: ignore[no-untyped-call]
            worker = self.workers.get(name)
            if worker is None or self.status != Status.running:
                return
            if getattr(worker, "status", Status.running) not in running:
                del self.workers[name]  # its nanny closed: start the spec's worker again
                self._futures.add(asyncio.ensure_future(self._correct_state()))  # type: ignore[no-untyped-call]

    _RUN_CLUSTER = RunCluster
    return RunCluster


def _shippable(data: bytes) -> bytes:
    """A pickled function as it goes inside a Dask task: in base64, whose alphabet has no
    ``_``. Dask pickles each task with plain pickle, and pickles it again with
    cloudpickle when the result holds the bytes ``__main__`` (which a function defined in
    a script or a notebook, pickled by value, always holds): 14-16 % of the driver's
    CPU per link of a chain, for nothing, since our bytes need no cloudpickle.
    :func:`~asyncgraph._executors._dask_worker.run_attempt` decodes it."""
    return binascii.b2a_base64(data, newline=False)


def _release_scattered(sending: asyncio.Future[Any]) -> None:
    if not sending.cancelled() and sending.exception() is None:
        sending.result().release()


class _Ahead:
    """An attempt submitted ahead: its key, its Dask future, the fetch of its value (or
    of its bytes, with a store) that starts once Dask has it, and when it was sent."""

    __slots__ = ("at", "fetching", "future", "key")

    def __init__(
        self, key: str, future: Any, fetching: asyncio.Future[Any] | None, at: float
    ) -> None:
        self.key = key
        self.future = future
        self.fetching = fetching
        self.at = at


def _takes_futures(task: Task) -> bool:
    """Whether ``task`` runs on the cluster and takes its inputs as Dask futures there
    (so an input of it may stay on the cluster): a plain CPU task, not a fan-out
    template or element (expanded and collected on the driver), not ``skip_none``
    (decided on the driver from the values), not a stream stage."""
    return (
        task.kind is Kind.CPU
        and task.over is None
        and task.family is None
        and not task.skip_none
        and task.stream is None
    )


def _eager(task: Task, tasks: Mapping[str, Task]) -> bool:
    """Whether ``task`` may go to the cluster with its inputs' futures before the run
    starts it: a CPU task with inputs, each a CPU task without a timeout, and nothing the
    run must decide or count first (resources and limits, a timeout's clock, skip_none,
    order-only dependencies, fan-out, a stream stage). ``check`` also asks that every
    input's result stays on the cluster (``lazy``)."""
    if (
        task.kind is not Kind.CPU
        or not task.deps
        or task.resources
        or task.timeout is not None
        or task.skip_none
        or task.after
        or task.over is not None
        or task.family is not None
        or task.stream is not None
    ):
        return False
    for d in task.deps:
        dep = tasks.get(d)
        if dep is None or dep.kind is not Kind.CPU or dep.over is not None:
            return False
        if dep.timeout is not None:  # it may time out here after Dask finished it
            return False
    return True


def _retrieved(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()  # an attempt dropped before the run took it: no news


class _Lost:
    """A result left on the cluster that could not be fetched at the run's end."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _NeverStartedError(Exception):
    """Dask blamed an attempt that never began for its worker's death."""


def _killed(exc: BaseException) -> bool:
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    from distributed.scheduler import KilledWorker

    return isinstance(exc, KilledWorker)


async def _resolve(child: asyncio.Future[Any], call: Any) -> None:
    """Run one attempt and hand its outcome to ``child`` (the future the run watches)."""
    try:
        value = await call
    except asyncio.CancelledError:
        if not child.done():
            child.cancel()
        raise
    except BaseException as exc:  # noqa: BLE001 - the attempt's outcome, reported
        if not child.done():
            child.set_exception(exc)
        return
    if not child.done():
        child.set_result(value)


def _stop_runner(runner: asyncio.Task[None], child: asyncio.Future[Any]) -> None:
    if child.cancelled():  # the run cancelled the attempt: cancel its task too
        runner.cancel()


def _tracker_running() -> bool:
    """Whether multiprocessing's resource tracker runs (a process of its own, started
    by the first spawn, which an owned LocalCluster of processes makes)."""
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_pid", None) is not None


def _stop_tracker() -> None:
    """Stop the resource tracker the run's cluster started (it would outlive the run
    as a child of this process); the next spawn starts a new one."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()


def _quietly_discard(pending: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    def done(f: asyncio.Future[Any]) -> None:
        pending.discard(f)
        if not f.cancelled():
            f.exception()  # retrieved: a lost connection is no news here

    return done


def _check_client_loop(client: Any, loop: asyncio.AbstractEventLoop) -> None:
    own = getattr(getattr(client, "loop", None), "asyncio_loop", None)
    if own is not loop:
        raise ValueError(
            "DaskBackend(client): the Client was made on another event loop than the run's "
            "(run_sync and notebooks run on a loop of their own); pass the scheduler "
            f"address instead, DaskBackend({_address_of(client)!r}), or make the "
            "Client(asynchronous=True) inside the coroutine that awaits asyncgraph.run"
        )


def _cached_threads(client: Any) -> int:
    try:
        return int(client.scheduler_info().get("total_threads") or 0)
    except Exception:  # noqa: BLE001 - unknown: no cap
        return 0


def _stores(pickled: Callable[[str, bytes], None] | None) -> bool:
    """Whether the run keeps results in a store (its ledger wants the bytes)."""
    if pickled is None:
        return False
    owner = getattr(pickled, "__self__", None)
    return bool(getattr(owner, "stores", True))


def _unserializable(
    name: str, sent: tuple[list[Any], dict[str, Any]], exc: BaseException
) -> TypeError:
    """Dask's "Could not serialize object of type LLGExpr" in the task's terms: which of
    its inputs cannot be pickled, as the process pool says it."""
    import cloudpickle

    try:
        cloudpickle.dumps(sent)
    except Exception as cause:  # noqa: BLE001 - whatever stops pickling
        return TypeError(
            f"the arguments of task {name!r} cannot be pickled to send them to a Dask "
            f"worker (kind='cpu'): {type(cause).__name__}: {cause}"
        )
    return TypeError(f"task {name!r} could not be sent to its Dask worker: {exc}")


def _translated(name: str, exc: BaseException) -> BaseException:
    """A Dask error in asyncgraph's terms; a task's own error as it is."""
    fatal = getattr(exc, "__asyncgraph_fatal__", None)
    if isinstance(fatal, BaseException):  # the task's SystemExit/KeyboardInterrupt
        return fatal
    remote = getattr(exc, "__asyncgraph_remote__", None)
    if isinstance(remote, tuple) and len(remote) == 3:  # an error that cannot be pickled
        from .._exceptions import RemoteError

        error = RemoteError(*remote)
        error.__asyncgraph_traceback__ = remote[2]  # type: ignore[attr-defined]
        return error
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        from distributed.scheduler import KilledWorker

        if isinstance(exc, KilledWorker):
            died = WorkerDiedError(name, None)
            died.args = (
                f"the Dask worker running task {name!r} died before returning a result "
                f"(os._exit, a signal or running out of memory; Dask: {exc}); Dask "
                "replaces the worker",
            )
            return died
        if isinstance(exc, distributed.client.FutureCancelledError):
            from .._exceptions import TaskCancelled

            return TaskCancelled(
                f"task {name!r}: its Dask future was cancelled by someone other than the "
                f"run ({exc})"
            )
    return exc


async def _start_cluster(options: dict[str, Any]) -> Any:
    """The run's own cluster, started; a failed start says its likely cause and the way out.

    Dask's worker processes start by importing the main module (multiprocessing's spawn),
    so a script that starts its run at import time, without the ``__main__`` guard, starts
    another run in each worker: the worker never comes up and Dask says only "Nanny
    failed to start".
    """
    try:
        return await _run_cluster_class()(**options)
    except Exception as exc:
        if not options.get("processes", True):
            raise
        raise RuntimeError(
            f"DaskBackend could not start its LocalCluster's worker processes ({exc}). "
            "Dask starts each worker by importing the main module, so a script that starts "
            'a run when imported must put that call under `if __name__ == "__main__":`; '
            "or pass DaskBackend(processes=False) for worker threads in this process"
        ) from exc
