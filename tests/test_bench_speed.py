"""benchmarks/speed.py (issue 15's ratio table) keeps working: smoke runs, tiny, no timing.

What is checked is that every row of the issue's two tables is measured (or skipped with a
note saying why), that each figure is a real number with its pairs, target and verdict,
and that the printed table and the JSON agree; never how fast anything is.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "speed.py"

# Every row's keys: the figures issue 15 asks for, by row number.
EXPECTED = {
    1: [f"build.{api}.{sh}" for api in ("Graph.add", "decorator", "create_graph")
        for sh in ("wide", "chain", "layered")],
    2: [f"{what}.{sh}" for what in ("run", "eager")
        for sh in ("wide.300", "chain.300", "layered.300", "wide.600", "layered.600")],
    3: ["build_run.wide", "build_run.chain", "build_run.layered"],
    4: ["dask.wide", "dask.chain", "dask.layered"],
    5: ["sleep.wide", "sleep.layered_10_layers", "sleep.layered_100_layers"],
    6: ["resume"],
    7: ["store.wide", "store.layered"],
    8: ["memory", "memory.hand"],
    9: ["progress"],
    10: ["cpu.first", "cpu.first_behind_io", "cpu.first_ppe", "cpu.speedup",
         "cpu.marginal", "cpu.marginal_ppe", "cpu.frame"],
}  # fmt: skip


def speed(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SPEED), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def check_row(r: dict) -> None:
    assert r["measure"], r
    if r["value"] is None:  # skipped: it must say why
        assert r["note"].startswith("skipped:"), r
        return
    assert math.isfinite(r["value"]), r
    assert r["pairs"] == len(r["values"]) >= 1, r
    assert r["min"] <= r["value"] <= r["max"], r
    assert all(math.isfinite(v) for v in r["values"]), r
    if r["target"] is None:
        assert r["met"] is None, r
    else:
        op, bound = r["target"].split()
        assert op in ("<=", ">=") and float(bound) > 0, r
        assert r["met"] is (
            r["value"] <= float(bound) if op == "<=" else r["value"] >= float(bound)
        )


def test_quick_table_has_every_row_of_issue_15(tmp_path):
    out = tmp_path / "speed.json"
    proc = speed("--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = json.loads(out.read_text())
    rows = payload["rows"]
    keys = {r["key"]: r for r in rows}
    for row, want in EXPECTED.items():
        if row == 4 and not _have("dask"):
            assert keys["dask"]["note"].startswith("skipped: dask"), keys.get("dask")
            continue
        if row == 10 and not (_have("pandas") and _have("numpy")):
            want = [k for k in want if k != "cpu.frame"]
        missing = [k for k in want if k not in keys]
        assert not missing, (row, missing, sorted(keys))
        for k in want:
            assert keys[k]["row"] == row
            assert keys[k]["value"] is not None, keys[k]
    for r in rows:
        check_row(r)
    # The printed table shows every row, with its figure, target and verdict.
    text = proc.stdout
    assert "measure" in text and "target" in text and "met?" in text
    for r in rows:
        assert r["measure"] in text, r["measure"]
    assert payload["machine"]["asyncgraph_path"] == str(ROOT / "asyncgraph")
    assert payload["args"]["pairs"] == 1


def test_only_runs_the_rows_asked_for(tmp_path):
    out = tmp_path / "speed.json"
    proc = speed("--quick", "--only", "1,7", "--pairs", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["row"] for r in rows} == {1, 7}
    assert {r["key"] for r in rows} == set(EXPECTED[1] + EXPECTED[7])
    for r in rows:
        check_row(r)
        assert r["pairs"] == 2


def test_checkouts_side_by_side(tmp_path):
    """Two checkouts (here the same one twice): the rows of both, "a -> b"."""
    out = tmp_path / "both.json"
    proc = speed("--quick", "--only", "1", "--checkout", f"a={ROOT}", "--checkout",
                 f"b={ROOT}", "--rounds", "2", "--json", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "a -> b" in proc.stdout
    payload = json.loads(out.read_text())["checkouts"]
    assert set(payload) == {"a", "b"}
    for name in ("a", "b"):
        assert len(payload[name]["rounds"]) == 2
        merged = {r["key"]: r for r in payload[name]["merged"]}
        assert set(merged) == set(EXPECTED[1])
        for r in merged.values():
            assert len(r["rounds"]) == 2
            lo, hi = min(r["rounds"]), max(r["rounds"])
            assert lo <= r["value"] <= hi
    for line in proc.stdout.splitlines():
        if "build Graph.add / graphlib" in line:
            assert line.count("->") == 1, line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--only", "11"], "rows are 1-10"),
        (["--only", "two"], "--only takes row numbers"),
        (["--checkout", "nothing-here"], "--checkout takes NAME=DIR"),
        (["--checkout", "x=/nonexistent/dir"], "has no asyncgraph/ package"),
        (["--pairs", "0"], "--pairs must be >= 1, not 0"),
        (["--n", "5", "--mb", "0"], "--n must be >= 100, not 5; --mb must be >= 1, not 0"),
        (["--checkout", f"x={ROOT}=/no/python"], "--checkout x: no Python at '/no/python'"),
        (["--checkout", f"a={ROOT}", "--checkout", f"a={ROOT}"], "names must differ"),
    ],
)
def test_bad_arguments_say_what_is_wrong(args, says):
    proc = speed(*args, timeout=120)
    assert proc.returncode != 0
    assert says in proc.stderr, proc.stderr


def test_profile_shows_where_the_time_goes(tmp_path):
    out = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "_speed_profile.py"), "--n", "300",
         "--top", "5", "--sampling", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    for what in ("build", "run"):
        prof = report[what]["cprofile"]
        assert len(prof["top"]) == 5
        assert prof["calls_per_task"] > 1
        assert all(r["calls"] >= 1 and r["own_us_per_task"] >= 0 for r in prof["top"])
        assert prof["top"][0]["share"] >= prof["top"][-1]["share"]
        assert f"{what} of 300 layered tasks" in proc.stdout
    if _have("pyinstrument"):
        assert "sampling view" in proc.stdout
        assert "build_add" in report["build"]["sampling"]  # speed.py's builder, sampled
    else:
        assert "no sampling view" in proc.stdout


FAKE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location(
    "asyncgraph", {init!r}, submodule_search_locations=[{pkg!r}])
module = importlib.util.module_from_spec(spec)
sys.modules["asyncgraph"] = module
spec.loader.exec_module(module)

def create_graph(*a, **k):
    raise RuntimeError("this checkout's create_graph is broken on purpose")

module.create_graph = create_graph
module.__file__ = __file__  # this checkout's, as speed.py checks
"""


def test_a_row_that_fails_says_so_and_the_others_stand(tmp_path):
    """A checkout where one API breaks: its row says why; the table still comes out."""
    fake = tmp_path / "broken"
    (fake / "asyncgraph").mkdir(parents=True)
    pkg = ROOT / "asyncgraph"
    (fake / "asyncgraph" / "__init__.py").write_text(
        FAKE.format(init=str(pkg / "__init__.py"), pkg=str(pkg))
    )
    out = tmp_path / "both.json"
    proc = speed("--quick", "--only", "1,8", "--checkout", f"good={ROOT}", "--checkout",
                 f"broken={fake}", "--json", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    both = json.loads(out.read_text())["checkouts"]
    good = {r["key"]: r for r in both["good"]["merged"]}
    broken = {r["key"]: r for r in both["broken"]["merged"]}
    assert set(good) == set(EXPECTED[1] + EXPECTED[8])
    assert set(broken) == {"row1.failed", *EXPECTED[8]}
    assert "create_graph is broken on purpose" in broken["row1.failed"]["note"]
    assert broken["memory"]["value"] is not None
    assert "broken, row 1, row 1: failed: RuntimeError" in proc.stdout
    assert "-> failed" in proc.stdout
