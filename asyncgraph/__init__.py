"""asyncgraph: run a dependency map of functions and coroutines on an event loop.

IO tasks run on the loop (or in threads), CPU tasks in a pool of worker processes; the
result is a new Graph carrying every task's state. See README.md and docs/.
"""

from types import FunctionType as _FunctionType
from typing import get_type_hints as _get_type_hints

from ._api import Graph as Graph
from ._api import create_graph as create_graph

# Backends (issue 12): where a run's CPU tasks go (DaskBackend comes from its own module).
from ._backends import ExecutorBackend as ExecutorBackend
from ._backends import InlineBackend as InlineBackend
from ._backends import ProcessBackend as ProcessBackend
from ._events import Event as Event
from ._events import EventKind as EventKind
from ._exceptions import CycleError as CycleError
from ._exceptions import DuplicateTaskError as DuplicateTaskError
from ._exceptions import GraphError as GraphError
from ._exceptions import InvalidTaskError as InvalidTaskError
from ._exceptions import MissingDependencyError as MissingDependencyError
from ._exceptions import MissingResultError as MissingResultError
from ._exceptions import PicklingError as PicklingError
from ._exceptions import RemoteError as RemoteError
from ._exceptions import SignatureError as SignatureError
from ._exceptions import StoreError as StoreError
from ._exceptions import StoreLockedError as StoreLockedError
from ._exceptions import StoreMismatchError as StoreMismatchError
from ._exceptions import TaskCancelled as TaskCancelled
from ._exceptions import TaskError as TaskError
from ._exceptions import TaskFailures as TaskFailures
from ._exceptions import Terminated as Terminated
from ._exceptions import UnknownTaskError as UnknownTaskError
from ._exceptions import UnpicklingError as UnpicklingError
from ._exceptions import UnstorableResultError as UnstorableResultError
from ._exceptions import WorkerDiedError as WorkerDiedError
from ._executors.dask import DaskBackend as DaskBackend
from ._executors.dask import RemoteResult as RemoteResult
from ._lifetime import run as run
from ._open_run import OpenRun as OpenRun
from ._open_run import open_run as open_run
from ._rewrite import mark_done as mark_done
from ._rewrite import mark_done_except as mark_done_except
from ._rewrite import reset as reset
from ._rewrite import reset_failed as reset_failed
from ._rewrite import subgraph as subgraph
from ._state import NO_RESULT as NO_RESULT
from ._state import State as State
from ._state import StoredResult as StoredResult
from ._state import TaskRecord as TaskRecord
from ._store import SQLiteStore as SQLiteStore
from ._store import Store as Store
from ._store.resume import fingerprints as fingerprints  # issue 16: API gaps
from ._store.resume import history as history
from ._store.resume import load as load
from ._store.resume import plan as plan

# Streams (issue 14): DataFrame batches through @g.stream stages.
from ._stream.api import OpenStream as OpenStream
from ._stream.api import open_stream as open_stream
from ._stream.api import plan_stream as plan_stream
from ._stream.api import run_stream as run_stream
from ._stream.api import run_stream_sync as run_stream_sync
from ._stream.result import Batch as Batch
from ._stream.result import StageSummary as StageSummary
from ._stream.result import StreamFailures as StreamFailures
from ._stream.result import StreamPlan as StreamPlan
from ._stream.result import StreamResult as StreamResult
from ._stream.store import StreamReplayError as StreamReplayError
from ._summary import Summary as Summary
from ._sync import run_sync as run_sync
from ._task import Kind as Kind
from ._task import Task as Task

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "CycleError",
    "DaskBackend",
    "DuplicateTaskError",
    "Event",
    "EventKind",
    "ExecutorBackend",
    "Graph",
    "GraphError",
    "InlineBackend",
    "InvalidTaskError",
    "Kind",
    "MissingDependencyError",
    "MissingResultError",
    "NO_RESULT",
    "OpenRun",
    "OpenStream",
    "PicklingError",
    "ProcessBackend",
    "RemoteError",
    "RemoteResult",
    "SQLiteStore",
    "SignatureError",
    "StageSummary",
    "State",
    "Store",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoredResult",
    "StreamFailures",
    "StreamPlan",
    "StreamReplayError",
    "StreamResult",
    "Summary",
    "Task",
    "TaskCancelled",
    "TaskError",
    "TaskFailures",
    "TaskRecord",
    "Terminated",
    "UnknownTaskError",
    "UnpicklingError",
    "UnstorableResultError",
    "WorkerDiedError",
    "create_graph",
    "fingerprints",
    "history",
    "load",
    "mark_done",
    "mark_done_except",
    "open_run",
    "open_stream",
    "plan",
    "plan_stream",
    "reset",
    "reset_failed",
    "run",
    "run_stream",
    "run_stream_sync",
    "run_sync",
    "subgraph",
]


# Public names say where they are public, as httpx's do: reprs, tracebacks and the docs
# show ``asyncgraph.Graph``, not ``asyncgraph._api.Graph``. Pickle follows:
# ``pickle.dumps(ag.State.DONE)`` names ``asyncgraph.State``, which this module exports,
# so workers and stores still unpickle it (tests/test_exports.py). Constants such as
# NO_RESULT keep their type's module.
_hints = None
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and "__annotations__" in vars(_obj):
        # typing.get_type_hints(cls) evaluates a class's string annotations in the module
        # its __module__ names, which is about to be this one: evaluate them now, where
        # they were written (one naming a type-checking-only import stays as it was).
        try:
            _hints = _get_type_hints(_obj, include_extras=True)
        except Exception:  # noqa: BLE001 - unresolvable before too: left as written
            pass
        else:
            _obj.__annotations__ = {k: _hints[k] for k in vars(_obj)["__annotations__"]}
    if isinstance(_obj, (type, _FunctionType)):
        _obj.__module__ = __name__
del _name, _obj, _hints, _FunctionType, _get_type_hints
