"""The code stays ruff-clean and mypy-strict-clean: checked with every test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True,
                          text=True)


def test_ruff_check():
    proc = run("ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format():
    proc = run("ruff", "format", "--check", "asyncgraph")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict():
    proc = run("mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
