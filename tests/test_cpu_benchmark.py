"""benchmarks/cpu.py keeps working (measured by hand; here only smoke-run, tiny)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_benchmark_runs_tiny(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/cpu.py", "--pairs", "1", "--mb", "2", "--calls", "12",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("first CPU task", "behind 100 ms of IO", "speedup", "per call", "2 MB frame"):
        assert row in proc.stdout, proc.stdout
    assert out.stat().st_size > 0


def test_cpu_benchmark_refuses_an_unknown_row() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/cpu.py", "--only", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode != 0
    assert "unknown rows ['nope']" in proc.stderr
