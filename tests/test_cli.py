"""The ``asyncgraph`` command: status, plan, run, history, and every kind of bad input.

Most tests call ``asyncgraph.__main__.main([...])`` in this process (fast); one runs
``python -m asyncgraph`` in a subprocess, as a recovery script would. The graph lives in
a module file written to ``tmp_path`` under a name of its own, so tests do not share
imported modules::

    fetch --> load --> report        load fails until the file "fixed" exists
      \\
       +--> other
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncgraph as ag
from asyncgraph import _store
from asyncgraph.__main__ import main

ROOT = Path(__file__).resolve().parents[1]

FLOW = """
import os

import asyncgraph as ag

HERE = os.path.dirname(os.path.abspath(__file__))


def called(name):
    with open(os.path.join(HERE, "calls.txt"), "a") as f:
        f.write(name + "\\n")


graph = ag.Graph()


@graph.task
async def fetch():
    called("fetch")
    return 1


@graph.task
def load(fetch):
    called("load")
    if not os.path.exists(os.path.join(HERE, "fixed")):
        raise ConnectionError("database is down\\nsecond line of the message")
    return fetch + 1


@graph.task
async def report(load):
    called("report")
    return (load or 0) * 2


@graph.task
async def other(fetch):
    called("other")
    return fetch


def build():
    return graph


def renamed():
    g = ag.Graph()
    g.add("fetch", fetch)
    g.add("fetch_again", lambda fetch: fetch, deps=["fetch"])
    return g


def needs_args(x):
    return graph


def broken():
    raise RuntimeError("cannot build today")


not_a_graph = 42
"""


class Flow:
    """A graph module in a directory of its own, with its store and a call log."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.name = f"cliflow_{uuid.uuid4().hex[:10]}"
        self.file = directory / f"{self.name}.py"
        self.file.write_text(FLOW)
        self.store = str(directory / "runs.db")
        self.target = f"{self.file}:graph"

    def fix(self) -> None:
        (self.dir / "fixed").touch()

    def calls(self) -> list[str]:
        """The tasks that ran since the last call, in order."""
        log = self.dir / "calls.txt"
        if not log.exists():
            return []
        names = log.read_text().split()
        log.unlink()
        return names


