"""The benchmarks keep working (they are measured by hand; here only smoke-run, tiny)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_benchmark_runs_on_a_tiny_graph(tmp_path):
    out = tmp_path / "overhead.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/overhead.py", "--sizes", "300", "--reps", "1",
         "--no-dask", "--gc", "on", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "asyncgraph" in proc.stdout
    assert out.stat().st_size > 0


def test_progress_benchmark_runs_on_a_tiny_graph(tmp_path):
    out = tmp_path / "progress.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/progress.py", "--sizes", "300", "--reps", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "progress/plain" in proc.stdout
    assert out.stat().st_size > 0


def test_store_benchmark_runs_on_a_tiny_graph(tmp_path):
    out = tmp_path / "store.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/store.py", "--sizes", "300", "--reps", "1",
         "--top", "3", "--dir", str(tmp_path), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "store/plain" in proc.stdout
    assert "resume/own" in proc.stdout
    assert out.stat().st_size > 0


def test_compare_benchmark_runs_a_tree_against_itself(tmp_path):
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/compare.py", str(ROOT), str(ROOT), "--pairs", "1",
         "--inner", "1", "--n", "200", "--cases", "build wide,run layered",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "run layered" in proc.stdout
    assert out.stat().st_size > 0


def test_cpu_result_benchmark_runs_on_a_small_frame(tmp_path):
    out = tmp_path / "cpu_result.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/cpu_result.py", "--mb", "1", "--reps", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "max stall ms" in proc.stdout
    assert out.stat().st_size > 0
