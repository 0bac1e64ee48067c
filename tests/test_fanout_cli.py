"""Fan-out on the command line: ``status`` and ``plan`` show elements, ``--reset``
takes an element's name."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from asyncgraph.__main__ import main

FLOW = textwrap.dedent(
    """
    import os

    import asyncgraph as ag

    HERE = os.path.dirname(os.path.abspath(__file__))


    def called(name):
        with open(os.path.join(HERE, "calls.txt"), "a") as f:
            f.write(name + "\\n")


    graph = ag.Graph()


    @graph.task
    def users():
        called("users")
        return ["ann", "bob", "cy"]


    @graph.task(over="users")
    def score(users):
        called("score:" + users)
        if users == "bob" and not os.path.exists(os.path.join(HERE, "fixed")):
            raise ValueError("bob is broken")
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
    name = f"fanflow_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(FLOW)
    yield tmp_path, f"{tmp_path / name}.py:graph", str(tmp_path / "runs.db")
    sys.modules.pop(name, None)


def cli(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def calls(directory: Path) -> list[str]:
    log = directory / "calls.txt"
    names = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return names


def test_status_plan_and_reset_of_an_element(flow, capsys):
    here, target, store = flow
    code, out, err = cli(capsys, "run", target, "--store", store)
    assert code != 0
    assert sorted(calls(here)) == ["score:ann", "score:bob", "score:cy", "users"]
    code, out, err = cli(capsys, "status", store)
    assert code == 0
    assert "score[1]" in out
    assert "bob is broken" in out
    code, out, err = cli(capsys, "plan", target, "--store", store)
    assert code == 0, err
    assert "score[0]" in out
    assert "score[1]" in out
    (here / "fixed").touch()
    code, out, err = cli(capsys, "run", target, "--store", store, "--reset-failed")
    assert code == 0, err + out
    assert sorted(calls(here)) == ["report", "score:bob"]
    code, out, err = cli(capsys, "run", target, "--store", store, "--reset", "score[2]")
    assert code == 0, err + out
    assert sorted(calls(here)) == ["report", "score:cy"]
    code, out, err = cli(capsys, "run", target, "--store", store, "--reset", "score[9]")
    assert code != 0
    assert "score[9]" in err + out
