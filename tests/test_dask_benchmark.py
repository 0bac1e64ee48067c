"""benchmarks/dask.py keeps working (measured by hand; here only smoke-run, tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("numpy")

ROOT = Path(__file__).resolve().parents[1]


def _tiny(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "benchmarks/dask.py", "--tiny", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_dask_benchmark_runs_tiny(tmp_path: Path) -> None:
    out = tmp_path / "dask.json"
    proc = _tiny("--json", str(out))
    for shape in ("wide 20", "chain 5", "layered 2x5", "big 3x1MB", "plain gathers all",
                  "plain keeps every future"):
        assert shape in proc.stdout
    results = json.loads(out.read_text())["results"]
    assert all(r["asyncgraph_s"] > 0 and r["plain_s"] > 0 for r in results.values())


def test_dask_benchmark_profiles_tiny() -> None:
    """--profile prints each shape's parts and the Dask client calls side by side."""
    proc = _tiny("--only", "chain", "--profile")
    assert "chain 5, plain keeps every future: driver CPU under cProfile" in proc.stdout
    assert "Dask client function" in proc.stdout
