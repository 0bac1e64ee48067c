"""benchmarks/cpu.py's rows of the second pass (a worker's phases, a shared pool's
trivial task) keep working: smoke-run, tiny; the figures are measured by hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_phase_and_shared_rows_run_tiny() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/cpu.py", "--pairs", "1", "--only", "phases,shared"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in (
        "worker's spawn (parent)",
        "worker's boot to its first call",
        "first call, begun to reply",
        "one CPU task on a started ProcessBackend",
    ):
        assert row in proc.stdout, proc.stdout
