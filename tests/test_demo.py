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


def test_demo_prints_a_summary_and_the_reset_hint(
    demo: subprocess.CompletedProcess[str],
) -> None:
    assert re.search(r"10 tasks in [\d.]+s: 7 done, 1 failed, 2 skipped", demo.stdout)
    assert "ag.reset_failed(" in demo.stdout


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
