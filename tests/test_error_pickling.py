"""Every asyncgraph error survives pickle, cloudpickle, copy.copy and copy.deepcopy.

A worker process pickles a CPU task's exception back to the driver (falling back to a
RemoteError when the driver cannot rebuild it), and users send failures to other
processes (Dask, multiprocessing, logging). The round trip must give the same type, the
same ``str()``, the same public attributes and notes. Before the errors rebuilt
themselves without their ``__init__``, the ones whose ``__init__`` takes several
arguments did not unpickle at all, and the ones taking one came back with the finished
message where their argument was (a cycle of the message's characters).
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import anyio
import cloudpickle
import pytest

import asyncgraph as ag

GUARD = 60


def failed_run_failures() -> ag.TaskFailures:
    """The TaskFailures of a real run: a graph, notes on its exceptions."""
    g = ag.Graph()
    g.add("load", boom)
    g.add("report", identity, deps=["load"])
    out = ag.run_sync(g)
    with pytest.raises(ag.TaskFailures) as info:
        out.raise_for_failures()
    return info.value


def boom() -> None:
    raise ValueError("the source is empty")


def identity(x: Any) -> Any:
    return x


def with_note(exc: BaseException) -> BaseException:
    exc.add_note("task 'load'")
    return exc


# Each exported error, built with the arguments the library builds it with.
CASES: dict[str, Callable[[], BaseException]] = {
    "GraphError": lambda: ag.GraphError("the graph is invalid"),
    "CycleError": lambda: ag.CycleError(["a", "b", "a"]),
    "MissingDependencyError": lambda: ag.MissingDependencyError("report", ["load", "clean"]),
    "DuplicateTaskError": lambda: ag.DuplicateTaskError("load"),
    "SignatureError": lambda: ag.SignatureError(
        "report", "its signature () cannot accept what its dependencies pass"
    ),
    "InvalidTaskError": lambda: ag.InvalidTaskError(
        "k", "unknown kind 'gpu'; use one of ['io', 'cpu']"
    ),
    "UnknownTaskError": lambda: ag.UnknownTaskError(["zz", "yy"], where="subgraph"),
    "PicklingError": lambda: ag.PicklingError("fit", "cannot pickle '_thread.lock' object"),
    "PicklingError.for_tasks": lambda: ag.PicklingError.for_tasks(
        {"fit": "its function cannot be pickled", "plot": "its module cannot be imported"}
    ),
    "TaskError": lambda: ag.TaskError("stands in for a task's exception"),
    "RemoteError": lambda: ag.RemoteError(
        "mylib.errors.DiskFull", "no space left", "Traceback (most recent call last):\n..."
    ),
    "WorkerDiedError": lambda: ag.WorkerDiedError("fit", -9),
    "WorkerDiedError.exit": lambda: ag.WorkerDiedError("fit", 3),
    "UnpicklingError": lambda: ag.UnpicklingError(
        "fit", "result", "ModuleNotFoundError: No module named 'mylib'"
    ),
    "TaskCancelled": lambda: ag.TaskCancelled("task 'fit' was cancelled: fail_fast"),
    "UnstorableResultError": lambda: ag.UnstorableResultError(
        "the result of task 'fit' cannot be stored: cannot pickle 'generator' object"
    ),
    "MissingResultError": lambda: ag.MissingResultError("report", ["load", "clean"]),
    "StoreError": lambda: ag.StoreError("run.db is not an asyncgraph store"),
    "StoreLockedError": lambda: ag.StoreLockedError(
        "run.db is used by another run (run 3, pid 412 on host1)", "run 3, pid 412 on host1"
    ),
    "StoreMismatchError": lambda: ag.StoreMismatchError(
        "run.db was written by a graph with other task names", ["old"], ["new", "newer"]
    ),
    "Terminated": lambda: ag.Terminated(15),
    "TaskFailures": failed_run_failures,
    "StreamReplayError": lambda: ag.StreamReplayError(
        "source batch 3 is not the batch the store recorded", 3
    ),
    "StreamFailures": lambda: ag.StreamFailures(
        "2 batches failed", [ValueError("bad rows"), KeyError("x")], ag.StreamResult(failed=2)
    ),
    "noted": lambda: with_note(ag.SignatureError("report", "too many positional arguments")),
}

ROUND_TRIPS: dict[str, Callable[[Any], Any]] = {
    "pickle": lambda e: pickle.loads(pickle.dumps(e)),
    "cloudpickle": lambda e: cloudpickle.loads(cloudpickle.dumps(e)),
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}


def state(value: Any) -> Any:
    """What must survive: type, str, args and public attributes, recursively."""
    if isinstance(value, BaseException):
        attrs = {k: state(v) for k, v in vars(value).items() if not k.startswith("_")}
        return (
            type(value),
            str(value),
            state(value.args),
            attrs,
            getattr(value, "__notes__", None),
            getattr(value, "code", None),
            state(getattr(value, "exceptions", None)),
        )
    if isinstance(value, ag.Graph):
        return (repr(value), dict(value.status), value.errors.keys(), value.results)
    if isinstance(value, (list, tuple)):
        return type(value), [state(v) for v in value]
    if isinstance(value, dict):
        return {k: state(v) for k, v in value.items()}
    return value


def test_every_exported_error_has_a_case():
    exported = {
        obj
        for name in ag.__all__
        if isinstance(obj := getattr(ag, name), type) and issubclass(obj, BaseException)
    }
    assert exported == {type(make()) for make in CASES.values()}


@pytest.mark.parametrize("how", ROUND_TRIPS)
@pytest.mark.parametrize("case", CASES)
def test_round_trip_keeps_type_message_and_attributes(case, how):
    original = CASES[case]()
    back = ROUND_TRIPS[how](original)
    assert back is not original
    assert type(back) is type(original)
    assert str(back) == str(original)
    assert state(back) == state(original)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol(protocol):
    """Protocols 0 and 1 too (TaskFailures aside: a Graph needs protocol 2)."""
    for case, make in CASES.items():
        if case != "TaskFailures":
            original = make()
            assert state(pickle.loads(pickle.dumps(original, protocol=protocol))) == state(original)


def test_attributes_come_back_as_built():
    """Spot checks of the state a caller reads, not only equal to the original's."""
    cycle = pickle.loads(pickle.dumps(ag.CycleError(["a", "b", "a"])))
    assert cycle.cycle == ["a", "b", "a"]
    unknown = pickle.loads(pickle.dumps(ag.UnknownTaskError(["zz"], where="reset")))
    assert unknown.names == ["zz"]
    assert str(unknown) == "reset: unknown task name(s): 'zz'"
    assert isinstance(unknown, KeyError)
    invalid = pickle.loads(pickle.dumps(ag.InvalidTaskError("k", "bad kind")))
    assert isinstance(invalid, ValueError)
    assert invalid.task == "k"
    terminated = pickle.loads(pickle.dumps(ag.Terminated(15)))
    assert terminated.code == 143
    assert terminated.signal == 15
    assert terminated.args == (143,)
    mismatch = pickle.loads(pickle.dumps(ag.StoreMismatchError("m", ["old"], ["new"])))
    assert (mismatch.only_in_store, mismatch.only_in_graph) == (("old",), ("new",))
    died = pickle.loads(pickle.dumps(ag.WorkerDiedError("fit", -9)))
    assert (died.task, died.exitcode) == ("fit", -9)
    assert "SIGKILL" in str(died)
    failures = pickle.loads(pickle.dumps(failed_run_failures()))
    assert failures.graph.status["load"] == ag.State.FAILED
    assert [type(e) for e in failures.exceptions] == [ValueError]
    assert failures.exceptions[0].__notes__ == ["task 'load'"]


