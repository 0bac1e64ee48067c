"""Issue 16: tables and pictures that read well, and the trio check.

``to_frame().error`` has one missing value, before and after a run; ``plot_timeline``
puts whole-number lanes on its y axis; ``await ag.run(g)`` under trio says in one
sentence that asyncgraph runs on asyncio and what to do.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

import asyncgraph as ag


def _graph() -> ag.Graph:
    g = ag.Graph()
    g.add("ok", lambda: 1)

    def bad() -> None:
        raise ValueError("no")

    g.add("bad", bad)
    return g


def test_error_column_has_one_missing_value_before_and_after_a_run():
    before = _graph().to_frame()
    after = ag.run_sync(_graph()).to_frame()
    empty = ag.Graph().to_frame()
    for frame in (before, after, empty):
        assert frame["error"].dtype == before["error"].dtype
    assert before["error"].isna().all()
    for value in before["error"]:
        assert isinstance(value, float) and math.isnan(value)  # NaN, never None
    assert isinstance(after.loc[0, "error"], float) and math.isnan(after.loc[0, "error"])
    assert after.loc[1, "error"] == "ValueError: no"
    assert after["error"].notna().tolist() == [False, True]
    assert pd.api.types.is_string_dtype(before["error"]) or before["error"].dtype == object


def test_plot_timeline_has_integer_lanes_labelled():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = ag.Graph()
    for i in range(3):
        g.add(f"t{i}", lambda: None)
    done = ag.run_sync(g)
    lanes = int(done.timeline()["lane"].max()) + 1
    ax = done.plot_timeline()
    try:
        ax.figure.canvas.draw()
        ticks = list(ax.get_yticks())
        assert ticks == list(range(lanes))
        assert [t.get_text() for t in ax.get_yticklabels()] == [str(i) for i in range(lanes)]
        assert "lane" in ax.get_ylabel()
    finally:
        plt.close(ax.figure)


# -- trio ---------------------------------------------------------------------------------


def _tiny() -> ag.Graph:
    g = ag.Graph()
    g.add("a", lambda: 1)
    return g


def test_run_under_trio_says_asyncgraph_runs_on_asyncio():
    trio = pytest.importorskip("trio")

    async def main() -> None:
        await ag.run(_tiny())

    with pytest.raises(RuntimeError) as info:
        trio.run(main)
    text = str(info.value)
    assert text.startswith("run: asyncgraph runs on asyncio and this is trio;")
    assert "trio-asyncio" in text and "backend='asyncio'" in text and "\n" not in text


def test_open_run_under_trio_says_so_too():
    trio = pytest.importorskip("trio")

    async def main() -> None:
        async with ag.open_run(_tiny()):
            pass

    with pytest.raises(RuntimeError, match=r"^open_run: asyncgraph runs on asyncio"):
        trio.run(main)


def test_the_advice_works_from_trio_in_a_thread():
    trio = pytest.importorskip("trio")

    async def main() -> ag.Graph:
        return await trio.to_thread.run_sync(ag.run_sync, _tiny())

    assert trio.run(main).results["a"] == 1


def test_outside_any_loop_the_message_says_no_loop_runs():
    coro = ag.run(_tiny())
    with pytest.raises(RuntimeError, match="no asyncio event loop runs in this thread"):
        coro.send(None)
    coro.close()


def test_a_stream_under_trio_says_so_too():
    trio = pytest.importorskip("trio")
    import pandas as pd

    g = ag.Graph()

    @g.stream
    async def double(source: pd.DataFrame) -> pd.DataFrame:
        return source * 2

    async def main() -> None:
        await ag.run_stream(g, source=lambda: iter([pd.DataFrame({"x": [1]})]))

    with pytest.raises(
        RuntimeError, match="^run_stream: asyncgraph runs on asyncio and this is trio;"
    ):
        trio.run(main)


def test_an_open_stream_under_trio_says_so_too():
    trio = pytest.importorskip("trio")
    import pandas as pd

    g = ag.Graph()

    @g.stream
    async def double(source: pd.DataFrame) -> pd.DataFrame:
        return source * 2

    async def main() -> None:
        async with ag.open_stream(g, source=lambda: iter([pd.DataFrame({"x": [1]})])):
            pass

    with pytest.raises(RuntimeError, match="^open_stream: asyncgraph runs on asyncio"):
        trio.run(main)
