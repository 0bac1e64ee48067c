"""The status table."""

from __future__ import annotations

import pandas as pd
import pytest

import asyncgraph as ag


def test_to_frame_columns_dtypes_and_rows():
    g = ag.Graph()

    @g.task
    async def a():
        return 1

    g.add("b", lambda a: a / 0, deps=["a"], retries=1, retry_delay=0)
    g.add("c", lambda b: b, deps=["b"])
    out = ag.run_sync(g)
    frame = out.to_frame()
    assert list(frame.columns) == [
        "name", "kind", "status", "attempts", "started", "finished", "duration_s", "error"]
    assert list(frame["name"]) == ["a", "b", "c"]
    assert list(frame["status"]) == ["done", "failed", "skipped"]
    assert list(frame["attempts"]) == [1, 2, 0]
    assert frame["attempts"].dtype == "int64"
    assert isinstance(frame["started"].dtype, pd.DatetimeTZDtype)
    assert frame["duration_s"].dtype == "float64"
    assert frame.loc[1, "error"] == "ZeroDivisionError: division by zero"
    assert pd.isna(frame.loc[0, "error"])
    assert pd.isna(frame.loc[2, "started"])
    assert frame.loc[0, "duration_s"] >= 0


def test_to_frame_of_an_empty_graph():
    frame = ag.Graph().to_frame()
    assert frame.empty
    assert "status" in frame.columns


# -- summary, timeline, pictures ----------------------------------------------------------


def _finished(records: dict[str, tuple[str, float | None, float | None]]) -> ag.Graph:
    """A Graph with given (status, start, finish) per task, without running it."""
    g = ag.Graph()
    g.add("fetch users", lambda: 1, deps=[])
    g.add('say "hi"', lambda a: 1, deps=["fetch users"], kind="cpu")
    g.add("a-b#c", lambda a: 1, deps=["fetch users"])
    g.add("<end>", lambda x, y: 1, deps=['say "hi"', "a-b#c"])
    out = {}
    for name, (status, start, finish) in records.items():
        state = ag.State(status)
        error = ValueError("bad <input> & more") if state is ag.State.FAILED else None
        out[name] = ag.TaskRecord(state, None, error, None, int(start is not None), start,
                                  finish)
    return g._derive(out)


T0 = 1_700_000_000.0
SMALL = _finished({
    "fetch users": ("done", T0, T0 + 1.0),
    'say "hi"': ("done", T0 + 1.0, T0 + 4.0),
    "a-b#c": ("failed", T0 + 1.0, T0 + 2.0),
    "<end>": ("skipped", None, None),
})


def test_to_mermaid_exact_text():
    assert SMALL.to_mermaid() == """\
flowchart LR
    t0(["fetch users"]):::done
    t1["say #quot;hi#quot;"]:::done
    t2(["a-b#35;c"]):::failed
    t3(["#lt;end#gt;"]):::skipped
    t0 --> t1
    t0 --> t2
    t1 --> t3
    t2 --> t3
    classDef done fill:#c8e6c9,stroke:#2e7d32,color:#000
    classDef failed fill:#ffcdd2,stroke:#c62828,color:#000
    classDef skipped fill:#fff9c4,stroke:#f9a825,color:#000
"""


def test_to_dot_exact_text():
    assert SMALL.to_dot() == """\
digraph asyncgraph {
    rankdir=LR;
    node [style=filled, fontname="Helvetica"];
    t0 [label="fetch users", shape=ellipse, fillcolor="#c8e6c9", color="#2e7d32", tooltip="done"];
    t1 [label="say \\"hi\\"", shape=box, fillcolor="#c8e6c9", color="#2e7d32", tooltip="done"];
    t2 [label="a-b#c", shape=ellipse, fillcolor="#ffcdd2", color="#c62828", tooltip="failed"];
    t3 [label="<end>", shape=ellipse, fillcolor="#fff9c4", color="#f9a825", tooltip="skipped"];
    t0 -> t1;
    t0 -> t2;
    t1 -> t3;
    t2 -> t3;
}
"""


