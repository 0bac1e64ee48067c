"""Issue 13's small faults: the command line's run summary counts elements a family
reused as reused (as for plain tasks), and ``to_frame()``'s ``family`` column is NaN,
pandas' missing text, on the rows of tasks that are not elements."""

from __future__ import annotations

import contextlib
import sys
import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pytest

import asyncgraph as ag
from asyncgraph.__main__ import main

FLOW = textwrap.dedent(
    """
    import os

    import asyncgraph as ag

    HERE = os.path.dirname(os.path.abspath(__file__))
    graph = ag.Graph()


    def called(name):
        with open(os.path.join(HERE, "calls.txt"), "a") as f:
            f.write(name + "\\n")


    @graph.task
    def users():
        called("users")
        return ["ann", "bob", "cy"]


    @graph.task(over="users")
    def score(users):
        called("score:" + users)
        return len(users)


    @graph.task
    def report(score):
        called("report")
        return sum(score)
    """
)


@pytest.fixture
def flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    name = f"fansum_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(FLOW)
    yield tmp_path, f"{tmp_path / name}.py:graph", str(tmp_path / "runs.db")
    sys.modules.pop(name, None)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, int]:
    with contextlib.suppress(SystemExit):
        main(list(argv))
    out = capsys.readouterr().out
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def calls(directory: Path) -> list[str]:
    log = directory / "calls.txt"
    names = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return names


def test_elements_reused_by_content_count_as_reused(flow, capsys):
    here, target, db = flow
    assert run_cli(capsys, "run", target, "--store", db) == {"done": 6}
    assert len(calls(here)) == 5
    assert run_cli(capsys, "run", target, "--store", db, "--reset", "score[1]") == {
        "done": 3,  # score[1], the family, report
        "reused": 3,  # users, score[0], score[2]
    }
    assert calls(here) == ["score:bob", "report"]
    # The parent runs again with the same result: its elements are reused by content,
    # which the graph before the run (all pending below users) cannot tell.
    counts = run_cli(capsys, "run", target, "--store", db, "--reset", "users")
    assert calls(here) == ["users", "report"]  # no element ran
    assert counts == {"done": 3, "reused": 3}  # users, the family, report; 3 elements


async def test_the_family_column_is_nan_where_a_task_is_no_element():
    g = ag.Graph()
    g.add("users", lambda: ["a", "b"], deps=[])
    g.add("score", len, deps=["users"], over="users")
    g.add("report", sum, deps=["score"])
    for frame in (g.to_frame(), (await ag.run(g)).to_frame()):
        fam = frame.set_index("name")["family"]
        assert fam.isna().to_dict() == {
            "users": True,
            "score": True,
            "report": True,
            **({"score[0]": False, "score[1]": False} if "score[0]" in fam else {}),
        }
        assert fam.dtype == frame["error"].dtype  # pandas' text dtype, as for errors
        assert all(v is not None for v in fam)
    assert list(fam[fam.notna()]) == ["score", "score"]
    assert isinstance(frame, pd.DataFrame)
