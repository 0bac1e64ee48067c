"""taskmap 0.0.6's own test suite, on asyncgraph.compat.taskmap, five times in a row.

Its speed tests (two 0.4 s tasks in parallel within 0.8 s) failed when every run
started fresh workers; the compat layer's parallel runners now share a started pool
(``asyncgraph.compat.taskmap._Pools``). The suite ships in taskmap's wheel
(``taskmap/taskmap_test.py``): this long trial fetches the wheel with pip (or takes
``ASYNCGRAPH_TASKMAP_WHEEL``), puts a ``taskmap`` package that re-exports the compat
module in front of it, and runs it with pytest in a fresh interpreter, five times.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5


def taskmap_wheel(where: Path) -> Path:
    given = os.environ.get("ASYNCGRAPH_TASKMAP_WHEEL")
    if given:
        return Path(given)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
         "taskmap==0.0.6", "-d", str(where)],
        capture_output=True, text=True, timeout=300,
    )
    wheels = list(where.glob("taskmap-0.0.6-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"taskmap 0.0.6 could not be fetched: {proc.stderr.strip()[-300:]}")
    return wheels[0]


@pytest.mark.long
def test_taskmaps_own_suite_passes_five_times_in_a_row(tmp_path: Path) -> None:
    wheel = taskmap_wheel(tmp_path / "wheel")
    suite = tmp_path / "suite"
    (suite / "taskmap").mkdir(parents=True)
    with zipfile.ZipFile(wheel) as z:
        (suite / "taskmap_test.py").write_bytes(z.read("taskmap/taskmap_test.py"))
    (suite / "taskmap" / "__init__.py").write_text(
        "from asyncgraph.compat.taskmap import *  # noqa: F403\n"
        "from asyncgraph.compat.taskmap import __all__  # noqa: F401\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(suite), str(ROOT)])}
    for i in range(RUNS):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "taskmap_test.py"],
            cwd=suite, capture_output=True, text=True, timeout=600, env=env,
        )
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        assert proc.returncode == 0 and "25 passed" in last, f"run {i + 1}:\n{proc.stdout[-3000:]}"
