"""benchmarks/store.py's figures in new processes keep working (smoke-run, tiny): the
resume in a new process against a plain run, and fan-out's plan + rerun, each against
a second tree (here this one again) as a before/after comparison runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_process_and_fanout_figures_run_tiny_against_a_tree(tmp_path):
    out = tmp_path / "store.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/store.py", "--only", "process", "--sizes", "200",
         "--reps", "1", "--dir", str(tmp_path), "--against", str(ROOT), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resume/plain" in proc.stdout
    rows = json.loads(out.read_text())["process_resume"]
    assert [r["tree"] for r in rows] == ["this", "against"]
    assert all(r["failed"] == 2 and r["ratio"] > 0 for r in rows)

    proc = subprocess.run(
        [sys.executable, "benchmarks/store.py", "--only", "fanout", "--sizes", "200",
         "--reps", "2", "--dir", str(tmp_path), "--against", str(ROOT), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "plan + rerun" in proc.stdout
    rows = json.loads(out.read_text())["fanout_rerun"]
    assert [r["tree"] for r in rows] == ["this", "against"]
    assert rows[0]["this_over_against"] > 0
    assert all(len(r["raw"]) == 2 for r in rows)


def test_the_writer_a_b_runs_tiny(tmp_path):
    out = tmp_path / "write.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/store_write.py", "--rows", "300", "--batch", "100",
         "--pairs", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wall B/A" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["loop_busy"] for r in rows] == [False, True]
