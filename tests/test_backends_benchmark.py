"""benchmarks/backends.py keeps working (measured by hand; here only smoke-run, tiny)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_backends_benchmark_runs_tiny(tmp_path: Path) -> None:
    out = tmp_path / "backends.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/backends.py", "--pairs", "1", "--workers", "1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "shared ProcessBackend" in proc.stdout
    result = json.loads(out.read_text())["backends"]
    assert result["pairs"] == 1 and result["shared_ms"] > 0
