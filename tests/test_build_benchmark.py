"""benchmarks/build.py keeps working (measured by hand; here only smoke-run, tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_build_benchmark_runs_on_tiny_graphs(tmp_path: Path) -> None:
    out = tmp_path / "build.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/build.py", "--sizes", "300", "--pairs", "2",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ag / graphlib" in proc.stdout and "expand µs/element" in proc.stdout
    data = json.loads(out.read_text())
    rows = {(r["form"], r["shape"]) for r in data["build"]}
    forms, shapes = ("add", "decorator", "create_graph"), ("wide", "chain", "layered")
    assert rows == {(f, s) for f in forms for s in shapes}
    assert all(r["ratio"] > 0 for r in data["build"])
    assert data["expand"][0]["n"] == 300 and data["expand"][0]["expand_us_per_element"] > 0
