"""``asyncgraph run ... --backend dask[=ADDRESS]|processes|inline``."""

from __future__ import annotations

import os
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import children_now

import asyncgraph as ag
from asyncgraph.__main__ import main

FLOW = """
import os, threading
import asyncgraph as ag

graph = ag.Graph()


@graph.task(kind="cpu")
def where():
    return os.getpid(), threading.get_ident()


@graph.task
def after(where):
    return where
"""


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    name = f"backendflow_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(FLOW)
    yield f"{tmp_path / name}.py:graph"
    sys.modules.pop(name, None)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("backend", ["inline", "processes", None])
def test_run_on_a_backend(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str | None
) -> None:
    store = str(tmp_path / "runs.db")
    extra = ["--backend", backend] if backend else []
    code, out, err = cli(capsys, "run", target, "--store", store, "--cpu-workers", "1", *extra)
    assert code == 0, err
    assert "done" in out
    module = sys.modules[Path(target.split(":")[0]).stem]  # the command imported it
    pid, thread = ag.load(module.graph, store).results["where"]
    if backend == "inline":  # the command's own thread
        assert (pid, thread) == (os.getpid(), threading.get_ident())
    else:
        assert pid != os.getpid()
    assert children_now() == []  # a pool started for the command is closed with it


@pytest.mark.parametrize("bad", ["threads", "inline=x", "processes=4", "dask="])
def test_an_unknown_backend_is_a_usage_error(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    store = tmp_path / "runs.db"
    code, _, err = cli(capsys, "run", target, "--store", str(store), "--backend", bad)
    assert code == 2
    assert "is not a backend: use dask, dask=ADDRESS" in err
    assert not store.exists()


def test_dask_without_distributed_says_what_to_install(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "distributed" else real(n, *a)
    )
    store = tmp_path / "runs.db"
    code, _, err = cli(capsys, "run", target, "--store", str(store), "--backend", "dask")
    assert code == 2
    assert "pip install 'asyncgraph[dask]'" in err
    assert not store.exists()  # found before anything was written
