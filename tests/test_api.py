"""The public surface: pinned, so a change to it is a decision, not an accident."""

from __future__ import annotations

import subprocess
import sys

import asyncgraph as ag


def test_all_is_pinned():
    assert ag.__all__ == [
        "Batch", "CycleError", "DaskBackend", "DuplicateTaskError", "Event", "EventKind",
        "ExecutorBackend", "Graph", "GraphError", "InlineBackend", "InvalidTaskError",
        "Kind", "MissingDependencyError", "MissingResultError", "NO_RESULT", "OpenRun",
        "OpenStream", "PicklingError", "ProcessBackend", "RemoteError", "RemoteResult",
        "SQLiteStore",
        "SignatureError", "StageSummary", "State", "Store", "StoreError",
        "StoreLockedError", "StoreMismatchError", "StoredResult", "StreamFailures",
        "StreamPlan", "StreamReplayError", "StreamResult", "Summary", "Task",
        "TaskCancelled", "TaskError", "TaskFailures", "TaskRecord", "Terminated",
        "UnknownTaskError", "UnpicklingError", "UnstorableResultError", "WorkerDiedError",
        "create_graph", "fingerprints", "history", "load", "mark_done", "mark_done_except",
        "open_run", "open_stream", "plan", "plan_stream", "reset", "reset_failed", "run",
        "run_stream", "run_stream_sync", "run_sync", "subgraph",
    ]
    for name in ag.__all__:
        assert getattr(ag, name).__module__.startswith("asyncgraph")


def test_state_values_are_stable():
    assert [s.value for s in ag.State] == [
        "pending", "running", "done", "failed", "skipped", "cancelled"]
    assert [k.value for k in ag.Kind] == ["io", "cpu"]


def test_error_tree():
    for cls in (ag.CycleError, ag.MissingDependencyError, ag.DuplicateTaskError,
                ag.SignatureError, ag.InvalidTaskError, ag.UnknownTaskError,
                ag.PicklingError):
        assert issubclass(cls, ag.GraphError)
    for cls in (ag.RemoteError, ag.WorkerDiedError, ag.TaskCancelled, ag.UnpicklingError):
        assert issubclass(cls, ag.TaskError)
    assert issubclass(ag.UnstorableResultError, ag.TaskError)
    assert issubclass(ag.MissingResultError, ag.TaskError)
    for cls in (ag.StoreLockedError, ag.StoreMismatchError):
        assert issubclass(cls, ag.StoreError)
    assert issubclass(ag.TaskFailures, ExceptionGroup)


def test_import_is_cheap():
    """``import asyncgraph`` must not pull in pandas (only to_frame needs it), sqlite3
    (only a store needs it), nor the optional libraries of observing a run."""
    heavy = ["pandas", "uvloop", "sqlite3", "tqdm", "matplotlib", "IPython"]
    code = f"import sys, asyncgraph; print(*[m in sys.modules for m in {heavy!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False"] * len(heavy)
