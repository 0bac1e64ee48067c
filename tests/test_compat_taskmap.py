"""asyncgraph.compat.taskmap: taskmap 0.0.6's API and behaviour, without its bugs.

Each of taskmap's documented bugs has a test here (search for "taskmap bug"). Process
tests use at most two workers. Hangs are guarded by ``finishes`` (a generous bound on a
helper thread), never used to measure speed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Probe

import asyncgraph as ag
import asyncgraph.compat.taskmap as taskmap

GUARD = 60  # seconds before a run is declared hung
ROOT = Path(__file__).resolve().parents[1]

RUNNERS: dict[str, Callable[..., taskmap.Graph]] = {
    "run": taskmap.run,
    "run_async": taskmap.run_async,
    "run_parallel": functools.partial(taskmap.run_parallel, nprocs=2),
    "run_parallel_async": functools.partial(taskmap.run_parallel_async, nprocs=2),
}
runners = pytest.mark.parametrize("runner", list(RUNNERS.values()), ids=list(RUNNERS))


def finishes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` on a helper thread and fail the test if it has not returned in GUARD s."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD)
    assert not thread.is_alive(), f"{fn} did not return within {GUARD}s: it hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]


# -- task functions (module level, so worker processes can import them) -------------------


class Boom(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)


class Unrebuildable(Exception):
    """Pickles, but cannot be rebuilt: __init__ needs two arguments, args holds one."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")


def one() -> int:
    return 1


def two() -> int:
    return 2


def nothing() -> None:
    return None


def pair(*args: Any) -> tuple[Any, ...]:
    return args


async def apair(*args: Any) -> tuple[Any, ...]:
    await asyncio.sleep(0)
    return args


def boom() -> None:
    raise Boom(7, "seven")


def not_to_be_called(*args: Any) -> None:
    raise AssertionError("a task given as done was run")


def die() -> None:
    os._exit(3)


def raise_unrebuildable() -> None:
    raise Unrebuildable(3, "three")


def pid(*args: Any) -> int:
    return os.getpid()


def rendezvous(me: str, other: str, folder: str) -> tuple[int, bool]:
    """Say we started, then wait (bounded) until ``other`` has started too."""
    Path(folder, me).touch()
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if Path(folder, other).exists():
            return os.getpid(), True
        time.sleep(0.01)
    return os.getpid(), False


async def blocking_until_file(path: str) -> tuple[int, bool]:
    """An ``async def`` that blocks its thread until ``path`` exists (bounded)."""
    deadline = time.monotonic() + GUARD
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return os.getpid(), True
        time.sleep(0.01)  # noqa: ASYNC251 - blocking is what this task is for
    return os.getpid(), False


async def write_file(path: str) -> int:
    await asyncio.sleep(0)
    Path(path).touch()
    return os.getpid()


# -- create_graph -------------------------------------------------------------------------


def test_graph_has_taskmaps_fields() -> None:
    results = {"a": 5}
    g = taskmap.create_graph(
        {"a": one, "b": pair, "c": pair},
        {"a": [], "b": {"a"}, "c": ("b", "a")},
        io_bound=["b"],
        done=["a"],
        results=results,
        name="fields",
    )
    assert g._fields == (
        "funcs", "dependencies", "done", "results", "in_progress", "lock", "io_bound", "name")
    assert g.dependencies == {"a": [], "b": ["a"], "c": ["b", "a"]}  # sets become lists
    assert g.done == ["a"] and type(g.done) is list
    assert g.results is results  # taskmap keeps (and fills) the dict it was given
    assert g.io_bound == ["b"] and g.name == "fields"