def test_summary_counts_and_critical_path():
    s = SMALL.summary()
    assert isinstance(s, ag.Summary)
    assert s.tasks == 4
    assert s.by_status == {"pending": 0, "running": 0, "done": 2, "failed": 1,
                           "skipped": 1, "cancelled": 0}
    assert s.by_kind == {"io": 3, "cpu": 1}
    assert list(s.counts.columns) == ["io", "cpu", "total"]
    assert s.counts.loc["done", "cpu"] == 1
    assert all(dtype == "int64" for dtype in s.counts.dtypes)
    assert s.busy_s == 5.0
    assert s.wall_s == 4.0
    assert s.critical_path == ("fetch users", 'say "hi"')
    assert s.critical_path_s == 4.0
    assert "critical path 4.000s" in str(s)
    assert "<table" in s._repr_html_()


def test_summary_of_a_graph_that_never_ran():
    s = ag.Graph().summary()
    assert s.tasks == 0 and s.wall_s is None and s.critical_path == ()


def test_timeline_columns_dtypes_and_lanes():
    frame = SMALL.timeline()
    assert list(frame.columns) == [
        "name", "kind", "status", "start", "finish", "duration_s", "lane"]
    assert list(frame["name"]) == ["fetch users", 'say "hi"', "a-b#c"]  # by start
    assert isinstance(frame["start"].dtype, pd.DatetimeTZDtype)
    assert str(frame["start"].dtype.tz) == "UTC"
    assert frame["duration_s"].dtype == "float64"
    assert frame["lane"].dtype == "int64"
    # 'fetch users' ends as the other two start: its lane is free again; the two that
    # ran at the same time are on different lanes.
    assert list(frame["lane"]) == [0, 0, 1]
    assert frame.loc[0, "start"] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert ag.Graph().timeline().empty


def test_html_repr_colours_and_escapes():
    text = SMALL._repr_html_()
    assert "say &quot;hi&quot;" in text
    assert "&lt;end&gt;" in text and "<end>" not in text
    assert "ValueError: bad &lt;input&gt; &amp; more" in text
    assert "background-color:#ffcdd2" in text  # failed
    assert repr(SMALL) == "<Graph 4 tasks: done 2, failed 1, skipped 1>"


def test_html_repr_is_capped_for_big_graphs():
    g = ag.Graph()
    for i in range(250):
        g.add(f"t{i}", lambda: None, deps=[])
    text = g._repr_html_()
    assert text.count("<tr>") == 201  # the header and 200 rows
    assert "and 50 more tasks" in text


def test_visualize_falls_back_to_mermaid_with_a_hint(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="install graphviz"):
        picture = SMALL.visualize()
    assert str(picture) == SMALL.to_mermaid()
    assert picture._repr_markdown_().startswith("```mermaid\nflowchart LR")


def test_visualize_renders_svg_when_dot_is_installed():
    import shutil

    if shutil.which("dot") is None:
        pytest.skip("graphviz's dot is not installed (the fallback is tested above)")
    picture = SMALL.visualize()
    assert picture._repr_svg_().lstrip().startswith(("<?xml", "<svg"))


def test_plot_timeline_returns_axes():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = SMALL.plot_timeline()
    assert ax.get_xlabel() == "seconds since the first start"
    assert len(ax.patches) == 3
    import matplotlib.pyplot as plt

    plt.close("all")


def test_plot_timeline_without_matplotlib_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"asyncgraph\[plot\]"):
        SMALL.plot_timeline()


def test_entities_and_backticks_in_names_are_shown_as_typed() -> None:
    g = ag.Graph()
    g.add("x&lt;y", lambda: 1)
    g.add("`md`", lambda: 2)
    mermaid = g.to_mermaid()
    assert '"x#amp;lt;y"' in mermaid and '"#96;md#96;"' in mermaid
    assert 'label="x&amp;lt;y"' in g.to_dot()
