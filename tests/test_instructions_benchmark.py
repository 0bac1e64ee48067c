"""benchmarks/instructions.py runs: its counted child on its own, and a tiny count."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "instructions.py"


@pytest.mark.parametrize("who", ["none", "ag", "hand"])
def test_the_counted_child_builds_and_runs(who):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--child", "layered", "200", "1", who],
        check=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.long  # three processes under valgrind: about 45 s
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_a_tiny_count_prints_a_figure_per_tree_and_the_hand_runner():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--shapes", "wide", "--n", "50", "--runs", "1"],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    assert "instructions a task" in out
    assert " ag " in out and "hand" in out
