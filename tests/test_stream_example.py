"""examples/stream.py runs and shows what docs/streams.md promises: outputs as they
complete, a resumed run that skips the done batches, every row once on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_stream_example_runs_and_resumes():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "stream.py")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "first run: <StreamResult batches: 5 done" in out
    assert "second run: <StreamResult batches: 3 done, 5 skipped" in out
    assert "publish batch" in out and "8 done batches will be skipped" in out
