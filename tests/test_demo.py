"""``python -m asyncgraph demo``: a mixed graph with a failure, shown as a status table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    return _python("-m", "asyncgraph", "demo")


def _rows(stdout: str) -> dict[str, list[str]]:
    """The status table's rows by task name (the lines after the header)."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if re.match(r"name\s+kind\s+status", line))
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip():
            break
        cells = line.split(maxsplit=5)
        rows[cells[0]] = cells[1:]
    return rows


def test_demo_exits_0_despite_the_failure(demo: subprocess.CompletedProcess[str]) -> None:
    assert demo.returncode == 0, demo.stderr
    assert "Traceback" not in demo.stderr, demo.stderr


def test_demo_prints_the_status_table(demo: subprocess.CompletedProcess[str]) -> None:
    header = next(line for line in demo.stdout.splitlines() if line.startswith("name"))
    assert header.split() == ["name", "kind", "status", "attempts", "duration_s", "error"]
    rows = _rows(demo.stdout)
    status = {name: cells[1] for name, cells in rows.items()}
    assert status["load_to_db"] == "failed"
    assert status["build_dashboard"] == status["email_report"] == "skipped"
    # the independent branch, with both kinds, still finishes
    for name in ("fetch_home", "word_counts", "hash_pages", "count_primes", "summary"):
        assert status[name] == "done", rows
    assert {cells[0] for cells in rows.values()} == {"io", "cpu"}
    assert "ConnectionError" in rows["load_to_db"][-1]
    assert rows["load_to_db"][2] == "2"  # attempts: one retry


def test_demo_recovers_only_what_failed(demo: subprocess.CompletedProcess[str]) -> None:
    assert re.search(r"10 tasks: 7 done, 1 failed, 2 skipped in [\d.]+s", demo.stdout)
    plan = {}
    lines = demo.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"name\s+kind\s+action", line))
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        name, _kind, action, reason = line.split(maxsplit=3)
        plan[name] = (action, reason)
    assert plan["load_to_db"] == ("run", "failed last time")
    assert plan["email_report"][0] == plan["build_dashboard"][0] == "run"
    assert plan["hash_pages"] == ("reuse", "done, unchanged")
    assert "Recovery: ran build_dashboard, email_report, load_to_db;" in demo.stdout
    assert re.search(r"10 tasks: 10 done in [\d.]+s", demo.stdout)
    history = lines[next(i for i, line in enumerate(lines) if line.startswith("run ")) :]
    assert history[1].split() == ["1", "failed", "10", "0", "7", "1", "2"]
    assert history[2].split() == ["2", "done", "10", "7", "3", "0", "0"]


def test_demo_keeps_its_store_when_asked(tmp_path: Path) -> None:
    store = tmp_path / "demo.db"
    proc = _python("-m", "asyncgraph", "demo", "--store", str(store), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert store.exists()
    status = _python("-m", "asyncgraph", "status", str(store))
    assert status.returncode == 0, status.stderr
    assert "load_to_db" in status.stdout
    again = _python("-m", "asyncgraph", "demo", "--store", str(store))
    assert again.returncode == 2 and "exists" in again.stderr


def test_main_without_a_command_is_a_usage_error() -> None:
    proc = _python("-m", "asyncgraph")
    assert proc.returncode == 2
    assert "demo" in proc.stderr


def test_import_stays_cheap() -> None:
    proc = _python(
        "-c",
        "import sys, asyncgraph, asyncgraph.__main__; "
        "print(sorted(m for m in ('asyncgraph._demo', 'pandas') if m in sys.modules))",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
