"""Issue 16: a graph's name (repr, HTML, progress bar, the store's history, the CLI),
fingerprints compared without a store, ``asyncgraph status`` in the graph's order with
tracebacks from the user's frame, and reads that leave the store's directory as it was."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

import asyncgraph as ag
from asyncgraph import _cli
from asyncgraph.__main__ import main


def _helper() -> None:
    raise ValueError("bad row")


def _named(name: str | None = "nightly") -> ag.Graph:
    g = ag.Graph(name=name)

    @g.task
    def zeta() -> int:  # defined first, runs first
        return 1

    @g.task
    def alpha(zeta: int) -> int:
        return zeta + 1

    @g.task
    def broken(alpha: int) -> None:  # a thread: asyncgraph frames above the user's
        _helper()

    g.add("aardvark", lambda: 0, after=["zeta"])
    return g


# -- the graph's name ----------------------------------------------------------------------


def test_the_name_shows_in_repr_and_html_and_survives_rewrites_and_runs():
    g = _named()
    assert g.name == "nightly"
    assert repr(g).startswith("<Graph 'nightly' 4 tasks")
    assert "&#x27;nightly&#x27;" in g._repr_html_() or "'nightly'" in g._repr_html_()
    done = ag.run_sync(g)
    for derived in (done, done.reset_failed(), done.subgraph("alpha"), done.mark_done("alpha")):
        assert derived.name == "nightly"
    assert ag.Graph().name is None and repr(ag.Graph()) == "<Graph 0 tasks>"
    made = ag.create_graph({"a": lambda: 1}, {}, name="dicts")
    assert made.name == "dicts"


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        (3, TypeError, r"Graph\(name=...\): a name is a str, not int"),
        ("", ValueError, "cannot name a graph"),
        ("two\nlines", ValueError, "no newline"),
        ("\udcff", ValueError, "lone surrogate"),
    ],
)
def test_a_bad_name_is_refused(name, error, match):
    with pytest.raises(error, match=match):
        ag.Graph(name=name)


def test_the_name_labels_the_progress_bar():
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink):
        ag.run_sync(_named(), progress="force")
    assert "nightly:" in sink.getvalue()


def test_the_name_is_in_the_store_history_and_the_cli(tmp_path, capsys):
    db = tmp_path / "s.db"
    ag.run_sync(_named(None), store=db)
    ag.run_sync(_named(), store=db)
    frame = ag.history(db)
    assert list(frame["graph"].fillna("-")) == ["-", "nightly"]
    assert frame["graph"].dtype == ag.Graph().to_frame()["error"].dtype  # one convention
    assert list(frame.columns[:2]) == ["run", "graph"]
    capsys.readouterr()
    assert main(["history", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["run", "graph"] and "nightly" in out
    assert main(["history", str(db), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["graph"] for r in runs] == [None, "nightly"]
    main(["status", str(db)])
    assert "last run 2 of graph 'nightly'" in capsys.readouterr().out


def test_an_unnamed_history_shows_no_graph_column(tmp_path, capsys):
    db = tmp_path / "s.db"
    ag.run_sync(_named(None), store=db)
    capsys.readouterr()
    main(["history", str(db)])
    assert "graph" not in capsys.readouterr().out.splitlines()[0]


def test_a_store_from_before_the_column_is_read_then_migrated(tmp_path):
    db = tmp_path / "old.db"
    ag.run_sync(_named(None), store=db)
    conn = sqlite3.connect(db)  # make it a store of before: no graph column
    conn.execute("ALTER TABLE runs DROP COLUMN graph")
    conn.commit()
    conn.close()
    assert list(ag.history(db)["graph"].isna()) == [True]  # read as it is
    ag.run_sync(_named(), store=db)  # the run adds the column
    assert list(ag.history(db)["graph"].fillna("-")) == ["-", "nightly"]
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


# -- fingerprints without a store ------------------------------------------------------------


def _pair(body: int) -> ag.Graph:
    g = ag.Graph()
    g.add("a", _const(body))
    g.add("b", _plus_one)
    g.add("c", _const(7))
    return g


def _const(n: int):  # type: ignore[no-untyped-def]
    def f() -> int:
        return n

    return f


def _plus_one(a: int) -> int:
    return a + 1


def test_fingerprints_and_plan_against_another_graph():
    old, new = _pair(1), _pair(2)
    fps = ag.fingerprints(old)
    assert list(fps) == ["a", "b", "c"] and all(len(v) == 32 for v in fps.values())
    assert ag.fingerprints(old) == fps  # stable
    by_graph = ag.plan(new, fingerprints=old).set_index("name")
    assert list(by_graph.columns) == ["kind", "action", "reason", "fingerprint", "before"]
    assert by_graph["action"].to_dict() == {"a": "run", "b": "run", "c": "reuse"}
    assert by_graph.loc["a", "reason"] == "code changed"
    assert by_graph.loc["b", "reason"] == "upstream changed (a)"
    assert by_graph.loc["c", "reason"] == "unchanged"
    positional = ag.plan(new, old).set_index("name")  # two graphs: no store
    assert positional.equals(by_graph)
    by_dict = ag.plan(new, fingerprints=fps).set_index("name")
    assert by_dict["action"].to_dict() == by_graph["action"].to_dict()
    assert by_dict.loc["a", "reason"] == "code or dependencies changed"
    grown = _pair(1)
    grown.add("d", _const(9))
    assert ag.plan(grown, fingerprints=fps).set_index("name").loc["d", "reason"] == "new"


def test_plan_arguments_are_checked(tmp_path):
    g = _pair(1)
    with pytest.raises(TypeError, match="a store or fingerprints=, not both"):
        ag.plan(g, tmp_path / "s.db", fingerprints={})
    with pytest.raises(TypeError, match="needs a store"):
        ag.plan(g)
    with pytest.raises(TypeError, match="a Graph or a dict of task name -> fingerprint"):
        ag.plan(g, fingerprints=["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="for 'a'"):
        ag.plan(g, fingerprints={"a": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"fingerprints\(\) needs an asyncgraph.Graph"):
        ag.fingerprints({"a": 1})  # type: ignore[arg-type]
    assert list(ag.plan(g, tmp_path / "s.db")["action"]) == ["run"] * 3  # the store form


# -- asyncgraph status ------------------------------------------------------------------------


def test_status_lists_tasks_in_the_graph_order_and_trims_tracebacks(tmp_path, capsys):
    db = tmp_path / "s.db"
    ag.run_sync(_named(), store=db)
    capsys.readouterr()
    main(["status", str(db)])
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines[3:7]]
    assert names == ["zeta", "alpha", "broken", "aardvark"]  # topological, then definition
    main(["status", str(db), "--failed"])
    out = capsys.readouterr().out
    shown = out.split("--- broken (failed in run 1) ---")[1]
    assert "left out]" in shown
    frames = [line for line in shown.splitlines() if line.startswith("  File ")]
    assert frames[0].endswith(", in broken")  # the user's frame first
    assert "asyncgraph" not in frames[0].split(",")[0].replace(str(Path(__file__).parent), "")
    stored = ag.SQLiteStore(db).tasks()["broken"].traceback
    assert stored is not None and "_executors" in stored  # the store keeps it whole
    main(["status", str(db), "--json"])
    as_json = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in as_json["tasks"]] == ["zeta", "alpha", "broken", "aardvark"]


def test_user_frames_keeps_a_traceback_without_user_frames_whole():
    text = (
        "Traceback (most recent call last):\n"
        '  File "/x/site-packages/asyncgraph/_runner.py", line 3, in f\n'
        "    g()\n"
        "asyncgraph.MissingResultError: no\n"
    )
    assert _cli.user_frames(text) == text
    chained = (
        "Traceback (most recent call last):\n"
        '  File "/usr/lib/python3.11/asyncio/tasks.py", line 1, in step\n'
        "    x\n"
        '  File "/home/me/job.py", line 2, in work\n'
        "    y\n"
        "KeyError: 1\n"
        "\n"
        "During handling of the above exception, another exception occurred:\n"
        "\n"
        "Traceback (most recent call last):\n"
        '  File "/x/anyio/_core/_x.py", line 5, in run\n'
        "    z\n"
        '  File "/home/me/job.py", line 9, in work\n'
        "    w\n"
        "ValueError: 2\n"
    )
    out = _cli.user_frames(chained)
    assert "asyncio/tasks.py" not in out and "anyio" not in out
    assert out.count("[1 frame(s) of asyncgraph and its event loop left out]") == 2
    assert out.count('File "/home/me/job.py"') == 2 and out.endswith("ValueError: 2\n")


def test_status_of_a_store_without_an_order_keeps_the_store_order(tmp_path, capsys):
    db = tmp_path / "s.db"
    ag.run_sync(_named(), store=db)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM meta WHERE key = 'order'")
    conn.commit()
    conn.close()
    assert ag.SQLiteStore(db).task_order() == []
    capsys.readouterr()
    assert main(["status", str(db)]) == 0
    assert "zeta" in capsys.readouterr().out


# -- reads leave the directory as it was ---------------------------------------------------------


def _listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def test_reads_leave_no_wal_or_shm_behind(tmp_path, capsys):
    db = tmp_path / "s.db"
    g = _named()
    ag.run_sync(g, store=db)
    before = _listing(tmp_path)
    assert before == ["s.db"]
    ag.load(g, db)
    assert _listing(tmp_path) == before
    ag.plan(g, db)
    assert _listing(tmp_path) == before
    ag.history(db)
    assert _listing(tmp_path) == before
    loaded = ag.load(g, db)
    assert loaded.results["alpha"] == 2  # a result read from the store
    assert _listing(tmp_path) == before
    for argv in (["status", str(db)], ["status", str(db), "--failed"], ["history", str(db)]):
        main(argv)
        assert _listing(tmp_path) == before, argv
    capsys.readouterr()


def test_reads_leave_files_that_were_there_and_read_a_running_store(tmp_path):
    db = tmp_path / "s.db"
    ag.run_sync(_named(), store=db)
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)  # another tool's read
    conn.execute("SELECT count(*) FROM runs").fetchone()
    conn.close()
    before = _listing(tmp_path)
    assert before == ["s.db", "s.db-shm", "s.db-wal"]
    assert isinstance(ag.history(db), pd.DataFrame)
    assert _listing(tmp_path) == before  # there before: left as they were
    # While a writer holds the store open, a read neither disturbs nor removes its files.
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("UPDATE runs SET host = host")
    assert len(ag.history(db)) == 1
    assert os.path.exists(f"{db}-wal")
    writer.close()
