"""A script without the ``__main__`` guard, run on ``DaskBackend()``'s own cluster.

Dask starts each worker process by importing the main module, so such a script starts a
second run in every worker; with a store, that run finds the store locked by the first
and raises, and no worker comes up. Dask says only "Nanny failed to
start"; the run's CPU tasks now fail with a sentence that names the cause and the two
ways out. One subprocess, one cluster start that fails: a few seconds.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import asyncio, json
import asyncgraph as ag

g = ag.Graph()
g.add("a", lambda: 1, kind="cpu")
g.add("b", lambda: 2)
done = asyncio.run(ag.run(g, backend=ag.DaskBackend(n_workers=1), store="runs.db"))
if __name__ == "__main__":
    print(json.dumps({k: [v.value, str(done.records[k].error)] for k, v in done.status.items()}))
"""


def test_missing_main_guard_is_named_in_the_error(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    import json

    last = proc.stdout.strip().splitlines()[-1]
    status = json.loads(last)
    assert status["b"] == ["done", "None"]  # the IO task is not touched
    state, error = status["a"]
    assert state == "failed"
    assert "could not start its LocalCluster's worker processes" in error
    assert 'if __name__ == "__main__":' in error
    assert "DaskBackend(processes=False)" in error
