"""benchmarks/stream.py keeps working (measured by hand; here smoke-run, tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_stream_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "stream.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/stream.py", "--batches", "200", "--reps", "1",
         "--big", "4", "--rows", "400", "--skip", "100", "--workers", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for title in ("overhead per task-batch", "peak live batches", "store cost", "resume"):
        assert title in proc.stdout
    data = json.loads(out.read_text())
    for queue_size, _batches, peak, bound, _unrolled in data["peak"]:
        assert peak <= bound, f"queue_size={queue_size}: peak {peak} over the bound {bound}"
    assert data["resume"][0][0] == 100
    # stages, batches, rounds, ours, its CPU, dplutils, dplutils/ours, floor, ours/floor
    assert [row[0] for row in data["overhead"]] == [3, 1]
    for row in data["overhead"]:
        assert len(row) == 9 and row[7] is not None and row[8] is not None
    assert "asyncgraph/floor" in proc.stdout
