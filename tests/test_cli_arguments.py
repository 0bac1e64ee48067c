"""Where the command line puts STORE and MODULE:GRAPH, as a user types them.

``--reset`` and ``--mark-done`` take every name that follows, so ``run --store s.db
--reset load jobs.py:graph`` (options first, as ``--help``'s usage reads) once read the
graph as a task name and failed with "MODULE:GRAPH required". ``status`` and ``history``
take the store as ``--store`` too, as ``plan`` and ``run`` do.
"""

from __future__ import annotations

import pytest
import test_cli
from test_cli import Flow, cli, digest, rows

flow = test_cli.flow  # the fixtures, shared with test_cli
failed_store = test_cli.failed_store


def test_graph_after_reset_names_is_the_graph(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    failed_store.fix()
    code, _, err = cli(
        capsys, "run", "--store", failed_store.store, "--reset", "load", failed_store.target
    )
    assert code == 0, err
    assert failed_store.calls() == ["load", "report"]


def test_graph_after_mark_done_values_is_the_graph(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(
        capsys,
        "plan",
        "--store",
        failed_store.store,
        "--mark-done",
        "load=41",
        "other",
        failed_store.target,
    )
    assert code == 0, err
    table = rows(out)
    assert table["load"][1] == "reuse", out
    assert table["report"][1] == "run", out
    assert failed_store.calls() == []


def test_reset_with_only_the_graph_after_it_says_a_name_is_needed(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(failed_store.store)
    code, _, err = cli(
        capsys, "run", "--store", failed_store.store, "--reset", failed_store.target
    )
    assert code == 2
    assert "--reset needs at least one task name before MODULE:GRAPH" in err
    assert digest(failed_store.store) == before


def test_missing_graph_names_the_argument_and_the_way_out(
    failed_store: Flow, capsys: pytest.CaptureFixture[str]
) -> None:
    before = digest(failed_store.store)
    code, _, err = cli(capsys, "run", "--store", failed_store.store, "--reset", "load")
    assert code == 2
    assert "MODULE:GRAPH is missing" in err
    assert "give MODULE:GRAPH first or last" in err
    assert digest(failed_store.store) == before


def test_usage_shows_the_graph_as_required(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "plan"):
        code, out, _ = cli(capsys, command, "--help")
        assert code == 0
        assert " MODULE:GRAPH" in out
        assert "[MODULE:GRAPH]" not in out


@pytest.mark.parametrize("command", ["status", "history"])
def test_store_as_an_option(
    failed_store: Flow, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    positional = cli(capsys, command, failed_store.store)
    option = cli(capsys, command, "--store", failed_store.store)
    both = cli(capsys, command, failed_store.store, "--store", failed_store.store)
    assert positional[0] == option[0] == both[0]
    assert positional[1] == option[1] == both[1]
    assert "load" in positional[1] or command == "history"


@pytest.mark.parametrize("command", ["status", "history"])
def test_store_errors(
    failed_store: Flow, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, _, err = cli(capsys, command)
    assert code == 2
    assert f"the store is missing: asyncgraph {command} STORE" in err

    code, _, err = cli(capsys, command, "a.db", "--store", failed_store.store)
    assert code == 2
    assert f"two stores given, 'a.db' and --store {failed_store.store!r}" in err

    code, _, err = cli(capsys, command, "--store", failed_store.store, failed_store.target)
    assert code == 2
    assert f"{command} reads only the store and takes no graph: drop {failed_store.target}" in (
        err
    )

    code, _, err = cli(capsys, command, failed_store.store, "stray")
    assert code == 2
    assert "unrecognized arguments: stray" in err
