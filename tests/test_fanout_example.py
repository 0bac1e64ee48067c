"""examples/fan_out.py runs, and benchmarks/fanout.py runs tiny (a smoke test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def test_the_fan_out_example_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fan_out.py")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "score[bob]" in proc.stdout
    assert "ran after the fix: ['publish', 'report', 'score[bob]']" in proc.stdout
    assert "3 users, total 90" in proc.stdout
    assert 'subgraph ft2 ["score (3: done 2, failed 1)"]' in proc.stdout


def test_the_fan_out_benchmark_runs_tiny(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "fanout.py"),
            "--n",
            "50",
            "--pairs",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "expand µs/el" in proc.stdout
    assert out.exists()
    import json

    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["n"] == 50
    assert rows[0]["plan_says_run"] >= 1
