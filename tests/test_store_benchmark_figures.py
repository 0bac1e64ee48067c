"""``benchmarks/store.py --only`` takes several figures at once (``process,fanout``, as
the before/after command of issues 13 and 15 names them), and refuses an unknown one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "benchmarks/store.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_two_figures_in_one_command(tmp_path):
    out = tmp_path / "store.json"
    proc = run(
        tmp_path,
        "--only", "process,fanout", "--sizes", "200", "--reps", "1",
        "--dir", str(tmp_path), "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(out.read_text())
    assert [r["tree"] for r in got["process_resume"]] == ["this"]
    assert [r["tree"] for r in got["fanout_rerun"]] == ["this"]
    assert got["overhead"] == [] and got["resume"] == []


def test_an_unknown_figure_is_refused_by_name(tmp_path):
    proc = run(tmp_path, "--only", "process,fanot")
    assert proc.returncode == 2
    assert "unknown ['fanot']" in proc.stderr