@pytest.mark.parametrize(
    ("deps", "funcs", "done", "message"),
    [
        ({"a": ["b"], "b": ["a"]}, "ab", [], "cycle: a -> b -> a"),
        ({"a": ["a"]}, "a", [], "cycle"),
        ({"a": ["ghost"]}, "a", [], "['ghost'] are depended upon"),
        ({"a": [], "b": []}, "a", [], "['b'] are keys of the dependencies dict but have no"),
        ({"a": []}, "a", ["typo"], "done lists ['typo']"),
    ],
    ids=["cycle", "self-dependency", "missing-dependency", "key-without-func", "done-typo"],
)
def test_create_graph_raises_value_error(
    deps: dict[str, list[str]], funcs: str, done: list[str], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        taskmap.create_graph(dict.fromkeys(funcs, one), deps, done=done)
    assert message in str(info.value)


def test_a_function_that_cannot_take_its_arguments_fails_when_it_runs() -> None:
    """As in taskmap: create_graph does not check signatures; the task fails with TypeError."""
    g = taskmap.create_graph({"a": one, "b": two}, {"a": [], "b": ["a"]})
    g = taskmap.run(g)
    assert isinstance(g.results["b"], TypeError)


def test_funcs_without_a_dependencies_key_are_not_tasks() -> None:
    g = taskmap.run(taskmap.create_graph({"a": one, "extra": boom}, {"a": []}))
    assert g.results == {"a": 1} and g.done == ["a"]


# -- queries and rewrites -----------------------------------------------------------------


def test_get_ready_tasks_puts_io_bound_first() -> None:
    r"""
      a   b(io)   c
       \  |
        d
    """
    g = taskmap.create_graph(
        dict.fromkeys("abcd", one), {"a": [], "b": [], "c": [], "d": ["a", "b"]}, io_bound=["b"]
    )
    assert taskmap.get_ready_tasks(g) == ["b", "a", "c"]
    assert taskmap.get_ready_tasks(g, reverse=False) == ["a", "c", "b"]
    taskmap.mark_as_done(g, ["a", "b"])
    assert taskmap.get_ready_tasks(g) == ["c", "d"]


def test_get_all_children() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": [], "e": ["d", "c"]}
    g = taskmap.create_graph(dict.fromkeys(deps, one), deps)
    assert taskmap.get_all_children(g, "a") == {"b", "c", "e"}
    assert taskmap.get_all_children(g, "e") == set()


def test_mark_as_done_and_except() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"]}
    g = taskmap.create_graph(dict.fromkeys(deps, one), deps)
    assert taskmap.mark_as_done(g, "a") is g
    assert g.done == ["a"]
    taskmap.mark_as_done_except(g, ["c"])
    assert g.done == ["a", "b"]
    with pytest.raises(ValueError, match=r"mark_as_done: \['nope'\] are not tasks"):
        taskmap.mark_as_done(g, "nope")
    with pytest.raises(ValueError, match="reset_tasks"):
        taskmap.reset_tasks(g, ["nope"])


def test_reset_tasks_resets_descendants_and_keeps_the_rest() -> None:
    deps = {"a": [], "b": ["a"], "c": ["b"], "d": []}
    g = taskmap.run(taskmap.create_graph({"a": one, "b": pair, "c": pair, "d": two}, deps))
    taskmap.reset_tasks(g, "b")  # one name, not its characters
    assert sorted(g.done) == ["a", "d"]
    assert g.results == {"a": 1, "b": None, "c": None, "d": 2}


# -- results semantics, for every runner ----------------------------------------------------


@runners
def test_arguments_in_dependency_order_none_skipped_done_not_run(runner: Any) -> None:
    r"""
      given(done, 10)   one   nothing   two
             \___________|______|_______/
                        join  (given, one, nothing, two) -> (10, 1, 2)
    """
    funcs = {"given": not_to_be_called, "one": one, "nothing": nothing, "two": two,
             "join": pair}
    deps = {"given": [], "one": [], "nothing": [], "two": [],
            "join": ["given", "one", "nothing", "two"]}
    g = taskmap.create_graph(funcs, deps, done=["given"], results={"given": 10})
    out = finishes(runner, g)
    assert out.results == {"given": 10, "one": 1, "nothing": None, "two": 2,
                           "join": (10, 1, 2)}
    assert sorted(out.done) == sorted(deps)
    assert out.in_progress == []


@runners
def test_failure_is_the_exception_and_descendants_get_taskmaps_message(runner: Any) -> None:
    r"""
      boom   ok
       |
      child
       |
      grandchild
    """
    funcs = {"boom": boom, "ok": one, "child": pair, "grandchild": pair}
    deps = {"boom": [], "ok": [], "child": ["boom"], "grandchild": ["child"]}
    out = finishes(runner, taskmap.create_graph(funcs, deps))
    error = out.results["boom"]
    assert type(error) is Boom and error.args == (7, "seven")  # also from a worker
    assert out.results["child"] == "Ancestor task boom failed; task not run"
    assert out.results["grandchild"] == "Ancestor task boom failed; task not run"
    assert out.results["ok"] == 1
    assert sorted(out.done) == sorted(deps)  # failed and skipped tasks count as done


@runners
def test_a_fully_done_graph_returns_at_once_with_results_intact(runner: Any) -> None:
    deps = {"a": [], "b": ["a"]}
    g = taskmap.create_graph({"a": not_to_be_called, "b": not_to_be_called}, deps,
                             done=["a", "b"], results={"a": 1, "b": 2})
    out = finishes(runner, g)
    assert out.results == {"a": 1, "b": 2} and sorted(out.done) == ["a", "b"]


def test_running_a_graph_twice_after_run_reuses_it() -> None:
    """taskmap's own pattern: run() fills the graph in place, a second runner finds it done."""
    deps = {"a": [], "b": ["a"]}
    g = taskmap.create_graph({"a": one, "b": pair}, deps)
    assert taskmap.run(g) is g
    again = taskmap.run_parallel(g, nprocs=2)
    assert again is not g and again.results == g.results == {"a": 1, "b": (1,)}


def test_parallel_runners_return_a_new_graph_and_leave_theirs_unchanged() -> None:
    g = taskmap.create_graph({"a": one}, {"a": []})
    out = taskmap.run_parallel(g, nprocs=2)
    assert out.results == {"a": 1} and g.results == {} and g.done == []


# -- where tasks run ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run", "run_async"])
def test_a_coroutine_returned_by_a_plain_function_is_awaited(name: str) -> None:
    g = taskmap.create_graph({"a": lambda: apair(1)}, {"a": []}, io_bound=["a"])
    assert RUNNERS[name](g).results == {"a": (1,)}


def test_run_is_sequential_on_the_calling_thread(probe: Probe) -> None:
    caller = threading.get_ident()
    threads: set[int] = set()

    def task(name: str) -> Callable[..., Any]:
        def sync(*args: Any) -> str:
            probe.enter(name)
            threads.add(threading.get_ident())
            probe.leave(name)
            return name

        async def coro(*args: Any) -> str:
            probe.enter(name)
            threads.add(threading.get_ident())
            await asyncio.sleep(0.01)  # a chance for another task to start, if it could
            probe.leave(name)
            return name

        return coro if name.startswith("co") else sync

    names = ["s1", "s2", "co1", "co2", "s3"]
    g = taskmap.create_graph({n: task(n) for n in names}, {n: [] for n in names},
                             io_bound=["co1", "co2"])
    out = taskmap.run(g)
    assert out.results == {n: n for n in names}
    assert probe.high_water == 1
    assert threads == {caller}


def test_run_async_works_and_runs_coroutines_concurrently(probe: Probe) -> None:
    """taskmap bug: its run_async passed ``loop=`` to asyncio.gather and fails on 3.10+."""
    arrived = {"a": asyncio.Event(), "b": asyncio.Event()}

    def meet(me: str, other: str) -> Callable[[], Any]:
        async def coro() -> str:
            probe.enter(me)
            arrived[me].set()
            await asyncio.wait_for(arrived[other].wait(), GUARD)  # both must be running
            probe.leave(me)
            return me

        return coro

    g = taskmap.create_graph({"a": meet("a", "b"), "b": meet("b", "a")}, {"a": [], "b": []})
    out = finishes(taskmap.run_async, g, sleep=0.001)
    assert out.results == {"a": "a", "b": "b"}
    assert frozenset({"a", "b"}) in probe.overlaps


def test_run_parallel_runs_sync_functions_at_once_in_two_processes(tmp_path: Path) -> None:
    folder = str(tmp_path)
    funcs = {"a": functools.partial(rendezvous, "a", "b", folder),
             "b": functools.partial(rendezvous, "b", "a", folder)}
    out = finishes(taskmap.run_parallel, taskmap.create_graph(funcs, {"a": [], "b": []}),
                   nprocs=2)
    (pid_a, met_a), (pid_b, met_b) = out.results["a"], out.results["b"]
    assert met_a and met_b  # each saw the other running
    assert len({pid_a, pid_b, os.getpid()}) == 3


def test_run_parallel_async_blocking_coroutine_runs_in_a_worker(tmp_path: Path) -> None:
    """A non-IO ``async def`` that blocks waits for a file an IO coroutine writes.

    If it ran on the event loop, the IO coroutine could not run until it gave up.
    """
    flag = str(tmp_path / "flag")
    funcs = {"cpu": functools.partial(blocking_until_file, flag),
             "io": functools.partial(write_file, flag)}
    g = taskmap.create_graph(funcs, {"cpu": [], "io": []}, io_bound=["io"])
    out = finishes(taskmap.run_parallel_async, g, nprocs=2)
    cpu_pid, saw_file = out.results["cpu"]
    assert saw_file and cpu_pid != os.getpid()
    assert out.results["io"] == os.getpid()


def test_io_bound_tasks_of_run_parallel_run_in_this_process() -> None:
    g = taskmap.create_graph({"io": pid, "cpu": pid}, {"io": [], "cpu": []}, io_bound=["io"])
    out = taskmap.run_parallel(g, nprocs=2)
    assert out.results["io"] == os.getpid() != out.results["cpu"]


def test_run_parallel_async_nprocs_1_is_run_async() -> None:
    g = taskmap.create_graph({"a": pid}, {"a": []})
    assert taskmap.run_parallel_async(g, nprocs=1).results["a"] == os.getpid()


async def test_runners_work_inside_a_running_loop() -> None:
    """A notebook cell calling a taskmap runner: taskmap could not start its own loop."""
    for runner in RUNNERS.values():
        g = taskmap.create_graph({"a": one, "b": apair}, {"a": [], "b": ["a"]})
        assert runner(g).results == {"a": 1, "b": (1,)}


def test_nprocs_and_its_alias_ncores() -> None:
    g = taskmap.create_graph({"a": pid}, {"a": []})
    assert taskmap.run_parallel(g, ncores=2).results["a"] != os.getpid()
    with pytest.raises(TypeError, match="not both"):
        taskmap.run_parallel(g, nprocs=1, ncores=2)
    with pytest.raises(ValueError, match="nprocs must be at least 1"):
        taskmap.run_parallel_async(g, nprocs=0)
    with pytest.raises(TypeError, match="nprocs must be an int"):
        taskmap.run_parallel(g, nprocs=2.0)


# -- taskmap's bugs, fixed ------------------------------------------------------------------


def test_sleep_is_ignored_nothing_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """taskmap bug: its runners slept ``sleep`` seconds between checks for ready tasks."""
    slept: list[float] = []
    real_sleep, real_asleep = time.sleep, asyncio.sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    async def asleep(seconds: float, result: Any = None) -> Any:
        slept.append(seconds)
        return await real_asleep(seconds, result)

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(asyncio, "sleep", asleep)
    for runner in (taskmap.run_async, taskmap.run_parallel, taskmap.run_parallel_async):
        g = taskmap.create_graph({"a": one, "b": pair}, {"a": [], "b": ["a"]})
        assert finishes(runner, g, sleep=3600).results == {"a": 1, "b": (1,)}
    assert 3600 not in slept


@pytest.mark.parametrize("name", ["run", "run_async", "run_parallel_async"])
def test_rerun_after_failure_does_not_hang_and_reruns_only_what_failed(name: str) -> None:
    r"""taskmap bug: after run/run_async, a rerun waited forever for the failed tasks.

      ok ----- after_ok
      flaky -- after_flaky       flaky fails once; the rerun runs flaky and after_flaky
    """
    calls: dict[str, int] = {}
    failing = [True]

    def task(n: str) -> Callable[..., Any]:
        def fn(*args: Any) -> str:
            calls[n] = calls.get(n, 0) + 1
            if n == "flaky" and failing[0]:
                raise ConnectionError("db down")
            return n

        return fn

    deps = {"ok": [], "after_ok": ["ok"], "flaky": [], "after_flaky": ["flaky"]}
    io = list(deps)  # in this process, so the counter sees every call
    runner = RUNNERS[name]
    g = finishes(runner, taskmap.create_graph({n: task(n) for n in deps}, deps, io_bound=io))
    assert isinstance(g.results["flaky"], ConnectionError)
    assert g.in_progress == []
    g = taskmap.reset_failed_tasks(g)
    assert sorted(g.done) == ["after_ok", "ok"]
    assert taskmap.get_ready_tasks(g) == ["flaky"]  # taskmap still had it "in progress"
    failing[0] = False
    g = finishes(runner, g)
    assert g.results == {n: n for n in deps}
    assert calls == {"ok": 1, "after_ok": 1, "flaky": 2, "after_flaky": 1}


def test_a_worker_that_dies_fails_only_its_task() -> None:
    """taskmap bug: a worker process that died left the run waiting forever."""
    funcs = {"die": die, "after": pair, "fine": one, "fine_after": pair}
    deps = {"die": [], "after": ["die"], "fine": [], "fine_after": ["fine"]}
    out = finishes(taskmap.run_parallel, taskmap.create_graph(funcs, deps), nprocs=2)
    error = out.results["die"]
    assert isinstance(error, ag.WorkerDiedError)
    assert "task 'die'" in str(error) and "exited with status 3" in str(error)
    assert out.results["after"] == "Ancestor task die failed; task not run"
    assert out.results["fine_after"] == (1,)


def test_an_exception_that_cannot_be_pickled_back_arrives_as_remote_error() -> None:
    """taskmap bug: an exception its worker could not send back left the run hanging."""
    out = finishes(taskmap.run_parallel_async,
                   taskmap.create_graph({"bad": raise_unrebuildable}, {"bad": []}), nprocs=2)
    error = out.results["bad"]
    assert isinstance(error, ag.RemoteError)
    assert error.type_name.endswith("Unrebuildable") and "code 3: three" in error.message
    assert taskmap.reset_failed_tasks(out).done == []  # still counts as a failure


@pytest.mark.parametrize("name", list(RUNNERS))
def test_raise_errors_raises_the_tasks_own_exception(name: str) -> None:
    deps = {"boom": [], "child": ["boom"]}
    g = taskmap.create_graph({"boom": boom, "child": pair}, deps)
    with pytest.raises(Boom) as info:
        finishes(RUNNERS[name], g, raise_errors=True)
    assert info.value.args == (7, "seven")
    if name in ("run", "run_async"):  # filled in place before raising, as taskmap's run
        assert g.results["child"] == "Ancestor task boom failed; task not run"


def test_an_unpicklable_function_is_reported_with_what_to_do() -> None:
    lock = threading.Lock()
    g = taskmap.create_graph({"a": lambda: lock}, {"a": []})
    with pytest.raises(ag.PicklingError) as info:
        taskmap.run_parallel(g, nprocs=2)
    assert any("io_bound" in note for note in info.value.__notes__)
    assert taskmap.run(g).results["a"] is lock  # in-process runners need no pickling


# -- logging ------------------------------------------------------------------------------


@pytest.fixture
def fresh_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A logger name of its own, whose handlers are closed and removed afterwards."""
    name = f"tm-{request.node.name}"
    yield name
    for suffix in ("-manager", "-worker"):
        logger = logging.getLogger(name + suffix)
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()


def test_loggers_are_named_after_the_graph_debug_by_default(fresh_name: str) -> None:
    taskmap.create_graph({"a": one}, {"a": []}, name=fresh_name)
    for suffix in ("-manager", "-worker"):
        assert logging.getLogger(fresh_name + suffix).level == logging.DEBUG
    # taskmap's rule: the first graph of a name configures its loggers
    taskmap.create_graph({"a": one}, {"a": []}, name=fresh_name,
                         logging_config={"level": logging.ERROR})
    assert logging.getLogger(fresh_name + "-worker").level == logging.DEBUG


def test_logging_config_sets_the_level(fresh_name: str, caplog: pytest.LogCaptureFixture
                                       ) -> None:
    g = taskmap.create_graph({"a": one, "b": boom}, {"a": [], "b": []}, name=fresh_name,
                             logging_config={"level": logging.ERROR})
    for suffix in ("-manager", "-worker"):
        assert logging.getLogger(fresh_name + suffix).level == logging.ERROR
    taskmap.run(g)
    assert {r.levelno for r in caplog.records if r.name.startswith(fresh_name)} == {
        logging.ERROR}


def test_runs_log_taskmaps_lines(fresh_name: str, caplog: pytest.LogCaptureFixture) -> None:
    g = taskmap.create_graph({"a": one, "b": boom}, {"a": [], "b": []}, name=fresh_name)
    taskmap.run_async(g)
    lines = {(r.name, r.levelname, r.getMessage()) for r in caplog.records}
    me = os.getpid()
    assert (f"{fresh_name}-manager", "INFO", f"pid {me}: queueing task a") in lines
    assert (f"{fresh_name}-worker", "INFO", f"pid {me}: starting task a") in lines
    assert (f"{fresh_name}-worker", "INFO", f"pid {me}: finished task a") in lines
    failed = [r for r in caplog.records if r.getMessage() == f"pid {me}: failed task b"]
    assert failed and failed[0].levelname == "ERROR" and failed[0].exc_info is not None


def test_write_true_writes_a_log_file_named_after_the_graph(
    fresh_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    g = taskmap.create_graph({"io": one, "cpu": pid}, {"io": [], "cpu": ["io"]},
                             io_bound=["io"], name=fresh_name, logging_config={"write": True})
    out = taskmap.run_parallel(g, nprocs=2)
    (log,) = tmp_path.glob("*.log")
    assert fresh_name in log.name
    text = log.read_text()
    assert f"{fresh_name}-worker - INFO - pid {os.getpid()}: finished task io" in text
    # the worker process writes its own lines into the same file
    assert f"pid {out.results['cpu']}: finished task cpu" in text
    assert taskmap.in_progress(log) == {"in_progress": set(), "queued": set()}


def test_in_progress_reads_a_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text(
        "t - x-manager - INFO - pid 1: queueing task a\n"
        "t - x-manager - INFO - pid 1: queueing task b\n"
        "t - x-manager - INFO - pid 1: queueing task c\n"
        "t - x-worker - INFO - pid 2: starting task a\n"
        "t - x-worker - INFO - pid 2: finished task a\n"
        "t - x-worker - INFO - pid 3: starting task b\n"
    )
    assert taskmap.in_progress(str(log)) == {"in_progress": {"b"}, "queued": {"c"}}


def test_nothing_is_printed_or_written_by_default(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncgraph.compat.taskmap as taskmap

        def ok():
            return 1

        def bad():
            raise ValueError("printed nowhere")

        for runner in (taskmap.run, taskmap.run_async, taskmap.run_parallel,
                       taskmap.run_parallel_async):
            g = taskmap.create_graph({"ok": ok, "bad": bad}, {"ok": [], "bad": []})
            out = runner(g, nprocs=2) if "parallel" in runner.__name__ else runner(g)
            assert isinstance(out.results["bad"], ValueError), out.results
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=GUARD)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")
    assert list(tmp_path.iterdir()) == []


def test_import_asyncgraph_does_not_import_compat() -> None:
    code = "import sys, asyncgraph; print('asyncgraph.compat' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.split() == ["False"]