def test_errors_raised_by_the_library_round_trip():
    def raised(action: Callable[[], object]) -> Exception:
        with pytest.raises(ag.GraphError) as info:
            action()
        return info.value

    cyclic = ag.Graph()
    cyclic.add("a", identity, deps=["b"])
    cyclic.add("b", identity, deps=["a"])
    dangling = ag.Graph()
    dangling.add("a", identity, deps=["x"])
    one = ag.Graph()
    one.add("a", lambda: 1)
    errors = [
        raised(cyclic.validate),
        raised(dangling.validate),
        raised(lambda: one.add("a", lambda: 2)),
        raised(lambda: one.add("b", lambda: 1, deps=["a"])),
        raised(lambda: ag.Graph().add("k", lambda: 1, kind="gpu")),
        raised(lambda: one.subgraph(["zz"])),
    ]
    assert [type(e).__name__ for e in errors] == [
        "CycleError",
        "MissingDependencyError",
        "DuplicateTaskError",
        "SignatureError",
        "InvalidTaskError",
        "UnknownTaskError",
    ]
    for error in errors:
        for how in ROUND_TRIPS.values():
            assert state(how(error)) == state(error)


class PipelineError(ag.TaskError):
    """A user's subclass of an asyncgraph error, with its own multi-argument __init__."""

    def __init__(self, stage: str, code: int, detail: str) -> None:
        super().__init__(f"stage {stage} failed with code {code}: {detail}")
        self.stage = stage
        self.code = code