@pytest.fixture
def flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flow]:
    # The command puts directories on sys.path and imports the module: undo both.
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    f = Flow(tmp_path)
    yield f
    sys.modules.pop(f.name, None)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in this process: (exit status, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def rows(table: str) -> dict[str, list[str]]:
    """A printed table's rows by their first cell (split on runs of 2+ spaces)."""
    import re

    out = {}
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 1:
            out[cells[0]] = cells[1:]
    return out


@pytest.fixture
def failed_store(flow: Flow, capsys: pytest.CaptureFixture[str]) -> Flow:
    """The flow after one run in which ``load`` failed and ``report`` was skipped."""
    code, _, _ = cli(capsys, "run", flow.target, "--store", flow.store)
    assert code == 1
    flow.calls()
    return flow


# -- run -------------------------------------------------------------------------------


def test_run_then_reset_failed_reruns_only_the_failed_part(
    flow: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "run", flow.target, "--store", flow.store)
    assert code == 1, err
    assert sorted(flow.calls()) == ["fetch", "load", "other"]
    summary = rows(out)
    assert summary["done"] == ["2"] and summary["failed"] == ["1"] and summary["skipped"] == ["1"]
    assert summary["load"] == ["failed", "ConnectionError: database is down"]
    assert "--reset-failed" in out

    flow.fix()
    code, out, err = cli(capsys, "run", flow.target, "--store", flow.store, "--reset-failed")
    assert code == 0, err
    assert flow.calls() == ["load", "report"]
    summary = rows(out)
    assert summary["done"] == ["2"] and summary["reused"] == ["2"]
    assert "failed" not in summary


def test_run_without_reset_failed_keeps_the_failure(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = failed_store
    flow.fix()
    code, out, _ = cli(capsys, "run", flow.target, "--store", flow.store)
    assert code == 1
    assert flow.calls() == []
    assert rows(out)["load"][0] == "failed (kept)"


def test_reset_reruns_a_done_task_and_its_descendants(
    flow: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    flow.fix()
    assert cli(capsys, "run", flow.target, "--store", flow.store)[0] == 0
    flow.calls()
    code, _, err = cli(capsys, "run", flow.target, "--store", flow.store, "--reset", "load")
    assert code == 0, err
    assert flow.calls() == ["load", "report"]


def test_mark_done_takes_a_failed_task_as_done(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = failed_store
    code, out, err = cli(
        capsys, "run", flow.target, "--store", flow.store, "--mark-done", "load=null"
    )
    assert code == 0, err
    assert flow.calls() == ["report"]  # load is not run; report gets None, as asked
    assert rows(out)["reused"] == ["3"]


def test_mark_done_without_a_value_fails_the_tasks_that_take_the_result(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed task has no result to take: marked done without a value, the task that
    takes it fails with MissingResultError (never a silent None), and the message says
    how to give the value on the command line."""
    flow = failed_store
    code, out, err = cli(capsys, "run", flow.target, "--store", flow.store, "--mark-done", "load")
    assert code == 1, err
    assert flow.calls() == []  # report is never called with a missing input
    assert rows(out)["report"][0] == "failed"
    assert "MissingResultError" in out
    final = ag.load(sys.modules[flow.name].graph, flow.store)
    assert final.errors["report"].type_name.endswith("MissingResultError")
    assert "--mark-done load=JSON" in str(final.errors["report"])


def test_mark_done_takes_a_json_value(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = failed_store
    code, _, err = cli(
        capsys, "run", flow.target, "--store", flow.store, "--mark-done", "load=21"
    )
    assert code == 0, err
    assert flow.calls() == ["report"]
    done = ag.load(sys.modules[flow.name].graph, flow.store)
    assert (done.results["load"], done.results["report"]) == (21, 42)


def test_mark_done_with_a_value_that_is_not_json_is_a_usage_error(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = failed_store
    before = ag.history(flow.store)
    code, _, err = cli(capsys, "run", flow.target, "--store", flow.store, "--mark-done", "load=x")
    assert code == 2
    assert "--mark-done 'load=x'" in err and "JSON" in err
    assert len(ag.history(flow.store)) == len(before)  # nothing ran, nothing recorded


def test_rewrites_apply_in_order_reset_failed_reset_mark_done(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = failed_store
    flow.fix()
    code, _, err = cli(
        capsys,
        "run",
        flow.target,
        "--store",
        flow.store,
        "--reset-failed",
        "--reset",
        "fetch",
        "--mark-done",
        "load=null",
    )
    assert code == 0, err
    # reset fetch sends everything back to pending; mark_done then takes load as done.
    assert sorted(flow.calls()) == ["fetch", "other", "report"]


def test_module_and_factory_forms_of_the_target(
    flow: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    flow.fix()
    code, _, err = cli(capsys, "run", f"{flow.file}:build", "--store", flow.store)
    assert code == 0, err
    # The same module by name: the current directory is on the path, as with python -m.
    code, out, err = cli(capsys, "plan", f"{flow.name}:graph", "--store", flow.store)
    assert code == 0, err
    table = rows(out)
    assert [table[n][1] for n in ("fetch", "load", "report", "other")] == ["reuse"] * 4


def test_cpu_task_in_one_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"clicpu_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import asyncgraph as ag

            graph = ag.Graph()

            @graph.task
            async def n():
                return 20

            @graph.task(kind="cpu")
            def square(n):
                return n * n
            """
        )
    )
    store = str(tmp_path / "cpu.db")
    try:
        code, out, err = cli(
            capsys,
            "run",
            str(tmp_path / f"{name}.py:graph"),
            "--store",
            store,
            "--cpu-workers",
            "1",
        )
    finally:
        sys.modules.pop(name, None)
    assert code == 0, out + err
    assert rows(out)["done"] == ["2"]
    assert ag.SQLiteStore(store).tasks()["square"].status is ag.State.DONE


def test_ctrl_c_exits_130(
    flow: Flow, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(graph: ag.Graph, **options: Any) -> ag.Graph:
        raise KeyboardInterrupt

    monkeypatch.setattr(ag, "run_sync", interrupted)
    code, _, err = cli(capsys, "run", flow.target, "--store", flow.store)
    assert code == 130
    assert "interrupted" in err


def test_progress_asks_run_sync_for_a_bar(
    flow: Flow, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flow.fix()
    real = ag.run_sync
    seen: dict[str, Any] = {}

    def with_progress(graph: ag.Graph, *, progress: bool = False, **options: Any) -> ag.Graph:
        seen["progress"] = progress
        return real(graph, progress=progress, **options)

    monkeypatch.setattr(ag, "run_sync", with_progress)
    code, _, _err = cli(capsys, "run", flow.target, "--store", flow.store, "--progress")
    assert code == 0 and seen == {"progress": True}


def test_progress_without_tqdm_is_a_usage_error(
    flow: Flow, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "tqdm" else real_find_spec(n, *a)
    )
    code, _, err = cli(capsys, "run", flow.target, "--store", flow.store, "--progress")
    assert code == 2 and "asyncgraph[progress]" in err


# -- status ------------------------------------------------------------------------------


def test_status_table(failed_store: Flow, capsys: pytest.CaptureFixture[str]) -> None:
    flow = failed_store
    code, out, _ = cli(capsys, "status", flow.store)
    assert code == 0
    assert "last run 1 failed" in out
    table = rows(out)
    assert table["name"] == ["status", "attempts", "duration", "run", "error"]
    assert table["fetch"][0] == "done" and table["fetch"][3] == "1*"
    assert table["report"][:2] == ["skipped", "0"]
    assert table["load"][0] == "failed"
    assert table["load"][-1] == "ConnectionError: database is down"  # first line only

    # A second run that reuses fetch: only what it wrote is marked.
    flow.fix()
    cli(capsys, "run", flow.target, "--store", flow.store, "--reset-failed")
    table = rows(cli(capsys, "status", flow.store)[1])
    assert table["fetch"][3] == "1" and table["load"][3] == "2*"


def test_status_json(failed_store: Flow, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "status", failed_store.store, "--json")
    assert code == 0
    data = json.loads(out)
    assert list(data) == ["store", "last_run", "tasks"]
    assert data["last_run"]["id"] == 1 and data["last_run"]["status"] == "failed"
    assert data["last_run"]["failed"] == 1 and data["last_run"]["skipped"] == 1
    tasks = {t["name"]: t for t in data["tasks"]}
    assert set(tasks) == {"fetch", "load", "report", "other"}
    load = tasks["load"]
    assert list(load) == [
        "name",
        "status",
        "attempts",
        "started",
        "finished",
        "duration_s",
        "run",
        "in_last_run",
        "error_type",
        "error_message",
        "traceback",
    ]
    assert load["status"] == "failed" and load["in_last_run"] is True
    assert load["error_type"] == "ConnectionError"
    assert load["error_message"].startswith("database is down\n")
    assert "Traceback" in load["traceback"]
    assert tasks["fetch"]["traceback"] is None and tasks["fetch"]["duration_s"] >= 0


def test_status_failed_shows_tracebacks(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "status", failed_store.store, "--failed")
    assert code == 0
    assert set(rows(out)) >= {"name", "load"} and "fetch" not in rows(out)
    assert "--- load (failed in run 1) ---" in out
    assert "Traceback (most recent call last)" in out
    assert 'raise ConnectionError("database is down' in out


def test_status_of_a_run_that_stopped_while_it_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "crashed.db")
    store = ag.SQLiteStore(path)
    store.acquire()
    run_id = store.begin_run()
    row = _store.TaskRow(
        "slow", run_id, "running", 0, 1.0, None, None, None, None, "f", "c", None, None, None
    )
    store.write(run_id, [row])
    store.close()  # no end_run: the process "died" here
    code, out, _ = cli(capsys, "status", path)
    assert code == 0
    assert rows(out)["slow"][:2] == ["running", "0"]
    assert "they run again next time" in out


# -- plan and history ------------------------------------------------------------------------


def test_plan_says_what_runs_and_why(failed_store: Flow, capsys: pytest.CaptureFixture[str]):
    flow = failed_store
    before = digest(flow.store)
    code, out, _ = cli(capsys, "plan", flow.target, "--store", flow.store)
    assert code == 0
    table = rows(out)
    assert table["fetch"][:3] == ["io", "reuse", "done, unchanged"]
    assert table["load"][1:3] == ["keep", "failed last time; not rerun without --reset-failed"]

    code, out, _ = cli(capsys, "plan", flow.target, "--store", flow.store, "--reset-failed")
    table = rows(out)
    assert table["load"][1:] == ["run", "failed last time", "failed", "1"]
    assert table["report"][1:3] == ["run", "skipped last time (an upstream task failed)"]
    assert table["other"][1] == "reuse"
    assert "2 to run, 2 to reuse" in out

    code, out, _ = cli(capsys, "plan", flow.target, "--store", flow.store, "--json")
    data = json.loads(out)
    assert list(data) == ["store", "graph", "tasks"]
    assert data["tasks"][0] == {
        "name": "fetch",
        "kind": "io",
        "action": "reuse",
        "reason": "done, unchanged",
        "last_status": "done",
        "last_run": 1,
    }
    assert digest(flow.store) == before  # plan writes nothing


def test_history(failed_store: Flow, capsys: pytest.CaptureFixture[str]) -> None:
    flow = failed_store
    flow.fix()
    cli(capsys, "run", flow.target, "--store", flow.store, "--reset-failed")
    code, out, _ = cli(capsys, "history", flow.store)
    assert code == 0
    table = rows(out)
    assert table["run"] == [
        *("started", "duration", "status"),
        *("tasks", "reused", "done", "failed", "skipped", "cancelled"),
    ]
    assert table["1"][2:] == ["failed", "4", "0", "2", "1", "1", "0"]
    assert table["2"][2:] == ["done", "4", "2", "2", "0", "0", "0"]
    data = json.loads(cli(capsys, "history", flow.store, "--json")[1])
    assert [r["status"] for r in data["runs"]] == ["failed", "done"]
    assert data["runs"][1]["reused"] == 2


# -- bad input: a clear message naming the thing, exit 2, the store untouched --------------


@pytest.mark.parametrize("command", ["status", "history", "plan", "run"])
def test_a_file_that_is_not_a_store(
    flow: Flow, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    Path(flow.store).write_text("these are my notes, not a store\n" * 10)
    before = digest(flow.store)
    argv = (
        [flow.store] if command in ("status", "history") else [flow.target, "--store", flow.store]
    )
    code, out, err = cli(capsys, command, *argv)
    assert code == 2
    assert f"asyncgraph {command}: error: " in err and "is not an asyncgraph store" in err
    assert flow.store in err
    assert digest(flow.store) == before and out == ""
    assert flow.calls() == []


def test_a_truncated_store(failed_store: Flow, capsys: pytest.CaptureFixture[str]) -> None:
    flow = failed_store
    data = Path(flow.store).read_bytes()
    Path(flow.store).write_bytes(data[: len(data) // 3])
    before = digest(flow.store)
    for argv in (["status", flow.store], ["run", flow.target, "--store", flow.store]):
        code, _, err = cli(capsys, *argv)
        assert code == 2, argv
        assert flow.store in err and "damaged" in err
        assert digest(flow.store) == before


@pytest.mark.parametrize("command", ["status", "history"])
def test_a_store_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = str(tmp_path / "typo.db")
    code, _, err = cli(capsys, command, path)
    assert code == 2
    assert f"store {path!r} does not exist" in err
    assert list(tmp_path.iterdir()) == []  # not created, nor a lock file


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_store_of_another_graph(
    failed_store: Flow, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    flow = failed_store
    before = digest(flow.store)
    target = f"{flow.file}:renamed"
    code, _, err = cli(capsys, command, target, "--store", flow.store)
    assert code == 2
    lines = {k.strip(): v for k, _, v in (ln.partition(": ") for ln in err.splitlines())}
    assert set(lines["only in the store"].split(", ")) == {"'load'", "'report'", "'other'"}
    assert lines["only in the graph"] == "'fetch_again'"
    assert "--force" in err
    assert digest(flow.store) == before and flow.calls() == []

    code, out, err = cli(capsys, command, target, "--store", flow.store, "--force")
    assert code == 0, err
    if command == "plan":
        assert rows(out)["fetch_again"][:3] == ["io", "run", "new"]
        assert rows(out)["fetch"][1] == "reuse"
    else:
        stored = ag.SQLiteStore(flow.store).tasks()
        assert stored["fetch_again"].status is ag.State.DONE
        assert stored["load"].status is ag.State.FAILED  # only in the store: left as it was


@pytest.mark.parametrize("command", ["plan", "run"])
def test_unknown_task_names(
    failed_store: Flow, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    flow = failed_store
    before = digest(flow.store)
    code, _, err = cli(
        capsys,
        command,
        flow.target,
        "--store",
        flow.store,
        "--reset",
        "lod",
        "fetch",
        "--mark-done",
        "reprt",
    )
    assert code == 2
    assert "unknown task name(s): --reset 'lod'; --mark-done 'reprt'" in err
    assert "'fetch', 'load', 'report', 'other'" in err  # the names it could have been
    assert digest(flow.store) == before and flow.calls() == []


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("{file}", "is not MODULE:GRAPH"),
        ("no_such_module_xyz:graph", "cannot import module 'no_such_module_xyz'"),
        ("{dir}/missing.py:graph", "missing.py' does not exist"),
        ("{file}:grahp", "has no attribute 'grahp'; the graphs in it: graph"),
        ("{file}:not_a_graph", "is a int, not an asyncgraph.Graph"),
        ("{file}:needs_args", "is a callable that needs arguments"),
        ("{file}:broken", "raised RuntimeError: cannot build today"),
        ("{file}:ag", "is a module, not an asyncgraph.Graph"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_target_that_is_not_a_graph(
    failed_store: Flow,
    capsys: pytest.CaptureFixture[str],
    command: str,
    target: str,
    message: str,
) -> None:
    flow = failed_store
    before = digest(flow.store)
    spec = target.format(file=flow.file, dir=flow.dir)
    code, out, err = cli(capsys, command, spec, "--store", flow.store)
    assert code == 2
    assert err.startswith(f"asyncgraph {command}: error: ")
    assert message in err
    assert digest(flow.store) == before and out == ""


def test_a_module_whose_import_fails(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = failed_store.dir / f"bad_{uuid.uuid4().hex[:8]}.py"
    bad.write_text("import no_such_dependency_xyz\n")
    try:
        code, _, err = cli(capsys, "run", f"{bad}:graph", "--store", failed_store.store)
    finally:
        sys.modules.pop(bad.stem, None)
    assert code == 2
    assert f"importing module {bad.stem!r} raised ModuleNotFoundError" in err
    assert "no_such_dependency_xyz" in err


def test_usage_errors_exit_2(flow: Flow, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "run", flow.target, "--store", flow.store, "--cpu-workers", "0")
    assert code == 2 and "--cpu-workers: must be at least 1" in err
    code, _, err = cli(capsys, "run", flow.target)
    assert code == 2 and "--store" in err
    assert not Path(flow.store).exists()


# -- the console entry -----------------------------------------------------------------------


def test_python_dash_m_asyncgraph(tmp_path: Path) -> None:
    flow = Flow(tmp_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path)])

    def asyncgraph(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "asyncgraph", *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = asyncgraph("run", f"{flow.name}:graph", "--store", flow.store)
    assert first.returncode == 1, first.stderr
    flow.fix()
    second = asyncgraph("run", f"{flow.name}:graph", "--store", flow.store, "--reset-failed")
    assert second.returncode == 0, second.stderr
    status = asyncgraph("status", flow.store)
    assert status.returncode == 0 and "last run 2 done" in status.stdout
    missing = asyncgraph("history", str(tmp_path / "nope.db"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_store_another_run_holds(failed_store: Flow, capsys: pytest.CaptureFixture[str]):
    flow = failed_store
    holder = ag.SQLiteStore(flow.store)
    holder.acquire()
    try:
        before = digest(flow.store)
        code, _, err = cli(capsys, "run", flow.target, "--store", flow.store, "--reset-failed")
    finally:
        holder.release()
    assert code == 2
    assert f"store {flow.store!r} is in use" in err
    assert digest(flow.store) == before and flow.calls() == []


def test_import_asyncgraph_does_not_load_the_command() -> None:
    code = "import sys, asyncgraph; print(sorted(m for m in sys.modules if 'asyncgraph._cli' in m))"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
