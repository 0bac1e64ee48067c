"""examples/recovery/: the pipeline fails with the database down; recovery reruns only that.

Run in a temporary directory (the scripts work in the current one), with the store path
passed as an argument: nothing is written into the repository.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncgraph as ag

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "recovery"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


PIPELINE = str(EXAMPLE / "pipeline.py")
COMMAND = ("-m", "asyncgraph", "run", f"{PIPELINE}:graph", "--store")


def _failing_night(cwd: Path, *run: str) -> Path:
    """Run the pipeline with ``run`` while the database is down; check the store."""
    store = cwd / "nightly.db"
    (cwd / "db_down").touch()
    proc = _run(cwd, *run, str(store))
    assert proc.returncode == 1, _explain(proc)
    assert "ConnectionError: warehouse.db is down" in proc.stdout
    tasks = ag.SQLiteStore(store).tasks()
    assert {n: t.status.value for n, t in tasks.items()} == {
        "extract_orders": "done",
        "extract_customers": "done",
        "transform": "done",
        "load_warehouse": "failed",
        "archive_orders": "done",
        "report": "skipped",
    }
    assert tasks["load_warehouse"].error_type == "ConnectionError"
    assert not (cwd / "warehouse.db").exists()
    (cwd / "ran.log").unlink()  # from here on the log holds what the recovery ran
    return store


def _check_recovered(cwd: Path, store: Path) -> None:
    assert sorted((cwd / "ran.log").read_text().split()) == ["load_warehouse", "report"]
    with sqlite3.connect(cwd / "warehouse.db") as db:
        rows = db.execute("SELECT customer, amount FROM totals ORDER BY customer").fetchall()
    assert rows == [("ada", 37.5), ("edsger", 99.0), ("grace", 12.5)]
    assert {t.status for t in ag.SQLiteStore(store).tasks().values()} == {ag.State.DONE}
    assert list(ag.history(store)["status"]) == ["failed", "done"]


def test_recover_script_reruns_only_the_failed_task_and_its_descendant(tmp_path: Path) -> None:
    store = _failing_night(tmp_path, PIPELINE)

    proc = _run(tmp_path, str(EXAMPLE / "recover.py"), str(store))
    assert proc.returncode == 0, _explain(proc)
    assert "ran this time: " in proc.stdout
    assert "report: 3 customers loaded; top: edsger (99.00)" in proc.stdout
    assert not (tmp_path / "db_down").exists()
    _check_recovered(tmp_path, store)


def test_the_command_line_recovers_the_same_way(tmp_path: Path) -> None:
    # The command imports pipeline.py as `pipeline`: the worker running transform
    # imports it by that name.
    store = _failing_night(tmp_path, *COMMAND)

    (tmp_path / "db_down").unlink()
    plan = _run(
        tmp_path,
        "-m",
        "asyncgraph",
        "plan",
        f"{PIPELINE}:graph",
        "--store",
        str(store),
        "--reset-failed",
        "--json",
    )
    assert plan.returncode == 0, _explain(plan)
    actions = {t["name"]: t["action"] for t in json.loads(plan.stdout)["tasks"]}
    assert actions == {
        "extract_orders": "reuse",
        "extract_customers": "reuse",
        "transform": "reuse",
        "load_warehouse": "run",
        "archive_orders": "reuse",
        "report": "run",
    }

    proc = _run(tmp_path, *COMMAND, str(store), "--reset-failed")
    assert proc.returncode == 0, _explain(proc)
    _check_recovered(tmp_path, store)