class PlainUserError(Exception):
    """A user's own error with a multi-argument __init__: pickle cannot rebuild it."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


def test_subclass_with_its_own_init_round_trips():
    original = with_note(PipelineError("clean", 3, "bad rows"))
    for how in ROUND_TRIPS.values():
        back = how(original)
        assert state(back) == state(original)
        assert (back.stage, back.code) == ("clean", 3)


def raise_signature_error() -> None:
    raise ag.SignatureError("inner", "its signature () cannot accept 1 positional result(s)")


def raise_cycle_error() -> None:
    raise ag.CycleError(["x", "y", "x"])


def raise_store_locked() -> None:
    raise ag.StoreLockedError("run.db is used by run 3 (pid 412)", "run 3, pid 412")


def raise_pipeline_error() -> None:
    raise PipelineError("clean", 3, "bad rows")


def raise_plain_user_error() -> None:
    raise PlainUserError(7, "disk on fire")


async def test_cpu_task_errors_arrive_in_the_parent_as_raised():
    expected = {
        "signature": ag.SignatureError(
            "inner", "its signature () cannot accept 1 positional result(s)"
        ),
        "cycle": ag.CycleError(["x", "y", "x"]),
        "locked": ag.StoreLockedError("run.db is used by run 3 (pid 412)", "run 3, pid 412"),
        "pipeline": PipelineError("clean", 3, "bad rows"),
    }
    raisers = {
        "signature": raise_signature_error,
        "cycle": raise_cycle_error,
        "locked": raise_store_locked,
        "pipeline": raise_pipeline_error,
    }
    g = ag.Graph()
    for name, fn in raisers.items():
        g.add(name, fn, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    for name, error in expected.items():
        got = out.errors[name]
        assert not isinstance(got, ag.RemoteError), (name, got)
        assert type(got) is type(error)
        assert str(got) == str(error)
        public = {k: v for k, v in vars(got).items() if not k.startswith("_")}
        assert public == {k: v for k, v in vars(error).items() if not k.startswith("_")}
        assert raisers[name].__name__ in out.records[name].traceback


async def test_user_error_that_cannot_be_rebuilt_arrives_as_remote_error_naming_it():
    with pytest.raises(TypeError):  # the premise: the user's __init__ cannot be rebuilt
        pickle.loads(pickle.dumps(PlainUserError(7, "x")))
    g = ag.Graph()
    g.add("plain", raise_plain_user_error, kind="cpu")
    with anyio.fail_after(GUARD):
        out = await ag.run(g, cpu_workers=1)
    err = out.errors["plain"]
    assert type(err) is ag.RemoteError
    assert err.type_name == f"{__name__}.PlainUserError"
    assert err.message == "code 7: disk on fire"
    assert str(err) == f"{__name__}.PlainUserError: code 7: disk on fire"
    assert "raise_plain_user_error" in err.traceback
    back = pickle.loads(pickle.dumps(err))  # and the stand-in itself travels on
    assert state(back) == state(err)
