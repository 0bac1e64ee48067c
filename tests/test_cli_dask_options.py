"""``asyncgraph run ... --backend dask[=ADDRESS] --dask-eager --dask-capacity N``: the Dask
backend's options on the command line, and a usage error for each misuse."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncgraph as ag
from asyncgraph.__main__ import main

FLOW = """
import asyncgraph as ag

graph = ag.Graph()


@graph.task(kind="cpu")
def one():
    return 1


@graph.task(kind="cpu")
def two(one):
    return one + 1


@graph.task(kind="cpu")
def three(two):
    return two + 1
"""


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    name = f"daskflow_{uuid.uuid4().hex[:10]}"
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


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every DaskBackend the command makes; an owned cluster is one of threads (the
    options under test do not depend on where the workers are, and threads start fast)."""
    pytest.importorskip("distributed")
    real = ag.DaskBackend
    backends: list[Any] = []

    class Recorded(real):  # type: ignore[misc, valid-type]
        def __init__(self, cluster: Any = None, **options: Any) -> None:
            if cluster is None:
                options.setdefault("processes", False)
            super().__init__(cluster, **options)
            backends.append(self)

    monkeypatch.setattr(ag, "DaskBackend", Recorded)
    return backends


def test_dask_eager_and_capacity_reach_an_owned_cluster(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], made: list[Any]
) -> None:
    store = str(tmp_path / "runs.db")
    code, out, err = cli(
        capsys, "run", target, "--store", store, "--cpu-workers", "2",
        "--backend", "dask", "--dask-eager", "--dask-capacity", "3",
    )  # fmt: skip
    assert code == 0, err
    assert "done" in out
    [backend] = made
    assert backend.owns_cluster and backend.eager is True and backend.capacity == 3
    module = sys.modules[Path(target.split(":")[0]).stem]
    assert ag.load(module.graph, store).results == {"one": 1, "two": 2, "three": 3}


def test_without_the_options_the_backend_keeps_its_defaults(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], made: list[Any]
) -> None:
    code, _, err = cli(
        capsys, "run", target, "--store", str(tmp_path / "runs.db"), "--backend", "dask"
    )
    assert code == 0, err
    [backend] = made
    assert backend.eager is False and backend.capacity is None


def test_dask_eager_at_a_scheduler_address(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], made: list[Any]
) -> None:
    import distributed

    # A cluster of threads run by its own loop in a thread of this process; the command
    # connects to it by address (and closes only the client it made).
    with distributed.LocalCluster(
        n_workers=1, processes=False, dashboard_address=":0", silence_logs=50
    ) as cluster:
        address = cluster.scheduler_address
        code, _, err = cli(
            capsys, "run", target, "--store", str(tmp_path / "runs.db"),
            "--backend", f"dask={address}", "--dask-eager",
        )  # fmt: skip
        assert code == 0, err
        assert cluster.status.name == "running"
    [backend] = made
    assert backend.address == address and backend.eager is True and backend.capacity is None


@pytest.mark.parametrize("backend", [None, "inline", "processes"])
@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--dask-eager"], "--dask-eager"),
        (["--dask-capacity", "4"], "--dask-capacity"),
        (["--dask-eager", "--dask-capacity", "4"], "--dask-eager and --dask-capacity"),
    ],
)
def test_a_dask_option_without_the_dask_backend_is_a_usage_error(
    target: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    backend: str | None,
    options: list[str],
    named: str,
) -> None:
    store = tmp_path / "runs.db"
    extra = ["--backend", backend] if backend else []
    code, _, err = cli(capsys, "run", target, "--store", str(store), *extra, *options)
    assert code == 2
    on = f"--backend {backend}" if backend else "the default backend (no --backend)"
    assert f"{named} applies to --backend dask only, not to {on}" in err
    assert "add --backend dask (or dask=ADDRESS)" in err
    assert not store.exists()  # found before anything was written


@pytest.mark.parametrize(
    ("value", "text"),
    [("0", "must be at least 1, not 0"), ("many", "'many' is not a whole number")],
)
def test_a_bad_dask_capacity_names_the_option(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, text: str
) -> None:
    store = tmp_path / "runs.db"
    code, _, err = cli(
        capsys, "run", target, "--store", str(store), "--backend", "dask", "--dask-capacity", value
    )
    assert code == 2
    assert f"argument --dask-capacity: {text}" in err
    assert not store.exists()


def test_dask_eager_takes_no_value(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(
        capsys, "run", target, "--store", str(tmp_path / "runs.db"),
        "--backend", "dask", "--dask-eager=yes",
    )  # fmt: skip
    assert code == 2
    assert "argument --dask-eager: ignored explicit argument 'yes'" in err


def test_the_options_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "run", "--help")
    assert code == 0
    assert "--dask-eager" in out and "--dask-capacity N" in out
    assert "DaskBackend(eager=True)" in out
