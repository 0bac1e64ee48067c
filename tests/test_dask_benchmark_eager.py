"""benchmarks/dask.py --eager keeps working (smoke-run, tiny): asyncgraph with
``DaskBackend(client, eager=True)`` against plain Dask on the same cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("numpy")

ROOT = Path(__file__).resolve().parents[1]


def test_dask_benchmark_runs_tiny_eager() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/dask.py", "--tiny", "--eager"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "asyncgraph eager=True" in proc.stdout
    for shape in ("wide 20", "chain 5", "layered 2x5", "big 3x1MB"):
        assert shape in proc.stdout
