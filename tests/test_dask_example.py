"""examples/scale_out.py runs, and its three legs (own pool, shared pool, Dask) agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "scale_out.py"


def test_scale_out_example_gives_equal_results_on_every_backend() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    lines = dict(line.strip().split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert lines["own pool"] == lines["dask"]
    assert lines["shared pool"] == lines["dask"]
